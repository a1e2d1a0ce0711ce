/**
 * Token shards: a dataset is a folder holding binary token files and one JSON index.
 *
 * ```
 * DIR/index.json          the index (format "lvm-token-shards", version 1)
 * DIR/shard-00000.bin     tokens of whole sentences, end to end, little-endian u16 (every id
 *                         < 65536) or i32; no header, so a shard is also a plain numpy array
 * ```
 * The index holds the layout, the token dtype, the tokenizer's identity, the sources, the counts
 * and, per shard, its file, sentences, tokens, bytes, CRC-32 and the sentence boundaries:
 * `sentenceTokens` when every sentence has the same length, else `offsets` (sentences + 1 token
 * offsets).
 *
 * Shard files are confined: a record's `file` is a relative path inside the dataset folder (no
 * `..`, not absolute). A combined dataset (`--combine`) reads the shards of other datasets without
 * copying them: their folders are listed explicitly in the index's `datasets` (relative to the
 * index's folder, or absolute), and each record names the folder it lives in by `dataset` (its
 * position in that list), its `file` confined to that folder.
 *
 * Reads are validated: the index's fields, every shard's size and that it is a regular file (on
 * open), its CRC-32 and its ids (< vocabSize) when read; {@link TokenDataset.verify} checks every
 * shard up front in bounded memory. A shard is read whole (tens of MB), one at a time: datasets
 * far larger than memory stream shard by shard.
 * @module
 */

import { isAbsolute, join, relative, resolve } from "node:path";
import { pathKind } from "@lvm/util/fs";
import { crc32, hex32, writeFileAtomic } from "./_fs.ts";
import { type SentenceLayout, validateLayout } from "./layout.ts";

/** On-disk token type. */
export type TokenDtype = "u16" | "i32";

/** Bytes per token of a dtype. */
export function dtypeBytes(dtype: TokenDtype): number {
  return dtype === "u16" ? 2 : 4;
}

/** Index entry of one shard file. */
export interface ShardRecord {
  /** Path relative to its dataset folder (the index's, or `datasets[dataset]`), inside it. */
  file: string;
  /** Combined datasets: the folder holding the file, as a position in the index's `datasets`. */
  dataset?: number;
  sentences: number;
  tokens: number;
  bytes: number;
  /** CRC-32 (IEEE) of the file, 8 hex digits. */
  crc32: string;
  /** Tokens of every sentence when all have the same length. */
  sentenceTokens?: number;
  /** Token offsets of the sentences (sentences + 1 entries) when lengths differ. */
  offsets?: number[];
}

/** Identity of the tokenizer whose codes a dataset holds. */
export interface TokenizerInfo {
  /** e.g. a hash of the tokenizer's config and weights; "unknown" for imported data. */
  id: string;
  resolution: number;
  tokensPerImage: number;
  codebookSize: number;
}

/** One input of a build (a folder, a video, a GIF, a JSONL file, a part). */
export interface SourceInfo {
  path: string;
  type: string;
  /** Images (or frames, or lines) it holds. */
  items: number;
}

/** Dataset totals. */
export interface DatasetCounts {
  sentences: number;
  tokens: number;
  /** Images over all sentences (an image used twice counts twice). */
  images: number;
  shards: number;
}

/** The JSON index of a token-shard dataset. */
export interface DatasetIndex {
  format: "lvm-token-shards";
  version: 1;
  layout: SentenceLayout;
  dtype: TokenDtype;
  tokenizer: TokenizerInfo;
  /** How the dataset was made: build options, the imported file, the combined parts. */
  provenance: Record<string, unknown>;
  sources: SourceInfo[];
  counts: DatasetCounts;
  /**
   * Combined datasets: the other dataset folders whose shards this index lists (relative to this
   * folder, or absolute); a shard record's `dataset` is a position in this list.
   */
  datasets?: string[];
  shards: ShardRecord[];
}

/** Why `file` is not a path confined to a dataset folder, or null when it is. */
export function unconfinedReason(file: string): string | null {
  if (typeof file !== "string" || !file) return "is empty";
  if (isAbsolute(file) || /^[\\/]|^[A-Za-z]:/.test(file)) return "is an absolute path";
  const parts = file.split(/[\\/]/);
  if (parts.includes("..")) return 'climbs out of the folder ("..")';
  if (parts.some((p) => p === "")) return "has an empty path segment";
  return null;
}

