/**
 * The file-system side of @lvm/weights (Deno): open weight files and folders, write safetensors
 * files atomically. The parsing lives in the main module and reads through a {@link ByteSource};
 * here {@link FileSource} is that source over a file.
 *
 * - {@link SafetensorsFile}`.open(path)`, {@link TorchBinFile}`.open(path)`,
 *   {@link GgufFile}`.open(path)`: one file.
 * - {@link openShardedCheckpoint}: an `*.index.json` and its shards.
 * - {@link openWeights}: the one way to open "the weights" of a file or folder (safetensors, torch
 *   pickles, sharded either way, a LLaMA `.gguf` under Hugging Face names);
 *   {@link openCheckpoint}: the same for safetensors only.
 * - {@link SafetensorsWriter}, {@link writeSafetensors}, {@link writeShardedSafetensors};
 *   {@link GgufWriter}, {@link writeGguf}; {@link convertLlamaToGguf} (an HF LLaMA folder to a
 *   quantized GGUF, one tensor at a time).
 * @module
 */
import { dirname, join } from "node:path";
import { isFile, tempPath } from "@lvm/util/fs";
import { type ByteSource, intoBuffer } from "./byte_source.ts";
import { compareCodePoints } from "./_code_points.ts";
import {
  encodeGgml,
  type GgmlType,
  GgufError,
  type GgufMetadata,
  type GgufPlannedTensor,
  GgufReader,
  type GgufTensorSpec,
  type GgufValue,
  planGguf,
} from "./gguf.ts";
import {
  encodeLlamaTensor,
  GgufLlamaSource,
  type LlamaGgufTensor,
  llamaQkRowOrder,
  llamaShapeFromHf,
  planLlamaGguf,
  reorderRows,
} from "./gguf_llama.ts";
import {
  encodeTensor,
  type PlannedTensor,
  planSafetensors,
  SafetensorsError,
  SafetensorsReader,
  ShardedCheckpoint,
  shardFileName,
  type TensorData,
  type TensorEntry,
  type TensorSource,
  type TensorSpec,
  type WeightsFileError,
} from "./safetensors.ts";
import { TorchBinError, type TorchBinOptions, TorchBinReader } from "./torch_bin.ts";

/**
 * A {@link ByteSource} over a file: Deno.open + seek/read, one request at a time (calls are
 * queued, so concurrent reads are safe). Shared by the safetensors and torch readers.
 */
export class FileSource implements ByteSource {
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;
  private constructor(
    readonly path: string,
    private readonly file: Deno.FsFile,
    /** File size in bytes at open. */
    readonly size: number,
  ) {}

  /** Opens `path` for reading; a missing/unreadable file is thrown as Deno's error. */
  static async open(path: string): Promise<FileSource> {
    const file = await Deno.open(path, { read: true });
    try {
      const st = await file.stat();
      if (!st.isFile) throw new TypeError(`${path} is not a regular file`);
      return new FileSource(path, file, st.size);
    } catch (e) {
      file.close();
      throw e;
    }
  }

