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
 * the plan and the codes are pure functions of the inputs, the options and the tokenizer. The
 * fingerprint that guards a resume covers the size and modification time of every input file,
 * so a resume after the inputs changed is refused instead of mixing old and new codes.
 *
 * **Interrupting** (`signal`): checked per folder and folder entry while scanning, per 32 files
 * while checking the inputs' sizes and times, per 4 MiB while verifying, per image while encoding
 * (per frame while decoding a video; a running ffmpeg is killed) and per sentence while writing
 * shards. The build then throws an AbortError saying where it stopped; what was finished is kept
 * and nothing is half-written (every file is written to a temp file and renamed; temp files of a
 * killed build are removed on the next run), so the same build resumes.
 *
 * **Memory** does not grow with the size of the finished work: verification streams codes.bin and
 * the shards in 4 MiB pieces, encoding holds one chunk of codes and two batches of pixels,
 * assembling one shard of sentences. What grows with the input is the plan, 8 bytes per image
 * slot (sentences x images per sentence), the sorted encode set, 8 bytes per distinct image, and
 * the path of every input file (shuffling and sorting hold one more copy of the plan for a
 * moment): for 10 million images used twice, 160 + 80 MB kept, 160 MB more at the peak.
 * @module
 */

import { join } from "node:path";
import { isAbortError, throwIfAborted } from "./_abort.ts";
import {
  crc32,
  crc32Range,
  CRC_READ_BYTES,
  errorWithPath,
  hex32,
  sha256Hex,
  writeFileAtomic,
} from "./_fs.ts";
import { keyItem, partRange, type Plan, slicePlan } from "./builders.ts";
import { type KindOptions, planKind } from "./kinds.ts";
import { assembleSentence, makeLayout, type SentenceLayout, tokenDtype } from "./layout.ts";
import {
  countShards,
  DatasetError,
  type DatasetIndex,
  INDEX_FILE,
  type ShardRecord,
  tokenShardFileName,
  writeIndex,
  writeShard,
} from "./shards.ts";
import {
  digestInputs,
  ItemLoader,
  type RenderOptions,
  RenderPool,
  renderVariant,
} from "./sources.ts";
import { type ImageTokenizer, tokenizerInfo } from "./tokenizer.ts";
import type { RgbImage } from "@lvm/image";

/** Progress of a build, reported after every tokenizer batch and every shard. */
export interface BuildProgress {
  phase: "encode" | "assemble" | "done";
  /** Distinct images of the part, and how many have codes (including resumed ones). */
  imagesTotal: number;
  imagesDone: number;
  /**
   * Images encoded per second in this run, over the time spent encoding (loading, rendering and
   * tokenizing; not planning or verifying); 0 before the first batch.
   */
  imagesPerSec: number;
  shardsTotal: number;
  shardsDone: number;
  /** Estimated seconds of encoding left (NaN when unknown). */
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
  /**
   * Interrupts the build in any phase (see the module doc): it throws an AbortError, keeps the
   * finished chunks and shards, and the same build resumes.
   */
  signal?: AbortSignal;
  onProgress?: (p: BuildProgress) => void;
  /** Milliseconds clock for the timings (default `performance.now`); for tests. */
  clock?: () => number;
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
  /** Seconds of this run spent encoding (the time `imagesEncoded` took). */
  encodeSeconds: number;
  /** Remarks from planning (skipped inputs). */
  notes: string[];
  /** True when the folder already held this very dataset. */
  alreadyComplete: boolean;
}

