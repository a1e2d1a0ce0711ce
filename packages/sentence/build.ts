/**
 * Building a token-shard dataset from images: plan -> encode -> assemble.
 *
 * 1. **Plan** (kinds.ts): the sentences of the whole input, as image keys, shuffled; `--part I/N`
 *    takes the I-th contiguous slice, so the parts concatenated in order are the whole build.
 * 2. **Encode**: every distinct image key of the part (an image used by several sentences or
 *    epochs is tokenized once, as the official scripts do), in sorted key order (a video is read
 *    forward once), in chunks of `chunkImages`, `batchImages` at a time through the tokenizer
 *    (the next batch's pixels load while the tokenizer runs). Codes go to `OUT/.build/codes.bin`.
 * 3. **Assemble**: shards of `shardSentences` sentences from the cached codes, each written
 *    atomically; then `index.json`, and `.build/` is removed.
 *
 * After every chunk and every shard, `.build/state.json` records what is finished (with
 * checksums). A build stopped at any point and run again with the same arguments verifies the
 * finished work, redoes nothing of it, and ends with the same bytes as an uninterrupted build:
 * the plan and the codes are pure functions of the inputs, the options and the tokenizer.
 * @module
 */

import { join } from "node:path";
import { crc32, hex32, sha256Hex, writeFileAtomic } from "./_fs.ts";
import { keyItem, partRange, type Plan, slicePlan } from "./builders.ts";
import { type KindOptions, planKind } from "./kinds.ts";
import { assembleSentence, makeLayout, type SentenceLayout, tokenDtype } from "./layout.ts";
import {
  countShards,
  DatasetError,
  type DatasetIndex,
  INDEX_FILE,
  shardFileName,
  type ShardRecord,
  writeIndex,
  writeShard,
} from "./shards.ts";
import { ItemLoader, type RenderOptions, RenderPool, renderVariant } from "./sources.ts";
import { type ImageTokenizer, tokenizerInfo } from "./tokenizer.ts";
import type { RgbImage } from "@lvm/image";

/** Progress of a build, reported after every tokenizer batch and every shard. */
export interface BuildProgress {
  phase: "encode" | "assemble" | "done";
  /** Distinct images of the part, and how many have codes (including resumed ones). */
  imagesTotal: number;
  imagesDone: number;
  /** Images encoded per second in this run (0 before the first batch). */
  imagesPerSec: number;
  shardsTotal: number;
  shardsDone: number;
  /** Estimated seconds left (NaN when unknown). */
  etaSec: number;
}

/** Options of {@link buildDataset}. */
export interface BuildOptions extends KindOptions {
  /** Sentence kind (see KINDS in kinds.ts). */
  kind: string;
  /** Input paths (folders, videos, GIFs, images; meaning per kind). */
  inputs: string[];
  /** Output dataset folder. */
  outDir: string;
  tokenizer: ImageTokenizer;
  /** Optional special tokens and vocabulary size (default: none, codebook + 100). */
  layout?: Partial<Pick<SentenceLayout, "separatorId" | "beginId" | "endId" | "vocabSize">>;
  /** [I, N]: build the I-th (1-based) of N disjoint parts (default [1, 1]). */
  part?: [number, number];
  /** Sentences per shard (default 4096: 32 MiB of u16 at 4096 tokens). */
  shardSentences?: number;
  /** Images per resumable encode chunk (default 1024). */
  chunkImages?: number;
  /** Images per tokenizer call (default 64). */
  batchImages?: number;
  /**
   * Threads decoding image files (default: CPU cores - 1, at most 8; 0 = decode on this thread).
   * Does not change the result.
   */
  workers?: number;
  /** Replace whatever `outDir` holds instead of resuming or refusing. */
  overwrite?: boolean;
  /** Stop (as if interrupted) after this many chunks / shards of this run; for tests. */
  stopAfter?: { chunks?: number; shards?: number };
  /** Aborts between tokenizer batches (finished chunks and shards are kept). */
  signal?: AbortSignal;
  onProgress?: (p: BuildProgress) => void;
}

/** What {@link buildDataset} did. */
export interface BuildResult {
  /** The index (null when the build stopped before the end). */
  index: DatasetIndex | null;
  complete: boolean;
  /** Finished work found on disk and kept. */
  resumed: { chunks: number; shards: number };
  /** Images tokenized by this run, and its wall time. */
  imagesEncoded: number;
  seconds: number;
  /** Remarks from planning (skipped inputs). */
  notes: string[];
  /** True when the folder already held this very dataset. */
  alreadyComplete: boolean;
}