/** File name of the index inside a dataset folder. */
export const INDEX_FILE = "index.json";

/** A dataset that cannot be read: names the file and says what was wrong. */
export class DatasetError extends Error {
  /** The offending file. */
  readonly file: string;
  constructor(file: string, message: string) {
    super(`${file}: ${message}`);
    this.name = "DatasetError";
    this.file = file;
  }
}

/** Name of the i-th shard file. */
export function tokenShardFileName(i: number): string {
  return `shard-${String(i).padStart(5, "0")}.bin`;
}

/** Images in a sentence of `length` tokens under `layout` (0 if it is not a whole number). */
export function imagesIn(layout: SentenceLayout, length: number): number {
  const b = layout.beginId !== null ? 1 : 0, e = layout.endId !== null ? 1 : 0;
  const s = layout.separatorId !== null ? 1 : 0;
  const n = (length - b - e + s) / (layout.tokensPerImage + s);
  return Number.isInteger(n) && n > 0 ? n : 0;
}

/**
 * Writes sentences as one shard file (atomically) and returns its index record. Ids are checked
 * against `vocabSize` (and against the dtype's range).
 */
export async function writeShard(
  path: string,
  sentences: ArrayLike<number>[],
  dtype: TokenDtype,
  vocabSize: number,
): Promise<ShardRecord> {
  let tokens = 0;
  for (const s of sentences) tokens += s.length;
  const arr = dtype === "u16" ? new Uint16Array(tokens) : new Int32Array(tokens);
  const max = dtype === "u16" ? Math.min(vocabSize, 65536) : vocabSize;
  const offsets = [0];
  let o = 0;
  sentences.forEach((s, k) => {
    for (let i = 0; i < s.length; i++) {
      const v = s[i];
      if (!(Number.isInteger(v) && v >= 0 && v < max)) {
        throw new RangeError(
          `${path}: sentence ${k} token ${i} is ${v}, expected an id in [0, ${max})`,
        );
      }
      arr[o++] = v;
    }
    offsets.push(o);
  });
  const bytes = new Uint8Array(arr.buffer);
  await writeFileAtomic(path, bytes);
  const rec: ShardRecord = {
    file: path.split(/[\\/]/).pop()!,
    sentences: sentences.length,
    tokens,
    bytes: bytes.length,
    crc32: hex32(crc32(bytes)),
  };
  const len0 = sentences.length ? sentences[0].length : 0;
  if (sentences.every((s) => s.length === len0)) rec.sentenceTokens = len0;
  else rec.offsets = offsets;
  return rec;
}

/** Serializes an index: top-level fields pretty, one shard record per line. */
export function formatIndex(index: DatasetIndex): string {
  const lines: string[] = [];
  const entries = Object.entries(index);
  entries.forEach(([k, v], i) => {
    const comma = i < entries.length - 1 ? "," : "";
    if (k === "shards") {
      const recs = (v as ShardRecord[]).map((r, j) =>
        `    ${JSON.stringify(r)}${j < (v as ShardRecord[]).length - 1 ? "," : ""}`
      );
      lines.push(
        recs.length ? `  "shards": [\n${recs.join("\n")}\n  ]${comma}` : `  "shards": []${comma}`,
      );
    } else {
      lines.push(`  ${JSON.stringify(k)}: ${JSON.stringify(v)}${comma}`);
    }
  });
  return `{\n${lines.join("\n")}\n}\n`;
}

/** Writes `DIR/index.json` atomically. */
export async function writeIndex(dir: string, index: DatasetIndex): Promise<void> {
  await writeFileAtomic(join(dir, INDEX_FILE), formatIndex(index));
}