  /**
   * Reads up to `length` bytes at `offset` into a new buffer, or into the start of `into` (at
   * least `length` bytes); returns fewer only at end of file (callers decide whether that is
   * truncation).
   */
  read(offset: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
    const run = async () => {
      if (this.#closed) throw new Error(`${this.path}: read after close`);
      const out = into ? intoBuffer(into, length, this.path) : new Uint8Array(length);
      await this.file.seek(offset, Deno.SeekMode.Start);
      let got = 0;
      while (got < length) {
        const r = await this.file.read(out.subarray(got));
        if (r === null || r === 0) break;
        got += r;
      }
      return got === length ? out : out.subarray(0, got);
    };
    const p = this.#queue.then(run, run);
    this.#queue = p.catch(() => {});
    return p;
  }

  /** Closes the handle (idempotent). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.file.close();
  }

  get closed(): boolean {
    return this.#closed;
  }
}

// ---------------------------------------------------------------------------------------------
// Opening files

/** Opens `path`; a failure is the format's error (`Err`) naming the file: "PATH: cannot open: ...". */
async function openFile(
  path: string,
  Err: new (
    path: string,
    detail: string,
    tensor?: string,
    options?: ErrorOptions,
  ) => WeightsFileError,
): Promise<FileSource> {
  try {
    return await FileSource.open(path);
  } catch (e) {
    throw new Err(path, `cannot open: ${(e as Error).message}`, undefined, { cause: e });
  }
}

/**
 * A safetensors file on disk (see {@link SafetensorsReader} for what opening checks).
 *
 * @example
 * ```ts
 * import { SafetensorsFile, writeSafetensors } from "@lvm/weights/fs";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, { w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) } });
 * const f = await SafetensorsFile.open(path);
 * console.log(f.info("w").shape, await f.readF32("w")); // [ 2 ] Float32Array(2) [ 1, 2 ]
 * f.close();
 * await Deno.remove(path);
 * ```
 */
export class SafetensorsFile extends SafetensorsReader {
  /**
   * Opens `path` and validates its header; any failure is a {@link SafetensorsError} naming the
   * file (and tensor).
   */
  static async open(path: string): Promise<SafetensorsFile> {
    const file = await openFile(path, SafetensorsError);
    return new SafetensorsFile(file, await SafetensorsReader.parse(file));
  }
}

/**
 * A PyTorch checkpoint file on disk (see {@link TorchBinReader}).
 *
 * @example
 * ```ts
 * import { TorchBinFile } from "@lvm/weights/fs";
 * // A torch.save'd state dict from this repository's fixtures (the LVM VQGAN's
 * // pytorch_model.bin opens the same way).
 * const path = new URL("../../tests/fixtures/kernels/torch_state.bin", import.meta.url).pathname;
 * const sd = await TorchBinFile.open(path);
 * console.log(sd.info("conv.weight").shape); // [ 3, 2, 3, 3 ]
 * const w = await sd.readF32("conv.weight"); // Float32Array(54)
 * sd.close();
 * ```
 */
export class TorchBinFile extends TorchBinReader {
  /**
   * Opens `path`. Errors ({@link TorchBinError}, `UnsafePickleError`) name the file and say what
   * was wrong.
   */
  static async open(path: string, options: TorchBinOptions = {}): Promise<TorchBinFile> {
    const file = await openFile(path, TorchBinError);
    return new TorchBinFile(file, await TorchBinReader.parse(file, options));
  }
}

/**
 * A GGUF file on disk (see {@link GgufReader}); {@link openWeights} gives a LLaMA one under
 * Hugging Face names ({@link GgufLlamaSource}).
 *
 * @example
 * ```ts
 * import { GgufFile, writeGguf } from "@lvm/weights/fs";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * await writeGguf(path, new Map(), [
 *   { name: "w", type: "Q4_0", shape: [1, 32], data: new Float32Array(32).fill(-2) },
 * ]);
 * const g = await GgufFile.open(path);
 * console.log(g.info("w").byteLength, (await g.readF32("w"))[0]); // 18 -2
 * g.close();
 * await Deno.remove(path);
 * ```
 */
export class GgufFile extends GgufReader {
  /** Opens `path` and validates its header; any failure is a {@link GgufError} naming the file. */
  static async open(path: string): Promise<GgufFile> {
    const file = await openFile(path, GgufError);
    return new GgufFile(file, await GgufReader.parse(file));
  }
}

/**
 * Opens the index at `indexPath` and its shards (beside it) with `openShard` (safetensors by
 * default); see {@link ShardedCheckpoint.fromIndex} for what is checked.
 */
export async function openShardedCheckpoint(
  indexPath: string,
  openShard: (path: string) => Promise<TensorSource> = SafetensorsFile.open,
): Promise<ShardedCheckpoint> {
  let text: string;
  try {
    text = await Deno.readTextFile(indexPath);
  } catch (e) {
    throw new SafetensorsError(indexPath, `cannot read the index: ${(e as Error).message}`);
  }
  const dir = dirname(indexPath);
  return await ShardedCheckpoint.fromIndex(indexPath, text, {
    locate: (file) => join(dir, file),
    exists: async (p) => {
      try {
        await Deno.stat(p);
        return true;
      } catch {
        return false;
      }
    },
    open: openShard,
  });
}

/**
 * Opens a safetensors checkpoint: a `.safetensors` file, an `.index.json`, or a directory holding
 * `model.safetensors` or `model.safetensors.index.json` (in that order of preference, as
 * Hugging Face does).
 */
export async function openCheckpoint(path: string): Promise<TensorSource> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (e) {
    throw new SafetensorsError(path, `no such file or directory`, undefined, { cause: e });
  }
  if (st.isFile) {
    return path.endsWith(".json") ? openShardedCheckpoint(path) : SafetensorsFile.open(path);
  }
  const single = join(path, "model.safetensors");
  if (await isFile(single)) return SafetensorsFile.open(single);
  const index = join(path, "model.safetensors.index.json");
  if (await isFile(index)) return openShardedCheckpoint(index);
  throw new SafetensorsError(
    path,
    "directory holds neither model.safetensors nor model.safetensors.index.json",
  );
}

const openShard = (p: string): Promise<TensorSource> =>
  p.endsWith(".safetensors") ? SafetensorsFile.open(p) : TorchBinFile.open(p);

/** The weight files a folder is searched for by default, in order of preference (as HF does). */
export const HF_WEIGHT_FILES: readonly string[] = [
  "model.safetensors",
  "model.safetensors.index.json",
  "pytorch_model.bin",
  "pytorch_model.bin.index.json",
];

/** Options of {@link openWeights}. */
export interface OpenWeightsOptions extends TorchBinOptions {
  /** File names a folder is searched for, in order (default {@link HF_WEIGHT_FILES}). */
  files?: readonly string[];
}

/** {@link openWeights} found no weight file in a folder (a {@link TorchBinError}). */
export class NoWeightsError extends TorchBinError {
  override name = "NoWeightsError";
}

/**
 * Opens any weights a loader may be given: a `.safetensors` file, a PyTorch file (`.bin`, `.pt`,
 * `.pth`, `.ckpt`), an `*.index.json` of shards of either, a LLaMA `.gguf` file, or a directory
 * holding one of `options.files` (by preference; default `model.safetensors`,
 * `model.safetensors.index.json`, `pytorch_model.bin`, `pytorch_model.bin.index.json`). The one
 * way every loader of this repository opens a weights folder.
 *
 * A `.gguf` comes back as a {@link GgufLlamaSource}: Hugging Face names, f32 values in HF row
 * order (q/k unpermuted, Q8_0/Q4_0 dequantized) from `readF32`, the stored blocks from
 * `rawTensor(name)`, and the config.json object from `config()` (a GGUF has no config.json
 * beside it). A GGUF of another architecture than "llama" is a {@link GgufError}.
 */
export async function openWeights(
  path: string,
  options: OpenWeightsOptions = {},
): Promise<TensorSource> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (e) {
    throw new TorchBinError(path, "no such file or directory", undefined, { cause: e });
  }
  const open = (p: string): Promise<TensorSource> =>
    p.endsWith(".gguf")
      ? openLlamaGguf(p)
      : p.endsWith(".json")
      ? openShardedCheckpoint(p, openShard)
      : p.endsWith(".safetensors")
      ? SafetensorsFile.open(p)
      : TorchBinFile.open(p, options);
  if (st.isFile) return await open(path);
  const files = options.files ?? HF_WEIGHT_FILES;
  for (const name of files) {
    if (await isFile(join(path, name))) return await open(join(path, name));
  }
  throw new NoWeightsError(path, `directory holds none of ${files.join(", ")}`);
}