interface BuildState {
  fingerprint: string;
  chunks: { images: number; crc32: string }[];
  shards: ShardRecord[];
}

const BUILD_DIR = ".build";

/** Sorted distinct values of a Float64Array. */
function uniqueSorted(keys: Float64Array): Float64Array {
  const s = Float64Array.from(keys).sort();
  let n = 0;
  for (let i = 0; i < s.length; i++) if (i === 0 || s[i] !== s[n - 1]) s[n++] = s[i];
  return s.slice(0, n);
}

function bsearch(a: Float64Array, x: number): number {
  let lo = 0, hi = a.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid] < x) lo = mid + 1;
    else if (a[mid] > x) hi = mid - 1;
    else return mid;
  }
  throw new Error(`internal: image key ${x} not in the encode set`);
}

async function readJson<T>(path: string): Promise<T | null> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    if (e instanceof SyntaxError) {
      throw new DatasetError(path, `corrupt (${e.message}); pass --overwrite to start over`);
    }
    throw e;
  }
}

async function wipe(outDir: string): Promise<void> {
  await Deno.remove(join(outDir, BUILD_DIR), { recursive: true }).catch(() => {});
  await Deno.remove(join(outDir, INDEX_FILE)).catch(() => {});
  for await (const e of Deno.readDir(outDir)) {
    if (e.isFile && /^shard-\d+\.bin$/.test(e.name)) await Deno.remove(join(outDir, e.name));
  }
}

/**
 * Builds (or resumes) the dataset of `opts.kind` over `opts.inputs` into `opts.outDir`.
 * See the module doc for the phases and the resume guarantee.
 */