/** Counts over shard records. */
export function countShards(layout: SentenceLayout, shards: ShardRecord[]): DatasetCounts {
  const c: DatasetCounts = { sentences: 0, tokens: 0, images: 0, shards: shards.length };
  for (const r of shards) {
    c.sentences += r.sentences;
    c.tokens += r.tokens;
    if (r.sentenceTokens !== undefined) {
      c.images += r.sentences * imagesIn(layout, r.sentenceTokens);
    } else if (r.offsets) {
      for (let i = 0; i < r.sentences; i++) {
        c.images += imagesIn(layout, r.offsets[i + 1] - r.offsets[i]);
      }
    }
  }
  return c;
}

/** Checks an index's structure; throws DatasetError naming `file` and the field. */
export function validateIndex(raw: unknown, file: string): DatasetIndex {
  const bad = (what: string): never => {
    throw new DatasetError(file, `not a valid dataset index: ${what}`);
  };
  if (typeof raw !== "object" || raw === null) bad("expected a JSON object");
  const ix = raw as DatasetIndex;
  if (ix.format !== "lvm-token-shards") {
    bad(`format is ${JSON.stringify(ix.format)}, expected "lvm-token-shards"`);
  }
  if (ix.version !== 1) bad(`version is ${ix.version}, expected 1`);
  if (ix.dtype !== "u16" && ix.dtype !== "i32") {
    bad(`dtype is ${JSON.stringify(ix.dtype)}, expected "u16" or "i32"`);
  }
  try {
    validateLayout(ix.layout, "layout");
  } catch (e) {
    bad((e as Error).message);
  }
  if (ix.dtype === "u16" && ix.layout.vocabSize > 65536) {
    bad("dtype u16 cannot hold vocabSize > 65536");
  }
  if (
    typeof ix.tokenizer !== "object" || ix.tokenizer === null || typeof ix.tokenizer.id !== "string"
  ) {
    bad("tokenizer.id missing");
  }
  if (!Array.isArray(ix.shards)) bad("shards is not an array");
  if (ix.datasets !== undefined) {
    if (!Array.isArray(ix.datasets)) bad("datasets is not an array of folders");
    ix.datasets!.forEach((d, i) => {
      if (typeof d !== "string" || !d) bad(`datasets[${i}] is not a folder path`);
    });
  }
  const isCount = (v: unknown) => typeof v === "number" && Number.isInteger(v) && v >= 0;
  const tb = dtypeBytes(ix.dtype);
  ix.shards.forEach((r, i) => {
    const at = `shards[${i}]`;
    if (typeof r?.file !== "string" || !r.file) bad(`${at}.file missing`);
    const why = unconfinedReason(r.file);
    if (why) {
      bad(
        `${at}.file ${JSON.stringify(r.file)} ${why}: shard files must lie inside their dataset ` +
          `folder (another dataset's shards are referenced through "datasets"; an index combined ` +
          `by an older version: run \`train dataset --combine\` again)`,
      );
    }
    if (r.dataset !== undefined) {
      if (
        !Number.isInteger(r.dataset) || !(r.dataset >= 0 && r.dataset < (ix.datasets?.length ?? 0))
      ) {
        bad(`${at}.dataset is ${r.dataset}, expected a position in "datasets"`);
      }
    }
    for (const k of ["sentences", "tokens", "bytes"] as const) {
      if (!isCount(r[k])) bad(`${at}.${k} is ${r[k]}, expected a count`);
    }
    if (typeof r.crc32 !== "string" || !/^[0-9a-f]{8}$/.test(r.crc32)) {
      bad(`${at}.crc32 is not 8 hex digits`);
    }
    if (r.bytes !== r.tokens * tb) {
      bad(`${at}: ${r.bytes} bytes do not hold ${r.tokens} ${ix.dtype} tokens`);
    }
    if (r.sentenceTokens !== undefined) {
      if (!isCount(r.sentenceTokens) || r.sentenceTokens * r.sentences !== r.tokens) {
        bad(`${at}: ${r.sentences} sentences of ${r.sentenceTokens} tokens != ${r.tokens} tokens`);
      }
    } else if (Array.isArray(r.offsets)) {
      const o = r.offsets;
      if (o.length !== r.sentences + 1 || o[0] !== 0 || o[o.length - 1] !== r.tokens) {
        bad(`${at}.offsets: expected ${r.sentences + 1} offsets from 0 to ${r.tokens}`);
      }
      for (let k = 1; k < o.length; k++) {
        if (!(o[k] >= o[k - 1])) bad(`${at}.offsets decrease at ${k}`);
      }
    } else bad(`${at}: neither sentenceTokens nor offsets`);
  });
  const c = countShards(ix.layout, ix.shards);
  const ic = ix.counts ?? {};
  for (const k of ["sentences", "tokens", "images", "shards"] as const) {
    if (ic[k] !== c[k]) bad(`counts.${k} is ${ic[k]}, the shards hold ${c[k]}`);
  }
  return ix;
}