/** Opens a LLaMA `.gguf` under Hugging Face names (see {@link openWeights}). */
export async function openLlamaGguf(path: string): Promise<GgufLlamaSource> {
  const g = await GgufFile.open(path);
  try {
    return new GgufLlamaSource(g);
  } catch (e) {
    g.close();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/**
 * The atomic, streaming part shared by {@link SafetensorsWriter} and {@link GgufWriter}: a temp file
 * beside `path` sized and headed at creation, one write per planned tensor at its offset, `close()`
 * (every tensor written? sync, rename into place) and `abort()` (remove the temp file).
 */
abstract class PlannedFileWriter<P extends { name: string }> {
  readonly #plan: Map<string, P>;
  readonly #written = new Set<string>();
  #done = false;
  protected constructor(
    /** The final path. */
    readonly path: string,
    private readonly tmp: string,
    private readonly file: Deno.FsFile,
    private readonly dataStart: number,
    plan: P[],
  ) {
    this.#plan = new Map(plan.map((p) => [p.name, p]));
  }

  /** Creates the temp file for `path`, `size` bytes (zeros), with `header` at its start. */
  protected static async openTemp(
    path: string,
    header: Uint8Array,
    size: number,
  ): Promise<{ tmp: string; file: Deno.FsFile }> {
    const tmp = tempPath(path);
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      await file.truncate(size);
      await writeAll(file, header, 0);
    } catch (e) {
      file.close();
      await Deno.remove(tmp).catch(() => {});
      throw e;
    }
    return { tmp, file };
  }

  /** Tensor names in file layout order (writing in this order is sequential I/O). */
  get order(): string[] {
    return [...this.#plan.keys()];
  }

  /** The plan of tensor `name`, checking it may be written now (planned, not yet written, open). */
  protected planned(name: string): P {
    if (this.#done) {
      throw new Error(`${this.path}: write(${JSON.stringify(name)}) after close/abort`);
    }
    const p = this.#plan.get(name);
    if (!p) {
      throw new RangeError(
        `${this.path}: tensor ${JSON.stringify(name)} was not in the list given to create()`,
      );
    }
    if (this.#written.has(name)) {
      throw new RangeError(`${this.path}: tensor ${JSON.stringify(name)} written twice`);
    }
    return p;
  }

  /** Writes tensor `name`'s encoded bytes at `offset` in the data section. */
  protected async put(name: string, bytes: Uint8Array, offset: number): Promise<void> {
    this.#written.add(name);
    await writeAll(this.file, bytes, this.dataStart + offset);
  }

  /** Checks all tensors were written, syncs, closes and renames the temp file to `path`. */
  async close(): Promise<void> {
    if (this.#done) return;
    const missing = this.order.filter((n) => !this.#written.has(n));
    if (missing.length) {
      await this.abort();
      throw new RangeError(
        `${this.path}: ${missing.length} tensor(s) never written (${
          missing.slice(0, 5).join(", ")
        }); nothing was saved`,
      );
    }
    this.#done = true;
    try {
      await this.file.syncData();
      this.file.close();
      await Deno.rename(this.tmp, this.path);
    } catch (e) {
      try {
        this.file.close();
      } catch { /* already closed */ }
      await Deno.remove(this.tmp).catch(() => {});
      throw e;
    }
  }

  /** Discards the temp file; `path` is left as it was. */
  async abort(): Promise<void> {
    if (this.#done) return;
    this.#done = true;
    try {
      this.file.close();
    } catch { /* already closed */ }
    await Deno.remove(this.tmp).catch(() => {});
  }
}

/**
 * Streams a safetensors file: the tensor list first (so the header can be written), then each
 * tensor's bytes, in any order, one call per tensor (so a model is saved without holding every
 * weight in host memory at once). Writes go to a temp file beside `path`; `close()` checks that
 * every tensor was written, syncs and renames it into place; `abort()` removes it.
 *
 * @example
 * ```ts
 * import { SafetensorsWriter } from "@lvm/weights/fs";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const w = await SafetensorsWriter.create(path, [
 *   { name: "a", dtype: "F32", shape: [2, 2] },
 *   { name: "b", dtype: "BF16", shape: [3] },
 * ]);
 * await w.write("b", new Float32Array([1, 2, 3])); // converted to bf16
 * await w.write("a", new Float32Array([1, 2, 3, 4]));
 * await w.close();
 * await Deno.remove(path);
 * ```
 */
export class SafetensorsWriter extends PlannedFileWriter<PlannedTensor> {
  /** Creates the temp file and writes the header for `specs` (+ optional string `metadata`). */
  static async create(
    path: string,
    specs: readonly TensorSpec[],
    metadata?: Record<string, string>,
  ): Promise<SafetensorsWriter> {
    const { header, planned, dataBytes } = planSafetensors(specs, metadata);
    const { tmp, file } = await PlannedFileWriter.openTemp(
      path,
      header,
      header.byteLength + dataBytes,
    );
    return new SafetensorsWriter(path, tmp, file, header.byteLength, planned);
  }

  /** Writes one tensor's data (see {@link TensorEntry.data}); each tensor exactly once. */
  async write(name: string, data: TensorData): Promise<void> {
    const p = this.planned(name);
    const bytes = encodeTensor(name, { dtype: p.dtype, shape: p.shape, data });
    await this.put(name, bytes, p.begin);
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array, offset: number): Promise<void> {
  await file.seek(offset, Deno.SeekMode.Start);
  let done = 0;
  while (done < bytes.byteLength) done += await file.write(bytes.subarray(done));
}

/**
 * Writes `tensors` to `path` as one safetensors file, atomically (temp file + rename), laid out and
 * headed byte for byte as the Python/Rust library writes it.
 *
 * @example
 * ```ts
 * import { writeSafetensors } from "@lvm/weights/fs";
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * await writeSafetensors(path, {
 *   "embed.weight": { dtype: "F16", shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6]) },
 *   "step": { dtype: "I64", shape: [], data: new BigInt64Array([100n]) },
 * }, { format: "pt" });
 * await Deno.remove(path);
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: Record<string, TensorEntry>,
  metadata?: Record<string, string>,
): Promise<void> {
  // Encode first, so a bad tensor fails before any file is created.
  const bytes = new Map<string, Uint8Array>();
  for (const [name, t] of Object.entries(tensors)) bytes.set(name, encodeTensor(name, t));
  const w = await SafetensorsWriter.create(
    path,
    Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })),
    metadata,
  );
  try {
    for (const name of w.order) await w.write(name, bytes.get(name)!);
    await w.close();
  } catch (e) {
    await w.abort();
    throw e;
  }
}

/** What {@link writeShardedSafetensors} wrote. */
export interface ShardedWriteResult {
  /** Shard file names (or just `model.safetensors`). */
  files: string[];
  /** The index path, absent when everything fit one file. */
  index?: string;
  /** Sum of tensor bytes. */
  totalSize: number;
}

/**
 * Writes `tensors` into `dir` as Hugging Face does: tensors are packed in the given order into
 * shards of at most `maxShardBytes` of data (a larger tensor gets a shard of its own); one shard is
 * saved as `model.safetensors`, several as `model-0000k-of-0000n.safetensors` plus
 * `model.safetensors.index.json` (`metadata.total_size` and a sorted `weight_map`). Each file is
 * written atomically, the index last; files of an earlier save that the new one does not use
 * (`model.safetensors`, the index, `model-*-of-*.safetensors`) are then removed so the directory
 * cannot be read as a mix of the two.
 */
export async function writeShardedSafetensors(
  dir: string,
  tensors: Record<string, TensorEntry>,
  maxShardBytes: number,
  metadata?: Record<string, string>,
): Promise<ShardedWriteResult> {
  if (!(maxShardBytes > 0)) {
    throw new RangeError(`maxShardBytes must be > 0, found ${maxShardBytes}`);
  }
  const encoded = Object.entries(tensors).map(([name, t]) => ({
    name,
    t,
    bytes: encodeTensor(name, t),
  }));
  const groups: (typeof encoded)[] = [];
  let cur: typeof encoded = [];
  let curBytes = 0;
  for (const e of encoded) {
    if (cur.length && curBytes + e.bytes.byteLength > maxShardBytes) {
      groups.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(e);
    curBytes += e.bytes.byteLength;
  }
  if (cur.length || !groups.length) groups.push(cur);
  await Deno.mkdir(dir, { recursive: true });
  const totalSize = encoded.reduce((s, e) => s + e.bytes.byteLength, 0);
  const write = (file: string, g: typeof encoded) =>
    writeSafetensors(
      join(dir, file),
      Object.fromEntries(
        g.map((e) => [e.name, { dtype: e.t.dtype, shape: e.t.shape, data: e.bytes }]),
      ),
      metadata,
    );
  const keep = new Set<string>();
  let result: ShardedWriteResult;
  if (groups.length === 1) {
    await write("model.safetensors", groups[0]);
    keep.add("model.safetensors");
    result = { files: ["model.safetensors"], totalSize };
  } else {
    const files: string[] = [];
    const weightMap: Record<string, string> = {};
    for (let k = 0; k < groups.length; k++) {
      const f = shardFileName(k + 1, groups.length);
      await write(f, groups[k]);
      files.push(f);
      keep.add(f);
      for (const e of groups[k]) weightMap[e.name] = f;
    }
    const sortedMap = Object.fromEntries(
      Object.keys(weightMap).sort(compareCodePoints).map((k) => [k, weightMap[k]]),
    );
    const indexPath = join(dir, "model.safetensors.index.json");
    const tmp = tempPath(indexPath);
    await Deno.writeTextFile(
      tmp,
      JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sortedMap }, null, 2) +
        "\n",
    );
    await Deno.rename(tmp, indexPath);
    keep.add("model.safetensors.index.json");
    result = { files, index: indexPath, totalSize };
  }
  for await (const ent of Deno.readDir(dir)) {
    const stale = ent.name === "model.safetensors" || ent.name === "model.safetensors.index.json" ||
      /^model-\d{5}-of-\d{5}\.safetensors$/.test(ent.name);
    if (ent.isFile && stale && !keep.has(ent.name)) await Deno.remove(join(dir, ent.name));
  }
  return result;
}

// ---------------------------------------------------------------------------------------------
// GGUF

/**
 * Streams a GGUF file: the tensor list first (so the header, with every offset, can be written),
 * then each tensor's data, in any order, one call per tensor, so a 7B model is written without
 * holding more than one tensor in memory. The layout is llama.cpp's ({@link planGguf}: tensors in
 * the given order, each padded to the alignment). Writes go to a temp file beside `path`;
 * `close()` checks every tensor was written, syncs and renames it into place; `abort()` removes it.
 *
 * @example
 * ```ts
 * import { GgufWriter } from "@lvm/weights/fs";
 * import { ggufValue } from "@lvm/weights";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * const w = await GgufWriter.create(path, new Map([["general.name", ggufValue.str("x")]]), [
 *   { name: "a", type: "Q8_0", shape: [2, 32] },
 *   { name: "b", type: "F32", shape: [3] },
 * ]);
 * await w.write("b", new Float32Array([1, 2, 3]));
 * await w.write("a", new Float32Array(64)); // quantized here
 * await w.close();
 * await Deno.remove(path);
 * ```
 */
export class GgufWriter extends PlannedFileWriter<GgufPlannedTensor> {
  private constructor(
    path: string,
    tmp: string,
    file: Deno.FsFile,
    dataStart: number,
    plan: GgufPlannedTensor[],
    /** Total bytes of the file. */
    readonly size: number,
  ) {
    super(path, tmp, file, dataStart, plan);
  }

  /** Creates the temp file and writes the header for `specs` and `metadata`. */
  static async create(
    path: string,
    metadata: GgufMetadata | Record<string, GgufValue>,
    specs: readonly GgufTensorSpec[],
  ): Promise<GgufWriter> {
    const { header, planned, dataBytes } = planGguf(metadata, specs);
    const size = header.byteLength + dataBytes; // zeros beyond the header: the padding
    const { tmp, file } = await PlannedFileWriter.openTemp(path, header, size);
    return new GgufWriter(path, tmp, file, header.byteLength, planned, size);
  }

  /** Writes one tensor: f32 values (encoded as its type) or its stored bytes; each exactly once. */
  async write(name: string, data: Float32Array | Uint8Array): Promise<void> {
    const p = this.planned(name);
    const bytes = encodeGgml(p.type, p.shape, data, `${this.path}: tensor ${JSON.stringify(name)}`);
    await this.put(name, bytes, p.offset);
  }
}

/** One tensor for {@link writeGguf}: its data, or a function that produces it when it is written. */
export interface GgufTensorInput extends GgufTensorSpec {
  data: Float32Array | Uint8Array | (() => Promise<Float32Array | Uint8Array>);
}

/**
 * Writes a GGUF file atomically (temp file + rename), streaming: the specs of `tensors` make the
 * header, then each tensor's data is produced (a function is called only then) and written before
 * the next, so only one tensor is in memory at a time. On any error nothing is left at `path`'s
 * temp file and `path` is untouched.
 *
 * @example
 * ```ts
 * import { writeGguf } from "@lvm/weights/fs";
 * import { ggufValue } from "@lvm/weights";
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * await writeGguf(path, new Map([["general.architecture", ggufValue.str("llama")]]), [
 *   { name: "token_embd.weight", type: "F16", shape: [4, 8], data: new Float32Array(32) },
 *   { name: "output_norm.weight", type: "F32", shape: [8], data: () => Promise.resolve(new Float32Array(8)) },
 * ]);
 * await Deno.remove(path);
 * ```
 */
export async function writeGguf(
  path: string,
  metadata: GgufMetadata | Record<string, GgufValue>,
  tensors: Iterable<GgufTensorInput>,
): Promise<void> {
  const list = [...tensors];
  const w = await GgufWriter.create(path, metadata, list);
  try {
    for (const t of list) {
      await w.write(t.name, typeof t.data === "function" ? await t.data() : t.data);
    }
    await w.close();
  } catch (e) {
    await w.abort();
    throw e;
  }
}

/** Options of {@link convertLlamaToGguf}. */
export interface ConvertGgufOptions {
  /** The type of the matrices; norms stay F32, rows not a multiple of 32 fall back to F16. */
  type: GgmlType;
  /** `general.name` (default "LVM"). */
  name?: string;
  /** Called after each tensor is written (progress). */
  onTensor?: (t: LlamaGgufTensor, index: number, total: number) => void;
}

/** What {@link convertLlamaToGguf} wrote. */
export interface ConvertGgufResult {
  file: string;
  type: GgmlType;
  /** Tensors written. */
  tensors: number;
  /** Size of the file. */
  bytes: number;
  /** Tensors stored in another type than asked, and why. */
  notes: string[];
  /** Tensors of the checkpoint left out, and why. */
  skipped: { name: string; why: string }[];
}

/**
 * Converts a Hugging Face LLaMA (a folder with config.json and any weights {@link openWeights}
 * opens; or a LLaMA `.gguf`, re-typed) into a GGUF at `out` that llama.cpp loads: llama.cpp names
 * and metadata, q/k rows permuted, matrices as `options.type` ({@link planLlamaGguf}). Reads,
 * encodes and writes one tensor at a time; the file appears atomically. Tensors already stored
 * in the wanted type in a source GGUF are copied block for block.
 */
export async function convertLlamaToGguf(
  model: string,
  out: string,
  options: ConvertGgufOptions,
): Promise<ConvertGgufResult> {
  let config: Record<string, unknown>;
  let configPath = model;
  const source = await openWeights(model);
  try {
    if (source instanceof GgufLlamaSource) config = source.config();
    else {
      const st = await Deno.stat(model);
      configPath = join(st.isFile ? dirname(model) : model, "config.json");
      let text: string;
      try {
        text = await Deno.readTextFile(configPath);
      } catch (e) {
        throw new Error(
          `${configPath}: cannot read (${(e as Error).message}); a model folder needs config.json`,
          { cause: e },
        );
      }
      try {
        config = JSON.parse(text);
      } catch (e) {
        throw new SyntaxError(`${configPath}: not valid JSON: ${(e as Error).message}`);
      }
      if (!config || typeof config !== "object" || Array.isArray(config)) {
        throw new TypeError(`${configPath}: expected a JSON object`);
      }
    }
    const shape = llamaShapeFromHf(config, configPath);
    const plan = planLlamaGguf(
      shape,
      source.names().map((name) => ({ name, shape: source.info(name).shape })),
      options.type,
      { name: options.name, source: source.path },
    );
    const w = await GgufWriter.create(out, plan.metadata, plan.tensors);
    try {
      for (let i = 0; i < plan.tensors.length; i++) {
        const t = plan.tensors[i];
        await w.write(t.name, await tensorBytes(source, t));
        options.onTensor?.(t, i, plan.tensors.length);
      }
      await w.close();
    } catch (e) {
      await w.abort();
      throw e;
    }
    return {
      file: out,
      type: options.type,
      tensors: plan.tensors.length,
      bytes: w.size,
      notes: plan.tensors.filter((t) => t.note).map((t) => `${t.hfName}: ${t.note}`),
      skipped: plan.skipped,
    };
  } finally {
    source.close();
  }
}

/** The stored bytes of planned tensor `t` from `source` (blocks copied when already that type). */
async function tensorBytes(source: TensorSource, t: LlamaGgufTensor): Promise<Uint8Array> {
  if (source instanceof GgufLlamaSource && source.ggmlType(t.hfName) === t.type) {
    const raw = await source.rawTensor(t.hfName); // HF row order: permute q/k back
    if (t.heads === undefined) return raw.bytes;
    const rowBytes = raw.bytes.byteLength / t.shape[0];
    return reorderRows(raw.bytes, rowBytes, llamaQkRowOrder(t.shape[0], t.heads));
  }
  return encodeLlamaTensor(t, await source.readF32(t.hfName));
}