interface BuildState {
  fingerprint: string;
  /** Fingerprint of the build's options and item list (without the files' sizes and times). */
  config?: string;
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

const SHARD_FILE = /^shard-\d+\.bin$/;
/** Temp files of writeFileAtomic left by a killed build (`NAME.PID.tmp`). */
const STALE_TEMP = /^(shard-\d+\.bin|index\.json|state\.json)\.\d+\.tmp$/;

async function removeMatching(dir: string, re: RegExp): Promise<void> {
  let entries: Deno.DirEntry[] = [];
  try {
    entries = await Array.fromAsync(Deno.readDir(dir));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return;
    throw e;
  }
  for (const e of entries) {
    if (e.isFile && re.test(e.name)) await Deno.remove(join(dir, e.name)).catch(() => {});
  }
}

async function wipe(outDir: string): Promise<void> {
  await Deno.remove(join(outDir, BUILD_DIR), { recursive: true }).catch(() => {});
  await Deno.remove(join(outDir, INDEX_FILE)).catch(() => {});
  await removeMatching(outDir, SHARD_FILE);
}

/** Size and CRC-32 of a whole file, streamed; null when it is missing or not `bytes` long. */
async function fileCrc(
  path: string,
  bytes: number,
  buffer: Uint8Array,
  onChunk: () => void,
): Promise<number | null> {
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch {
    return null;
  }
  try {
    if ((await f.stat()).size !== bytes) return null;
    return await crc32Range(f, 0, bytes, { buffer, onChunk });
  } finally {
    f.close();
  }
}

/**
 * Builds (or resumes) the dataset of `opts.kind` over `opts.inputs` into `opts.outDir`.
 * See the module doc for the phases, the resume guarantee and interruption.
 */
export async function buildDataset(opts: BuildOptions): Promise<BuildResult> {
  const phase = { now: "scanning the inputs" };
  try {
    return await build(opts, phase);
  } catch (e) {
    if (!isAbortError(e) && !opts.signal?.aborted) throw e;
    const where = isAbortError(e) && e.message.startsWith("interrupted while ")
      ? e.message
      : `interrupted while ${phase.now}`;
    throw new DOMException(
      `build ${where}; finished chunks and shards are kept: run the same build again to resume`,
      "AbortError",
    );
  }
}

async function build(opts: BuildOptions, phase: { now: string }): Promise<BuildResult> {
  const clock = opts.clock ?? (() => performance.now());
  const t0 = clock();
  const signal = opts.signal;
  const check = () => throwIfAborted(signal, phase.now);
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
  check();
  const { table, plan, options, notes } = await planKind(opts.kind, opts.inputs, opts, signal);
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
  phase.now = "checking the input files";
  const digests = await digestInputs(table, { signal });
  const planFingerprint = await sha256Hex(JSON.stringify({
    v: 2,
    kind: opts.kind,
    options,
    layout,
    tokenizer: tokenizerInfo(tok),
    shardSentences,
    items: digests.items,
  }));
  const config = await sha256Hex(
    `${planFingerprint} part ${part}/${parts} chunk ${chunkImages}`,
  );
  const fingerprint = await sha256Hex(`${config} files ${digests.files}`);
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
    encodeSeconds: 0,
    notes,
    alreadyComplete: false,
  };
  const changedInputs = "the input files changed (size or modification time) since";

  // What does the folder hold already?
  if (opts.overwrite) await wipe(outDir);
  await removeMatching(outDir, STALE_TEMP);
  await removeMatching(buildDir, STALE_TEMP);
  const existing = await readJson<DatasetIndex>(join(outDir, INDEX_FILE));
  if (existing) {
    if (existing.provenance?.fingerprint === fingerprint) {
      // A build killed between writing the index and removing .build/ leaves it behind.
      await Deno.remove(buildDir, { recursive: true }).catch(() => {});
      result.index = existing;
      result.complete = result.alreadyComplete = true;
      result.seconds = (clock() - t0) / 1000;
      return result;
    }
    throw new DatasetError(
      join(outDir, INDEX_FILE),
      existing.provenance?.config === config
        ? `${changedInputs} this dataset was built (pass --overwrite to rebuild it, or choose a fresh --out)`
        : "the output folder holds a different dataset (pass --overwrite to replace it, or choose another --out)",
    );
  }
  let state = await readJson<BuildState>(statePath);
  if (state && state.fingerprint !== fingerprint) {
    throw new DatasetError(
      statePath,
      state.config === config
        ? `${changedInputs} this unfinished build started, so resuming would mix codes of old and ` +
          "new files (pass --overwrite to start it over, or choose a fresh --out)"
        : "the output folder holds an unfinished build with other inputs or options " +
          "(run that build again to resume it, pass --overwrite to start this one, or choose a " +
          "fresh --out)",
    );
  }
  await Deno.mkdir(buildDir, { recursive: true });
  state ??= { fingerprint, config, chunks: [], shards: [] };

  const uniq = uniqueSorted(mine.keys);
  const T = layout.tokensPerImage;
  const codeBytes = tok.codebookSize <= 65536 ? 2 : 4;
  const imageBytes = T * codeBytes;
  const nChunks = Math.ceil(uniq.length / chunkImages);
  const nShards = Math.ceil(mine.count / shardSentences);
  const saveState = () => writeFileAtomic(statePath, JSON.stringify(state));