/** Tokens of one shard, with sentence boundaries. */
export interface ShardData {
  /** The shard's tokens (a view over the file's bytes). */
  tokens: Uint16Array | Int32Array;
  /** Token offsets of its sentences (sentences + 1). */
  offsets: Uint32Array;
}

/** Options of {@link openDataset}. */
export interface OpenOptions {
  /** Check CRC-32 and id ranges on every shard read (default true). */
  verify?: boolean;
}

/**
 * A token-shard dataset opened for reading. Opening validates the index and the size of every
 * shard file; {@link TokenDataset.readShard} validates a shard's checksum and ids.
 */
export class TokenDataset {
  /** The dataset folder. */
  readonly dir: string;
  /** The parsed, validated index. */
  readonly index: DatasetIndex;
  readonly #verify: boolean;
  /** Global index of each shard's first sentence (shards + 1 entries). */
  readonly shardStarts: number[];

  private constructor(dir: string, index: DatasetIndex, verify: boolean) {
    this.dir = dir;
    this.index = index;
    this.#verify = verify;
    this.shardStarts = [0];
    for (const r of index.shards) this.shardStarts.push(this.shardStarts.at(-1)! + r.sentences);
  }

  /** The layout of its sentences. */
  get layout(): SentenceLayout {
    return this.index.layout;
  }
  /** Sentences in the dataset. */
  get sentences(): number {
    return this.index.counts.sentences;
  }
  /** Number of shards. */
  get shards(): number {
    return this.index.shards.length;
  }

