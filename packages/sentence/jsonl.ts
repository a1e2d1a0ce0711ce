/**
 * The official LVM data interchange: JSONL, one sentence per line,
 * `{"tokens": "<base64 of the little-endian int32 ids>"}` (what Python's
 * `json.dumps({"tokens": b64encode(a.astype(np.int32).tobytes()).decode()})` writes).
 *
 * Import and export are lossless: ids and sentence boundaries survive both ways, and a file in the
 * canonical form above (the official scripts' form) exports back byte for byte.
 * @module
 */

import { basename, join } from "node:path";
import { pathKind } from "@lvm/util/fs";
import { AtomicWriter } from "./_fs.ts";
import { makeLayout, type SentenceLayout, splitSentence, tokenDtype } from "./layout.ts";
import {
  countShards,
  DatasetError,
  type DatasetIndex,
  imagesIn,
  openDataset,
  prepareOutDir,
  type ShardRecord,
  tokenShardFileName,
  writeIndex,
  writeShard,
} from "./shards.ts";

/** Options of {@link importJsonl}. */
export interface ImportOptions {
  /**
   * Layout fields (default: the released LVM's: 256 tokens per image, 8192 codes, vocab 8292, no
   * special tokens, images per sentence inferred). When the layout declares special tokens
   * (`beginId`, `separatorId`, `endId`) or `imagesPerSentence`, every line is checked against it:
   * special tokens where the layout puts them, image codes `< codebookSize`, the declared number
   * of images.
   */
  layout?: Partial<SentenceLayout>;
  /** Sentences per shard (default 4096). */
  shardSentences?: number;
  /** The tokenizer identity to record (default "unknown"). */
  tokenizerId?: string;
  /** Image resolution to record (default 256). */
  resolution?: number;
  /** Replace a dataset already in `outDir`. */
  overwrite?: boolean;
  /** Longest line accepted, in bytes (default {@link JSONL_MAX_LINE_BYTES}). */
  maxLineBytes?: number;
}

const b64 = {
  decode: (s: string): Uint8Array => (Uint8Array as any).fromBase64(s),
  encode: (u: Uint8Array): string => (u as any).toBase64(),
};

/**
 * Longest JSONL line {@link importJsonl} accepts unless told (64 MiB: a sentence of about 12
 * million ids; the released LVM's sentences are tens of KB).
 */
export const JSONL_MAX_LINE_BYTES = 64 << 20;

/**
 * Lines of a text file, streamed, with 1-based line numbers, in time linear in the file size:
 * each piece read is searched once for newlines and a line's pieces are joined once. A line
 * longer than `maxLineBytes` is a DatasetError naming the file and the line (the file is not
 * read further). The file must be a regular file (a FIFO or device is refused).
 */
export async function* readLines(
  file: string,
  maxLineBytes = JSONL_MAX_LINE_BYTES,
): AsyncGenerator<[string, number]> {
  const kind = await pathKind(file).catch((e) => {
    throw new DatasetError(file, `cannot read: ${(e as Error).message.replace(`${file}: `, "")}`);
  });
  if (kind === null) throw new DatasetError(file, "not found");
  if (kind !== "file") throw new DatasetError(file, "not a regular file, expected a JSONL file");
  let f: Deno.FsFile;
  try {
    f = await Deno.open(file);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new DatasetError(file, "not found");
    throw new DatasetError(file, `cannot read: ${(e as Error).message}`);
  }
  const dec = new TextDecoder();
  const buf = new Uint8Array(1 << 20);
  let parts: Uint8Array[] = [], partBytes = 0, n = 0;
  const line = (tail: Uint8Array): string => {
    if (!parts.length) return dec.decode(tail);
    const all = new Uint8Array(partBytes + tail.length);
    let o = 0;
    for (const p of parts) [all.set(p, o), o += p.length];
    all.set(tail, o);
    parts = [];
    partBytes = 0;
    return dec.decode(all);
  };
  const tooLong = () =>
    new DatasetError(
      file,
      `line ${n + 1}: longer than ${maxLineBytes} bytes (the limit on one JSONL line; is this ` +
        "really one sentence per line?)",
    );
  try {
    while (true) {
      const r = await f.read(buf);
      if (r === null) break;
      const chunk = buf.subarray(0, r);
      let start = 0, i: number;
      while ((i = chunk.indexOf(10, start)) >= 0) {
        if (partBytes + i - start > maxLineBytes) throw tooLong();
        const text = line(chunk.subarray(start, i));
        yield [text, ++n];
        start = i + 1;
      }
      if (start < chunk.length) {
        if (partBytes + chunk.length - start > maxLineBytes) throw tooLong();
        parts.push(chunk.slice(start));
        partBytes += chunk.length - start;
      }
    }
    if (partBytes) yield [line(new Uint8Array(0)), ++n];
  } finally {
    f.close();
  }
}

/** Decodes one JSONL line into its ids; throws DatasetError naming the file and line. */
export function parseJsonlLine(line: string, file = "<jsonl>", lineNo = 0): Int32Array {
  let obj: unknown;
  try {
    obj = JSON.parse(line);
  } catch (e) {
    throw new DatasetError(file, `line ${lineNo}: not valid JSON: ${(e as Error).message}`);
  }
  const tok = (obj as { tokens?: unknown })?.tokens;
  if (typeof tok !== "string") {
    throw new DatasetError(
      file,
      `line ${lineNo}: expected {"tokens": "<base64>"}, found no "tokens" string`,
    );
  }
  let bytes: Uint8Array;
  try {
    bytes = b64.decode(tok);
  } catch {
    throw new DatasetError(file, `line ${lineNo}: "tokens" is not valid base64`);
  }
  if (bytes.length % 4 !== 0) {
    throw new DatasetError(
      file,
      `line ${lineNo}: ${bytes.length} bytes is not a whole number of int32 ids`,
    );
  }
  const ids = new Int32Array(bytes.length / 4);
  new Uint8Array(ids.buffer).set(bytes);
  return ids;
}

