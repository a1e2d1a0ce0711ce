/**
 * The file-system side of @lvm/weights (Deno): open weight files and folders, write safetensors
 * files atomically. The parsing lives in the main module and reads through a {@link ByteSource};
 * here {@link FileSource} is that source over a file.
 *
 * - {@link SafetensorsFile}`.open(path)`, {@link TorchBinFile}`.open(path)`: one file.
 * - {@link openShardedCheckpoint}: an `*.index.json` and its shards.
 * - {@link openWeights}: the one way to open "the weights" of a file or folder (safetensors, torch
 *   pickles, sharded either way); {@link openCheckpoint}: the same for safetensors only.
 * - {@link SafetensorsWriter}, {@link writeSafetensors}, {@link writeShardedSafetensors}.
 * @module
 */
import { dirname, join } from "node:path";
import { isFile, tempPath } from "@lvm/util/fs";
import type { ByteSource } from "./byte_source.ts";
import { compareCodePoints } from "./_code_points.ts";
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
   * Reads up to `length` bytes at `offset` into a new buffer; returns fewer only at end of file
   * (callers decide whether that is truncation).
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    const run = async () => {
      if (this.#closed) throw new Error(`${this.path}: read after close`);
      const out = new Uint8Array(length);
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
 * `.pth`, `.ckpt`), an `*.index.json` of shards of either, or a directory holding one of
 * `options.files` (by preference; default `model.safetensors`, `model.safetensors.index.json`,
 * `pytorch_model.bin`, `pytorch_model.bin.index.json`). The one way every loader of this
 * repository opens a weights folder.
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
    p.endsWith(".json")
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

// ---------------------------------------------------------------------------------------------
// Writing

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
export class SafetensorsWriter {
  readonly #plan: Map<string, PlannedTensor>;
  readonly #written = new Set<string>();
  #done = false;
  private constructor(
    /** The final path. */
    readonly path: string,
    private readonly tmp: string,
    private readonly file: Deno.FsFile,
    private readonly dataStart: number,
    plan: PlannedTensor[],
  ) {
    this.#plan = new Map(plan.map((p) => [p.name, p]));
  }

  /** Creates the temp file and writes the header for `specs` (+ optional string `metadata`). */
  static async create(
    path: string,
    specs: readonly TensorSpec[],
    metadata?: Record<string, string>,
  ): Promise<SafetensorsWriter> {
    const { header, planned, dataBytes } = planSafetensors(specs, metadata);
    const tmp = tempPath(path);
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      await file.truncate(header.byteLength + dataBytes);
      await writeAll(file, header, 0);
    } catch (e) {
      file.close();
      await Deno.remove(tmp).catch(() => {});
      throw e;
    }
    return new SafetensorsWriter(path, tmp, file, header.byteLength, planned);
  }

  /** Tensor names in file layout order (writing in this order is sequential I/O). */
  get order(): string[] {
    return [...this.#plan.keys()];
  }

  /** Writes one tensor's data (see {@link TensorEntry.data}); each tensor exactly once. */
  async write(name: string, data: TensorData): Promise<void> {
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
    const bytes = encodeTensor(name, { dtype: p.dtype, shape: p.shape, data });
    this.#written.add(name);
    await writeAll(this.file, bytes, this.dataStart + p.begin);
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
