/**
 * Combining datasets: one index over the shards of several datasets (the parts of a `--part I/N`
 * build, or different kinds for a mixture), pointing at their files: no token is copied.
 * @module
 */

import { isAbsolute, relative, resolve } from "node:path";
import {
  countShards,
  DatasetError,
  type DatasetIndex,
  INDEX_FILE,
  openDataset,
  prepareOutDir,
  type SourceInfo,
  type TokenDataset,
  writeIndex,
} from "./shards.ts";

/** Options of {@link combineDatasets}. */
export interface CombineOptions {
  /** Replace a dataset already in the output folder. */
  overwrite?: boolean;
  /**
   * Check every input shard's size, CRC-32 and ids before writing the index (default true), so a
   * corrupt input is refused here, not found by training later.
   */
  verify?: boolean;
  /** Stops the verification between pieces (an AbortError). */
  signal?: AbortSignal;
}

/**
 * Writes `outDir/index.json` listing every shard of `dirs`: the folders the shards live in are
 * listed in the index's `datasets` (relative to `outDir`), each record names its folder by
 * position. Every input is verified first (see {@link CombineOptions.verify}). The
 * datasets must share the tokenizer, the dtype and the layout (images per sentence may differ:
 * the result is then variable). Parts of one build are ordered by part number and must all be
 * present, so combining parts 1..N gives the sentences of the unsplit build in the same order.
 */
export async function combineDatasets(
  dirs: string[],
  outDir: string,
  opts: CombineOptions = {},
): Promise<DatasetIndex> {
  if (!dirs.length) throw new RangeError("combineDatasets: no datasets given");
  const seen = new Set<string>();
  for (const d of dirs) {
    const r = resolve(d);
    if (seen.has(r)) throw new DatasetError(d, "given twice");
    if (r === resolve(outDir)) {
      throw new DatasetError(d, "the output folder cannot also be an input");
    }
    seen.add(r);
  }
  const sets: TokenDataset[] = [];
  for (const d of dirs) sets.push(await openDataset(d));
  const first = sets[0].index;
  const strip = (ix: DatasetIndex) => JSON.stringify({ ...ix.layout, imagesPerSentence: 0 });
  for (const ds of sets) {
    const ix = ds.index, at = `${ds.dir}/${INDEX_FILE}`;
    if (ix.tokenizer.id !== first.tokenizer.id) {
      throw new DatasetError(
        at,
        `tokenizer "${ix.tokenizer.id}" differs from "${first.tokenizer.id}" of ${sets[0].dir}`,
      );
    }
    if (ix.dtype !== first.dtype) {
      throw new DatasetError(at, `dtype ${ix.dtype} differs from ${first.dtype}`);
    }
    if (strip(ix) !== strip(first)) {
      throw new DatasetError(
        at,
        `layout ${JSON.stringify(ix.layout)} differs from ${JSON.stringify(first.layout)}`,
      );
    }
  }
  // Parts of one build: order by part number, require all.
  const groups = new Map<string, TokenDataset[]>();
  const order: (TokenDataset | string)[] = [];
  for (const ds of sets) {
    const p = ds.index.provenance;
    const part = p?.part as [number, number] | undefined;
    if (part && part[1] > 1 && typeof p.planFingerprint === "string") {
      const key = p.planFingerprint as string;
      if (!groups.has(key)) {
        groups.set(key, []);
        order.push(key);
      }
      groups.get(key)!.push(ds);
    } else order.push(ds);
  }
  const ordered: TokenDataset[] = [];
  for (const o of order) {
    if (typeof o !== "string") {
      ordered.push(o);
      continue;
    }
    const g = groups.get(o)!;
    const n = (g[0].index.provenance.part as [number, number])[1];
    const byPart = new Map<number, TokenDataset>();
    for (const ds of g) {
      const [i, m] = ds.index.provenance.part as [number, number];
      if (m !== n) {
        throw new DatasetError(ds.dir, `is part ${i}/${m}, the others are parts of ${n}`);
      }
      if (byPart.has(i)) {
        throw new DatasetError(ds.dir, `part ${i}/${n} is also given as ${byPart.get(i)!.dir}`);
      }
      byPart.set(i, ds);
    }
    for (let i = 1; i <= n; i++) {
      if (!byPart.has(i)) {
        throw new DatasetError(
          g[0].dir,
          `part ${i}/${n} of the same build is missing (give all ${n} parts)`,
        );
      }
      ordered.push(byPart.get(i)!);
    }
  }
  if (opts.verify ?? true) {
    for (const ds of ordered) await ds.verify({ signal: opts.signal });
  }
  await prepareOutDir(outDir, opts.overwrite);
  const sizes = new Set(ordered.map((d) => d.layout.imagesPerSentence));
  const layout = {
    ...first.layout,
    imagesPerSentence: sizes.size === 1 ? first.layout.imagesPerSentence : 0,
  };
  // The folders holding the shards, relative to outDir (absolute when on another drive).
  const datasets: string[] = [];
  const folderOf = (abs: string) => {
    let rel = relative(resolve(outDir), abs).split("\\").join("/");
    if (isAbsolute(rel)) rel = abs;
    if (rel === "") rel = ".";
    let k = datasets.indexOf(rel);
    if (k < 0) k = datasets.push(rel) - 1;
    return k;
  };
  const shards = ordered.flatMap((ds) =>
    ds.index.shards.map((r, i) => ({ ...r, dataset: folderOf(resolve(ds.shardDir(i))) }))
  );
  const sources: SourceInfo[] = [];
  const srcSeen = new Set<string>();
  for (const ds of ordered) {
    for (const s of ds.index.sources) {
      const k = JSON.stringify(s);
      if (!srcSeen.has(k)) sources.push(s);
      srcSeen.add(k);
    }
  }
  const index: DatasetIndex = {
    format: "lvm-token-shards",
    version: 1,
    layout,
    dtype: first.dtype,
    tokenizer: first.tokenizer,
    provenance: {
      combined: ordered.map((ds) => ({
        dir: relative(resolve(outDir), resolve(ds.dir)).split("\\").join("/") || ".",
        provenance: ds.index.provenance,
      })),
    },
    sources,
    counts: countShards(layout, shards),
    datasets,
    shards,
  };
  await writeIndex(outDir, index);
  return index;
}