  /** Opens `dir` (a folder holding index.json). */
  static async open(dir: string, opts: OpenOptions = {}): Promise<TokenDataset> {
    const file = join(dir, INDEX_FILE);
    let text: string;
    try {
      const kind = await pathKind(file);
      if (kind === null) {
        throw new DatasetError(
          file,
          "not found (is this a dataset folder written by `train dataset`?)",
        );
      }
      if (kind !== "file") {
        throw new DatasetError(
          file,
          `not a regular file (a ${kind === "dir" ? "folder" : "FIFO, socket or device"})`,
        );
      }
      text = await Deno.readTextFile(file);
    } catch (e) {
      if (e instanceof DatasetError) throw e;
      throw new DatasetError(file, `cannot read: ${(e as Error).message.replace(`${file}: `, "")}`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new DatasetError(
        file,
        `not valid JSON (truncated or corrupt?): ${(e as Error).message}`,
      );
    }
    const index = validateIndex(raw, file);
    const ds = new TokenDataset(dir, index, opts.verify ?? true);
    for (let i = 0; i < index.shards.length; i++) {
      const path = ds.shardPath(i);
      const size = (await shardStat(path)).size;
      if (size !== index.shards[i].bytes) {
        throw new DatasetError(
          path,
          `${size < index.shards[i].bytes ? "truncated" : "wrong size"}: expected ` +
            `${index.shards[i].bytes} bytes, found ${size}`,
        );
      }
    }
    return ds;
  }

  /** The folder holding shard `i`'s file: the dataset's, or the combined dataset it names. */
  shardDir(i: number): string {
    const k = this.index.shards[i].dataset;
    if (k === undefined) return this.dir;
    const d = this.index.datasets![k];
    return isAbsolute(d) ? d : join(this.dir, d);
  }

  /** Absolute-or-cwd-relative path of shard `i` (always inside {@link shardDir}). */
  shardPath(i: number): string {
    return join(this.shardDir(i), this.index.shards[i].file);
  }

  /**
   * Checks every shard before training: each is a regular file of the indexed size whose CRC-32
   * matches the index and whose ids are all `< vocabSize`. Streams each file in pieces of
   * `chunkBytes` (default 4 MiB), so memory stays bounded whatever the shard sizes; `signal` is
   * checked per piece and `onShard` runs after each shard. Throws the first problem as a
   * {@link DatasetError} naming the shard file; returns the shards and bytes checked.
   */
  async verify(opts: VerifyOptions = {}): Promise<{ shards: number; bytes: number }> {
    const chunk = Math.max(4, (opts.chunkBytes ?? 4 << 20) & ~3);
    const buf = new Uint8Array(chunk);
    const tb = dtypeBytes(this.index.dtype), v = this.layout.vocabSize;
    let total = 0;
    for (let i = 0; i < this.shards; i++) {
      const rec = this.index.shards[i], path = this.shardPath(i);
      const f = await openShard(path, rec.bytes);
      try {
        let crc = 0, done = 0;
        while (done < rec.bytes) {
          if (opts.signal?.aborted) {
            throw new DOMException(`interrupted while verifying ${path}`, "AbortError");
          }
          const want = buf.subarray(0, Math.min(chunk, rec.bytes - done));
          await readFull(f, want, path, rec.bytes, done);
          crc = crc32(want, crc);
          const ids = tb === 2
            ? new Uint16Array(want.buffer, 0, want.length >> 1)
            : new Int32Array(want.buffer, 0, want.length >> 2);
          for (let k = 0; k < ids.length; k++) {
            const t = ids[k];
            if (t >= v || t < 0) {
              throw new DatasetError(
                path,
                `corrupt: token ${done / tb + k} is ${t}, expected an id in [0, ${v})`,
              );
            }
          }
          done += want.length;
        }
        if (hex32(crc) !== rec.crc32) {
          throw new DatasetError(
            path,
            `corrupt: CRC-32 is ${hex32(crc)}, the index says ${rec.crc32}`,
          );
        }
      } finally {
        f.close();
      }
      total += rec.bytes;
      opts.onShard?.(i, this.shards);
    }
    return { shards: this.shards, bytes: total };
  }

  /** Reads shard `i` whole, validating size, CRC-32 and ids. */
  async readShard(i: number): Promise<ShardData> {
    const rec = this.index.shards[i];
    if (!rec) throw new RangeError(`readShard: shard ${i} out of range [0, ${this.shards})`);
    const path = this.shardPath(i);
    const f = await openShard(path, rec.bytes);
    const bytes = new Uint8Array(rec.bytes);
    try {
      await readFull(f, bytes, path, rec.bytes, 0);
    } finally {
      f.close();
    }
    if (this.#verify) {
      const c = hex32(crc32(bytes));
      if (c !== rec.crc32) {
        throw new DatasetError(path, `corrupt: CRC-32 is ${c}, the index says ${rec.crc32}`);
      }
    }
    const tokens = this.index.dtype === "u16"
      ? new Uint16Array(bytes.buffer, bytes.byteOffset, rec.tokens)
      : new Int32Array(bytes.buffer, bytes.byteOffset, rec.tokens);
    if (this.#verify) {
      const v = this.layout.vocabSize;
      for (let k = 0; k < tokens.length; k++) {
        const t = tokens[k];
        if (t >= v || t < 0) {
          throw new DatasetError(path, `corrupt: token ${k} is ${t}, expected an id in [0, ${v})`);
        }
      }
    }
    let offsets: Uint32Array;
    if (rec.sentenceTokens !== undefined) {
      offsets = new Uint32Array(rec.sentences + 1);
      for (let k = 0; k <= rec.sentences; k++) offsets[k] = k * rec.sentenceTokens;
    } else offsets = Uint32Array.from(rec.offsets!);
    return { tokens, offsets };
  }

  /** Every sentence in index order, as Int32Array, one shard in memory at a time. */
  async *sentencesIter(): AsyncGenerator<Int32Array> {
    for (let i = 0; i < this.shards; i++) {
      const { tokens, offsets } = await this.readShard(i);
      for (let k = 0; k + 1 < offsets.length; k++) {
        yield Int32Array.from(tokens.subarray(offsets[k], offsets[k + 1]));
      }
    }
  }
}

/** Options of {@link TokenDataset.verify}. */
export interface VerifyOptions {
  /** Bytes read at a time (default 4 MiB): the memory verification uses. */
  chunkBytes?: number;
  /** Stops between pieces (an AbortError). */
  signal?: AbortSignal;
  /** Called after each shard with its index and the number of shards. */
  onShard?: (i: number, shards: number) => void;
}

/** Stat of a shard file: must exist and be a regular file (a FIFO would block a read forever). */
async function shardStat(path: string): Promise<Deno.FileInfo> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DatasetError(path, "shard file is missing");
    throw new DatasetError(path, `cannot read the shard file: ${(e as Error).message}`);
  }
  if (!st.isFile) {
    throw new DatasetError(
      path,
      `not a regular file (a ${st.isDirectory ? "folder" : "FIFO, socket or device"}): ` +
        "shard files must be regular files",
    );
  }
  return st;
}