  // Verify the finished chunks (a prefix) against codes.bin and the finished shards, streamed.
  phase.now = "verifying the finished work";
  const crcBuf = new Uint8Array(CRC_READ_BYTES);
  if (state.chunks.length) {
    let ok = 0;
    const codes = await Deno.open(codesPath, { read: true }).catch(() => null);
    if (codes) {
      try {
        for (let c = 0; c < state.chunks.length && c < nChunks; c++) {
          const images = Math.min(chunkImages, uniq.length - c * chunkImages);
          if (state.chunks[c].images !== images) break;
          const crc = await crc32Range(codes, c * chunkImages * imageBytes, images * imageBytes, {
            buffer: crcBuf,
            onChunk: check,
          });
          if (crc === null || hex32(crc) !== state.chunks[c].crc32) break;
          ok++;
        }
      } finally {
        codes.close();
      }
    }
    state.chunks.length = ok;
  }
  {
    let ok = 0;
    for (const rec of state.shards) {
      const crc = await fileCrc(join(outDir, rec.file), rec.bytes, crcBuf, check);
      if (crc === null || hex32(crc) !== rec.crc32) break;
      ok++;
    }
    state.shards.length = ok;
  }
  result.resumed = { chunks: state.chunks.length, shards: state.shards.length };

  let runImages = 0, pendingInChunk = 0;
  let encodeStart = NaN, encodeEnd = NaN;
  const encodeMs = () =>
    Number.isNaN(encodeStart) ? 0 : (Number.isNaN(encodeEnd) ? clock() : encodeEnd) - encodeStart;
  const progress = (p: BuildProgress["phase"]) => {
    if (!opts.onProgress) return;
    const secs = encodeMs() / 1000;
    const done = Math.min(uniq.length, state!.chunks.length * chunkImages + pendingInChunk);
    const rate = runImages > 0 && secs > 0 ? runImages / secs : 0;
    const left = uniq.length - done;
    opts.onProgress({
      phase: p,
      imagesTotal: uniq.length,
      imagesDone: done,
      imagesPerSec: rate,
      shardsTotal: nShards,
      shardsDone: state!.shards.length,
      etaSec: left === 0 ? 0 : rate > 0 ? left / rate : NaN,
    });
  };
  const stopped = () => {
    result.seconds = (clock() - t0) / 1000;
    result.encodeSeconds = encodeMs() / 1000;
    return result;
  };

  // ---- Encode.
  if (state.chunks.length < nChunks && state.shards.length < nShards) {
    phase.now = "encoding images";
    encodeStart = clock();
    const loader = new ItemLoader(table, signal);
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
        check();
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
    /** Starts loading a batch; its failure surfaces where it is awaited. */
    const start = (s: number, e: number) => {
      const p = renderRange(s, e);
      p.catch(() => {});
      return p;
    };
    const file = await Deno.open(codesPath, { read: true, write: true, create: true });
    let chunksThisRun = 0;
    try {
      for (let c = state.chunks.length; c < nChunks; c++) {
        const a = c * chunkImages, b = Math.min(uniq.length, a + chunkImages);
        const buf = codeBytes === 2 ? new Uint16Array((b - a) * T) : new Int32Array((b - a) * T);
        const renderBatch = (s: number) => start(s, Math.min(b, s + batchImages));
        pendingInChunk = 0;
        let next: Promise<RgbImage[]> | null = renderBatch(a);
        for (let s = a; s < b; s += batchImages) {
          const imgs = await next!;
          check();
          next = s + batchImages < b ? renderBatch(s + batchImages) : null;
          const codes = await tok.encode(imgs);
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
        check(); // the chunk is discarded, not recorded: a resume encodes it again
        const bytes = new Uint8Array(buf.buffer);
        try {
          await file.seek(a * imageBytes, Deno.SeekMode.Start);
          let off = 0;
          while (off < bytes.length) off += await file.write(bytes.subarray(off));
          await file.syncData();
        } catch (e) {
          throw errorWithPath(codesPath, e, "cannot write the code cache");
        }
        state.chunks.push({ images: b - a, crc32: hex32(crc32(bytes)) });
        pendingInChunk = 0;
        await saveState();
        progress("encode");
        if (opts.stopAfter?.chunks !== undefined && ++chunksThisRun >= opts.stopAfter.chunks) {
          return stopped();
        }
      }
    } finally {
      encodeEnd = clock();
      file.close();
      pool?.close();
      await loader.close();
    }
  }

  // ---- Assemble.
  if (state.shards.length < nShards) {
    phase.now = "writing shards";
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
          check();
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
        check(); // nothing of this shard is on disk yet
        const rec = await writeShard(
          join(outDir, tokenShardFileName(k)),
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

  phase.now = "writing the index";
  check();
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
      config,
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