export async function buildDataset(opts: BuildOptions): Promise<BuildResult> {
  const t0 = performance.now();
  const tok = opts.tokenizer;
  const [part, parts] = opts.part ?? [1, 1];
  const shardSentences = opts.shardSentences ?? 4096;
  const chunkImages = opts.chunkImages ?? 1024;
  const batchImages = opts.batchImages ?? 64;
  const workers = opts.workers ??
    Math.max(0, Math.min(8, (navigator.hardwareConcurrency ?? 1) - 1));
  if (!Number.isInteger(workers) || workers < 0) {
    throw new RangeError(`buildDataset: workers must be a non-negative integer, found ${workers}`);
  }
  for (
    const [name, v] of [["shardSentences", shardSentences], ["chunkImages", chunkImages], [
      "batchImages",
      batchImages,
    ]] as const
  ) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`buildDataset: ${name} must be a positive integer, found ${v}`);
    }
  }
  const { table, plan, options, notes } = await planKind(opts.kind, opts.inputs, opts);
  const [from, to] = partRange(plan.count, part, parts);
  const mine: Plan = slicePlan(plan, from, to);
  const layout = makeLayout({
    tokensPerImage: tok.tokensPerImage,
    codebookSize: tok.codebookSize,
    imagesPerSentence: plan.imagesPerSentence,
    ...opts.layout,
  });
  const dtype = tokenDtype(layout);
  const render: RenderOptions = {
    resolution: tok.resolution,
    seed: options.seed,
    mask: (options.mask as RenderOptions["mask"]) ?? "random",
  };
  const planFingerprint = await sha256Hex(JSON.stringify({
    v: 1,
    kind: opts.kind,
    options,
    layout,
    tokenizer: tokenizerInfo(tok),
    shardSentences,
    items: table.identity(),
  }));
  const fingerprint = await sha256Hex(
    `${planFingerprint} part ${part}/${parts} chunk ${chunkImages}`,
  );
  const outDir = opts.outDir;
  const buildDir = join(outDir, BUILD_DIR);
  const statePath = join(buildDir, "state.json");
  const codesPath = join(buildDir, "codes.bin");
  await Deno.mkdir(outDir, { recursive: true });

  const result: BuildResult = {
    index: null,
    complete: false,
    resumed: { chunks: 0, shards: 0 },
    imagesEncoded: 0,
    seconds: 0,
    notes,
    alreadyComplete: false,
  };

  // What does the folder hold already?
  if (opts.overwrite) await wipe(outDir);
  const existing = await readJson<DatasetIndex>(join(outDir, INDEX_FILE));
  if (existing) {
    if (existing.provenance?.fingerprint === fingerprint) {
      result.index = existing;
      result.complete = result.alreadyComplete = true;
      result.seconds = (performance.now() - t0) / 1000;
      return result;
    }
    throw new DatasetError(
      join(outDir, INDEX_FILE),
      "the output folder holds a different dataset (pass --overwrite to replace it, or choose another --out)",
    );
  }
  let state = await readJson<BuildState>(statePath);
  if (state && state.fingerprint !== fingerprint) {
    throw new DatasetError(
      statePath,
      "the output folder holds an unfinished build with other inputs or options " +
        "(run that build again to resume it, or pass --overwrite to start this one)",
    );
  }
  await Deno.mkdir(buildDir, { recursive: true });
  state ??= { fingerprint, chunks: [], shards: [] };

  const uniq = uniqueSorted(mine.keys);
  const T = layout.tokensPerImage;
  const codeBytes = tok.codebookSize <= 65536 ? 2 : 4;
  const imageBytes = T * codeBytes;
  const nChunks = Math.ceil(uniq.length / chunkImages);
  const nShards = Math.ceil(mine.count / shardSentences);
  const saveState = () => writeFileAtomic(statePath, JSON.stringify(state));

  // Verify the finished chunks (prefix) against codes.bin.
  if (state.chunks.length) {
    const codes = await Deno.readFile(codesPath).catch(() => new Uint8Array(0));
    let ok = 0;
    for (let c = 0; c < state.chunks.length && c < nChunks; c++) {
      const a = c * chunkImages * imageBytes, b = a + state.chunks[c].images * imageBytes;
      if (b > codes.length || hex32(crc32(codes.subarray(a, b))) !== state.chunks[c].crc32) break;
      ok++;
    }
    state.chunks.length = ok;
  }
  // Verify the finished shards (prefix).
  {
    let ok = 0;
    for (const rec of state.shards) {
      const bytes = await Deno.readFile(join(outDir, rec.file)).catch(() => null);
      if (!bytes || bytes.length !== rec.bytes || hex32(crc32(bytes)) !== rec.crc32) break;
      ok++;
    }
    state.shards.length = ok;
  }
  result.resumed = { chunks: state.chunks.length, shards: state.shards.length };

  let runImages = 0;
  const progress = (phase: BuildProgress["phase"]) => {
    if (!opts.onProgress) return;
    const secs = (performance.now() - t0) / 1000;
    const done = Math.min(uniq.length, state!.chunks.length * chunkImages + pendingInChunk);
    const rate = runImages > 0 ? runImages / secs : 0;
    const left = uniq.length - done;
    opts.onProgress({
      phase,
      imagesTotal: uniq.length,
      imagesDone: done,
      imagesPerSec: rate,
      shardsTotal: nShards,
      shardsDone: state!.shards.length,
      etaSec: left === 0 ? 0 : rate > 0 ? left / rate : NaN,
    });
  };
  let pendingInChunk = 0;
  const stopped = () => {
    result.seconds = (performance.now() - t0) / 1000;
    return result;
  };

  // ---- Encode.
  if (state.chunks.length < nChunks && state.shards.length < nShards) {
    const loader = new ItemLoader(table);
    const pool = workers > 0 ? new RenderPool(workers) : null;
    let lastItem = -1, lastImg: RgbImage | null = null;
    /** One image on this thread (video and GIF frames in order; an item's variants share a load). */
    const renderHere = async (key: number) => {
      const item = keyItem(key);
      if (item !== lastItem) {
        lastImg = await loader.load(item);
        lastItem = item;
      }
      return renderVariant(lastImg!, key, render);
    };
    /** Images [s, e) of the encode set; image files go to the worker pool, in parallel. */
    const renderRange = async (s: number, e: number) => {
      const out: Promise<RgbImage>[] = [];
      for (let i = s; i < e; i++) {
        const key = uniq[i];
        const [si, li] = table.locate(keyItem(key));
        const src = table.sources[si];
        if (pool && (src.type === "folder" || src.type === "file")) {
          const p = pool.render(src.files[li], key, render);
          p.catch(() => {}); // handled by Promise.all below; avoids an unhandled rejection meanwhile
          out.push(p);
        } else out.push(Promise.resolve(await renderHere(key)));
      }
      return await Promise.all(out);
    };
    const file = await Deno.open(codesPath, { read: true, write: true, create: true });
    let chunksThisRun = 0;
    try {
      for (let c = state.chunks.length; c < nChunks; c++) {
        const a = c * chunkImages, b = Math.min(uniq.length, a + chunkImages);
        const buf = codeBytes === 2 ? new Uint16Array((b - a) * T) : new Int32Array((b - a) * T);
        const renderBatch = (s: number) => renderRange(s, Math.min(b, s + batchImages));
        pendingInChunk = 0;
        let next: Promise<RgbImage[]> | null = renderBatch(a);
        for (let s = a; s < b; s += batchImages) {
          const imgs = await next!;
          next = s + batchImages < b ? renderBatch(s + batchImages) : null;
          if (opts.signal?.aborted) {
            next?.catch(() => {});
            throw opts.signal.reason ?? new DOMException("build aborted", "AbortError");
          }
          let codes: Int32Array[];
          try {
            codes = await tok.encode(imgs);
          } catch (e) {
            next?.catch(() => {});
            throw e;
          }
          if (codes.length !== imgs.length) {
            throw new Error(
              `tokenizer ${tok.id}: returned ${codes.length} code blocks for ${imgs.length} images`,
            );
          }
          codes.forEach((cb, k) => {
            if (cb.length !== T) {
              throw new Error(
                `tokenizer ${tok.id}: ${cb.length} codes for an image, expected ${T}`,
              );
            }
            for (let j = 0; j < T; j++) {
              if (!(cb[j] >= 0 && cb[j] < tok.codebookSize)) {
                throw new Error(
                  `tokenizer ${tok.id}: code ${cb[j]} outside [0, ${tok.codebookSize})`,
                );
              }
            }
            buf.set(cb, (s - a + k) * T);
          });
          runImages += imgs.length;
          pendingInChunk += imgs.length;
          result.imagesEncoded += imgs.length;
          progress("encode");
        }
        const bytes = new Uint8Array(buf.buffer);
        await file.seek(a * imageBytes, Deno.SeekMode.Start);
        let off = 0;
        while (off < bytes.length) off += await file.write(bytes.subarray(off));
        await file.syncData();
        state.chunks.push({ images: b - a, crc32: hex32(crc32(bytes)) });
        pendingInChunk = 0;
        await saveState();
        progress("encode");
        if (opts.stopAfter?.chunks !== undefined && ++chunksThisRun >= opts.stopAfter.chunks) {
          return stopped();
        }
      }
    } finally {
      file.close();
      pool?.close();
      await loader.close();
    }
  }

  // ---- Assemble.
  if (state.shards.length < nShards) {
    const file = await Deno.open(codesPath, { read: true });
    const n = mine.imagesPerSentence;
    const block = codeBytes === 2 ? new Uint16Array(T) : new Int32Array(T);
    const blockBytes = new Uint8Array(block.buffer);
    let shardsThisRun = 0;
    try {
      for (let k = state.shards.length; k < nShards; k++) {
        const s0 = k * shardSentences, s1 = Math.min(mine.count, s0 + shardSentences);
        const sentences: Int32Array[] = [];
        for (let s = s0; s < s1; s++) {
          const blocks: Int32Array[] = [];
          for (let i = 0; i < n; i++) {
            const row = bsearch(uniq, mine.keys[s * n + i]);
            file.seekSync(row * imageBytes, Deno.SeekMode.Start);
            let off = 0;
            while (off < imageBytes) {
              const r = file.readSync(blockBytes.subarray(off));
              if (r === null) {
                throw new DatasetError(
                  codesPath,
                  "truncated code cache; pass --overwrite to start over",
                );
              }
              off += r;
            }
            blocks.push(Int32Array.from(block));
          }
          sentences.push(assembleSentence(layout, blocks));
        }
        const rec = await writeShard(
          join(outDir, shardFileName(k)),
          sentences,
          dtype,
          layout.vocabSize,
        );
        state.shards.push(rec);
        await saveState();
        progress("assemble");
        if (
          opts.stopAfter?.shards !== undefined && ++shardsThisRun >= opts.stopAfter.shards &&
          k + 1 < nShards
        ) {
          return stopped();
        }
      }
    } finally {
      file.close();
    }
  }

  const index: DatasetIndex = {
    format: "lvm-token-shards",
    version: 1,
    layout,
    dtype,
    tokenizer: tokenizerInfo(tok),
    provenance: {
      builder: "lvm train dataset",
      kind: opts.kind,
      options,
      part: [part, parts],
      sentenceRange: [from, to],
      planSentences: plan.count,
      shardSentences,
      fingerprint,
      planFingerprint,
    },
    sources: table.info(),
    counts: countShards(layout, state.shards),
    shards: state.shards,
  };
  await writeIndex(outDir, index);
  await Deno.remove(buildDir, { recursive: true });
  result.index = index;
  result.complete = true;
  progress("done");
  return stopped();
}