/** Opens a shard for reading after checking it is a regular file of `bytes` bytes. */
async function openShard(path: string, bytes: number): Promise<Deno.FsFile> {
  await shardStat(path); // before open(): opening a FIFO for reading blocks
  let f: Deno.FsFile;
  try {
    f = await Deno.open(path, { read: true });
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DatasetError(path, "shard file is missing");
    throw new DatasetError(path, `cannot read the shard file: ${(e as Error).message}`);
  }
  try {
    const st = await f.stat(); // the file actually opened (it may have been replaced)
    if (!st.isFile) {
      throw new DatasetError(path, "not a regular file: shards must be regular files");
    }
    if (st.size !== bytes) {
      throw new DatasetError(
        path,
        `${
          st.size < bytes ? "truncated" : "wrong size"
        }: expected ${bytes} bytes, found ${st.size}`,
      );
    }
  } catch (e) {
    f.close();
    throw e;
  }
  return f;
}

/** Fills `out` from `f`; a short file is a "truncated" DatasetError. */
async function readFull(
  f: Deno.FsFile,
  out: Uint8Array,
  path: string,
  bytes: number,
  at: number,
): Promise<void> {
  let have = 0;
  while (have < out.length) {
    const r = await f.read(out.subarray(have));
    if (r === null) {
      throw new DatasetError(
        path,
        `truncated: expected ${bytes} bytes, the file ends at ${at + have}`,
      );
    }
    have += r;
  }
}

/**
 * Opens `dir` and checks every shard's size, CRC-32 and ids in bounded memory (see
 * {@link TokenDataset.verify}): what a trainer calls before its first step, so a corrupt shard
 * stops the run before it starts, not in the middle. Returns the opened dataset.
 */
export async function verifyDataset(
  dir: string | TokenDataset,
  opts: VerifyOptions = {},
): Promise<TokenDataset> {
  const ds = typeof dir === "string" ? await TokenDataset.open(dir) : dir;
  await ds.verify(opts);
  return ds;
}

/** Opens a dataset folder. See {@link TokenDataset}. */
export function openDataset(dir: string, opts?: OpenOptions): Promise<TokenDataset> {
  return TokenDataset.open(dir, opts);
}

/** `file` (relative to `fromDir`) rewritten relative to `toDir`. */
export function rebasePath(file: string, fromDir: string, toDir: string): string {
  if (isAbsolute(file)) return file;
  const rel = relative(resolve(toDir), resolve(fromDir, file));
  return rel.split("\\").join("/");
}

/**
 * Makes `dir` ready to receive a new dataset: creates it, refuses one that already holds a
 * dataset unless `overwrite` (then removes that dataset's index and `shard-*.bin` files).
 */
export async function prepareOutDir(dir: string, overwrite = false): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const index = join(dir, INDEX_FILE);
  let has = false;
  try {
    await Deno.stat(index);
    has = true;
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  if (has && !overwrite) {
    throw new DatasetError(
      index,
      "the output folder already holds a dataset (pass --overwrite to replace it)",
    );
  }
  if (has) {
    await Deno.remove(index);
    for await (const e of Deno.readDir(dir)) {
      if (e.isFile && /^shard-\d+\.bin$/.test(e.name)) await Deno.remove(join(dir, e.name));
    }
  }
}