/** One sentence as a canonical JSONL line (with its newline). */
export function formatJsonlLine(ids: ArrayLike<number>): string {
  const a = ids instanceof Int32Array ? ids : Int32Array.from(ids);
  const bytes = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  return `{"tokens": "${b64.encode(bytes)}"}\n`;
}

/** Checks one imported sentence against a declared layout; the error names the file and line. */
function checkLayout(
  layout: SentenceLayout,
  images: number,
  ids: Int32Array,
  file: string,
  line: number,
): void {
  let blocks: Int32Array[];
  try {
    blocks = splitSentence(layout, ids);
  } catch (e) {
    throw new DatasetError(
      file,
      `line ${line}: ${(e as Error).message.replace(/^splitSentence: /, "")} under the declared ` +
        `layout (${layoutText(layout)})`,
    );
  }
  if (images > 0 && blocks.length !== images) {
    throw new DatasetError(
      file,
      `line ${line}: ${blocks.length} images, the declared layout has ${images} per sentence`,
    );
  }
  blocks.forEach((b, i) => {
    for (let k = 0; k < b.length; k++) {
      if (b[k] >= layout.codebookSize) {
        throw new DatasetError(
          file,
          `line ${line}: image ${i} code ${k} is ${b[k]}, expected an image code in ` +
            `[0, ${layout.codebookSize}) (a special token out of place?)`,
        );
      }
    }
  });
}

function layoutText(l: SentenceLayout): string {
  const sp = [["begin", l.beginId], ["separator", l.separatorId], ["end", l.endId]]
    .filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`);
  return `${l.tokensPerImage} tokens per image${sp.length ? ", " + sp.join(", ") : ""}`;
}

/**
 * Imports an official JSONL file into a token-shard dataset in `outDir`, streaming. Every id must
 * lie in [0, vocabSize). The layout's images per sentence is inferred (0 when lengths differ).
 */
export async function importJsonl(
  file: string,
  outDir: string,
  opts: ImportOptions = {},
): Promise<DatasetIndex> {
  const layout = makeLayout({
    ...opts.layout,
    imagesPerSentence: opts.layout?.imagesPerSentence ?? 0,
  });
  const dtype = tokenDtype(layout);
  const declaredImages = layout.imagesPerSentence;
  const strict = declaredImages > 0 || layout.beginId !== null || layout.separatorId !== null ||
    layout.endId !== null;
  const per = opts.shardSentences ?? 4096;
  if (!(Number.isInteger(per) && per > 0)) {
    throw new RangeError(`importJsonl: shardSentences must be a positive integer, found ${per}`);
  }
  await prepareOutDir(outDir, opts.overwrite);
  const shards: ShardRecord[] = [];
  let pending: Int32Array[] = [];
  let lines = 0;
  const lengths = new Set<number>();
  const flush = async () => {
    if (!pending.length) return;
    const name = tokenShardFileName(shards.length);
    shards.push(await writeShard(join(outDir, name), pending, dtype, layout.vocabSize));
    pending = [];
  };
  for await (const [line, n] of readLines(file, opts.maxLineBytes)) {
    if (line.trim() === "") continue;
    const ids = parseJsonlLine(line, file, n);
    for (let i = 0; i < ids.length; i++) {
      if (ids[i] < 0 || ids[i] >= layout.vocabSize) {
        throw new DatasetError(
          file,
          `line ${n}: token ${i} is ${ids[i]}, outside the vocabulary [0, ${layout.vocabSize}) ` +
            `(pass a larger --vocab-size if this is intended)`,
        );
      }
    }
    if (strict) checkLayout(layout, declaredImages, ids, file, n);
    lengths.add(ids.length);
    pending.push(ids);
    lines++;
    if (pending.length === per) await flush();
  }
  await flush();
  if (lengths.size === 1 && declaredImages === 0) {
    const n = imagesIn(layout, [...lengths][0]);
    layout.imagesPerSentence = n;
  }
  const index: DatasetIndex = {
    format: "lvm-token-shards",
    version: 1,
    layout,
    dtype,
    tokenizer: {
      id: opts.tokenizerId ?? "unknown",
      resolution: opts.resolution ?? 256,
      tokensPerImage: layout.tokensPerImage,
      codebookSize: layout.codebookSize,
    },
    provenance: { import: basename(file), lines },
    sources: [{ path: file, type: "jsonl", items: lines }],
    counts: countShards(layout, shards),
    shards,
  };
  await writeIndex(outDir, index);
  return index;
}

/** Exports a dataset as official JSONL (written atomically), streaming. Returns sentences written. */
export async function exportJsonl(dir: string, outFile: string): Promise<number> {
  const ds = await openDataset(dir);
  const w = await AtomicWriter.open(outFile);
  const enc = new TextEncoder();
  let n = 0;
  try {
    for (let s = 0; s < ds.shards; s++) {
      const { tokens, offsets } = await ds.readShard(s);
      let buf: string[] = [];
      for (let k = 0; k + 1 < offsets.length; k++) {
        buf.push(formatJsonlLine(Int32Array.from(tokens.subarray(offsets[k], offsets[k + 1]))));
        n++;
        if (buf.length === 256) {
          await w.write(enc.encode(buf.join("")));
          buf = [];
        }
      }
      if (buf.length) await w.write(enc.encode(buf.join("")));
    }
    await w.commit();
  } catch (e) {
    await w.abort();
    throw e;
  }
  return n;
}
