/**
 * GGUF files from bytes (llama.cpp's format): parse the header (metadata and tensor infos) from a
 * {@link ByteSource}, read one tensor at a time (raw, or converted/dequantized to f32), and lay out
 * or encode files. No file system here: `@lvm/weights/fs` opens (`GgufFile.open`) and writes
 * (`GgufWriter`, `writeGguf`) files, streaming one tensor at a time.
 *
 * Format (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md), little-endian:
 * ```
 * "GGUF"  u32 version (2 or 3)  u64 tensor_count  u64 kv_count
 * kv_count x  { string key, u32 value_type, value }
 * tensor_count x { string name, u32 n_dims, u64 dims[n_dims], u32 ggml_type, u64 offset }
 * padding to `general.alignment` (default 32), then the data section
 * ```
 * A string is a u64 byte length + UTF-8; an array is a u32 item type + u64 count + the items.
 * `dims[0]` (ggml's `ne[0]`) varies fastest: it is the row length, so a row-major shape is `dims`
 * reversed (an HF `[out, in]` Linear weight has dims `[in, out]`). `offset` is relative to the data
 * section and a multiple of the alignment. Block-quantized rows (Q8_0, Q4_0: {@link QK} = 32 values
 * per block) need a row length that is a multiple of 32.
 *
 * What llama.cpp's loader (gguf.cpp) additionally insists on, and so every file written here does:
 * tensors in the order of their infos, each one's data at the running offset, padded to the
 * alignment (the last one too); names under 64 bytes; `general.alignment` a UINT32 power of two.
 * The reader accepts any aligned, non-overlapping layout.
 * @module
 */
import { type ByteSource, intoBuffer, MemorySource } from "./byte_source.ts";
import { fromF32, toF32, WeightsFileError } from "./safetensors.ts";
import { BLOCK_BYTES, dequantize, QK, quantize } from "./quant.ts";

/** An error about a GGUF file: names the file and, where relevant, the tensor. */
export class GgufError extends WeightsFileError {
  override name = "GgufError";
}

// ---------------------------------------------------------------------------------------------
// Value and tensor types

/** GGUF metadata value types, index = type id (UINT8 = 0 ... FLOAT64 = 12). */
export const GGUF_VALUE_TYPES = [
  "UINT8",
  "INT8",
  "UINT16",
  "INT16",
  "UINT32",
  "INT32",
  "FLOAT32",
  "BOOL",
  "STRING",
  "ARRAY",
  "UINT64",
  "INT64",
  "FLOAT64",
] as const;

/** A GGUF metadata value type name. */
export type GgufValueType = (typeof GGUF_VALUE_TYPES)[number];

/** The numeric types held as JS numbers (64-bit integers are bigints). */
export type GgufNumberType =
  | "UINT8"
  | "INT8"
  | "UINT16"
  | "INT16"
  | "UINT32"
  | "INT32"
  | "FLOAT32"
  | "FLOAT64";

/** The items of a GGUF array: a typed array for numbers, plain arrays otherwise. */
export type GgufArrayItems =
  | Uint8Array
  | Int8Array
  | Uint16Array
  | Int16Array
  | Uint32Array
  | Int32Array
  | Float32Array
  | Float64Array
  | BigUint64Array
  | BigInt64Array
  | boolean[]
  | string[]
  | GgufArray[];

/** A GGUF array value: its item type and items (nested arrays are arrays of {@link GgufArray}). */
export interface GgufArray {
  itemType: GgufValueType;
  items: GgufArrayItems;
}

/** One typed GGUF metadata value. */
export type GgufValue =
  | { type: GgufNumberType; value: number }
  | { type: "UINT64" | "INT64"; value: bigint }
  | { type: "BOOL"; value: boolean }
  | { type: "STRING"; value: string }
  | { type: "ARRAY"; value: GgufArray };

/** GGUF metadata: key -> typed value, in file order. */
export type GgufMetadata = Map<string, GgufValue>;

/**
 * Constructors of typed {@link GgufValue}s, for writing metadata.
 *
 * @example
 * ```ts
 * import { ggufValue } from "@lvm/weights";
 * const md = new Map([
 *   ["general.architecture", ggufValue.str("llama")],
 *   ["llama.block_count", ggufValue.u32(2)],
 *   ["llama.rope.freq_base", ggufValue.f32(10000)],
 *   ["tokenizer.ggml.scores", ggufValue.array("FLOAT32", new Float32Array([0, -1]))],
 * ]);
 * console.log(md.get("llama.block_count")); // { type: "UINT32", value: 2 }
 * ```
 */
export const ggufValue = {
  u8: (value: number): GgufValue => ({ type: "UINT8", value }),
  i8: (value: number): GgufValue => ({ type: "INT8", value }),
  u16: (value: number): GgufValue => ({ type: "UINT16", value }),
  i16: (value: number): GgufValue => ({ type: "INT16", value }),
  u32: (value: number): GgufValue => ({ type: "UINT32", value }),
  i32: (value: number): GgufValue => ({ type: "INT32", value }),
  f32: (value: number): GgufValue => ({ type: "FLOAT32", value }),
  f64: (value: number): GgufValue => ({ type: "FLOAT64", value }),
  u64: (value: bigint | number): GgufValue => ({ type: "UINT64", value: BigInt(value) }),
  i64: (value: bigint | number): GgufValue => ({ type: "INT64", value: BigInt(value) }),
  bool: (value: boolean): GgufValue => ({ type: "BOOL", value }),
  str: (value: string): GgufValue => ({ type: "STRING", value }),
  array: (itemType: GgufValueType, items: GgufArrayItems): GgufValue => ({
    type: "ARRAY",
    value: { itemType, items },
  }),
};

/** The ggml tensor types this package reads and writes. */
export type GgmlType = "F32" | "F16" | "Q4_0" | "Q8_0" | "BF16";

/** ggml type ids of the supported types (ggml.h `enum ggml_type`). */
export const GGML_TYPE_ID: Readonly<Record<GgmlType, number>> = Object.freeze({
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q8_0: 8,
  BF16: 30,
});

/** Every ggml type id known (supported or not), for messages; ids 4, 5, 31-33, 36-38 were removed. */
const GGML_TYPE_NAMES: Readonly<Record<number, string>> = Object.freeze({
  0: "F32",
  1: "F16",
  2: "Q4_0",
  3: "Q4_1",
  6: "Q5_0",
  7: "Q5_1",
  8: "Q8_0",
  9: "Q8_1",
  10: "Q2_K",
  11: "Q3_K",
  12: "Q4_K",
  13: "Q5_K",
  14: "Q6_K",
  15: "Q8_K",
  16: "IQ2_XXS",
  17: "IQ2_XS",
  18: "IQ3_XXS",
  19: "IQ1_S",
  20: "IQ4_NL",
  21: "IQ3_S",
  22: "IQ2_S",
  23: "IQ4_XS",
  24: "I8",
  25: "I16",
  26: "I32",
  27: "I64",
  28: "F64",
  29: "IQ1_M",
  30: "BF16",
  34: "TQ1_0",
  35: "TQ2_0",
  39: "MXFP4",
});

const TYPE_BY_ID = new Map<number, GgmlType>(
  Object.entries(GGML_TYPE_ID).map(([k, v]) => [v, k as GgmlType]),
);

/** Whether `t` names a supported {@link GgmlType}. */
export function isGgmlType(t: unknown): t is GgmlType {
  return typeof t === "string" && Object.hasOwn(GGML_TYPE_ID, t);
}

/** Values per block and bytes per block of each type (1 value for the float types). */
export const GGML_BLOCK: Readonly<Record<GgmlType, { values: number; bytes: number }>> = Object
  .freeze({
    F32: { values: 1, bytes: 4 },
    F16: { values: 1, bytes: 2 },
    BF16: { values: 1, bytes: 2 },
    Q4_0: { values: QK, bytes: BLOCK_BYTES.Q4_0 },
    Q8_0: { values: QK, bytes: BLOCK_BYTES.Q8_0 },
  });

/** Number of elements of a shape, checking each dimension. */
function numelOf(shape: readonly number[], what: () => string): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new RangeError(`${what()}: shape [${shape}] has a dimension that is not a count`);
    }
    n *= d;
  }
  if (!Number.isSafeInteger(n)) throw new RangeError(`${what()}: shape [${shape}] is too large`);
  return n;
}

/**
 * Bytes of a tensor of `type` and row-major `shape` (the last dimension is the row; quantized
 * types need it to be a multiple of 32). Throws a RangeError naming `label` otherwise.
 */
export function ggmlBytes(type: GgmlType, shape: readonly number[], label = "tensor"): number {
  if (!isGgmlType(type)) throw new TypeError(`${label}: unknown ggml type ${JSON.stringify(type)}`);
  const n = numelOf(shape, () => label);
  const { values, bytes } = GGML_BLOCK[type];
  const row = shape.length ? shape[shape.length - 1] : 1;
  if (row % values !== 0) {
    throw new RangeError(
      `${label}: ${type} needs rows of a multiple of ${values} values, the shape [${shape}] has rows of ${row}`,
    );
  }
  return (n / values) * bytes;
}

/**
 * Encodes a tensor's f32 values as `type` (F16/BF16 round to nearest even, Q8_0/Q4_0 are
 * llama.cpp's reference quantizers). A Uint8Array is taken as the stored bytes and only checked.
 */
export function encodeGgml(
  type: GgmlType,
  shape: readonly number[],
  data: Float32Array | Uint8Array,
  label = "tensor",
): Uint8Array {
  const bytes = ggmlBytes(type, shape, label);
  const n = numelOf(shape, () => label);
  if (data instanceof Uint8Array) {
    if (data.byteLength !== bytes) {
      throw new RangeError(
        `${label}: ${data.byteLength} bytes given for ${type} [${shape}], expected ${bytes}`,
      );
    }
    return data;
  }
  if (data.length !== n) {
    throw new RangeError(`${label}: ${data.length} values given for [${shape}], expected ${n}`);
  }
  return type === "Q8_0" || type === "Q4_0" ? quantize(type, data) : fromF32(type, data, label);
}

/** Stored bytes of `type` (as read from a file) to f32 values, into `out` when given. */
export function decodeGgml(
  type: GgmlType,
  bytes: Uint8Array,
  n: number,
  label = "tensor",
  out?: Float32Array,
): Float32Array {
  if (out && out.length !== n) {
    throw new RangeError(`${label}: output holds ${out.length} floats, the tensor has ${n}`);
  }
  if (type === "Q8_0" || type === "Q4_0") return dequantize(type, bytes, n, out);
  return toF32(type, bytes, label, out);
}

// ---------------------------------------------------------------------------------------------
// Tensor infos

/** One tensor of a GGUF file. */
export interface GgufTensorInfo {
  name: string;
  type: GgmlType;
  /** Row-major shape (`dims` reversed): `[rows, cols]` for a matrix. */
  shape: number[];
  /** ggml's `ne`: `dims[0]` is the row length (fastest varying). */
  dims: number[];
  /** Offset in the data section, as stored. */
  offset: number;
  /** Offset of the data in the file. */
  byteOffset: number;
  /** Bytes of the data (without padding). */
  byteLength: number;
}

/** A parsed GGUF header. */
export interface GgufHeader {
  version: number;
  metadata: GgufMetadata;
  /** Tensors in header order. */
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Byte offset of the data section (the header's end rounded up to the alignment). */
  dataStart: number;
}

/** The alignment of the data section when `general.alignment` is absent. */
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** The longest tensor name ggml stores (GGML_MAX_NAME 64, with its terminating 0). */
export const GGUF_MAX_NAME_BYTES = 63;

/** Most dimensions of a ggml tensor (GGML_MAX_DIMS). */
const MAX_DIMS = 4;

const MAGIC = [0x47, 0x47, 0x55, 0x46]; // "GGUF"

/** Smallest encoded size of one value of each type (arrays and strings: their length fields). */
const MIN_VALUE_BYTES: Record<GgufValueType, number> = {
  UINT8: 1,
  INT8: 1,
  UINT16: 2,
  INT16: 2,
  UINT32: 4,
  INT32: 4,
  FLOAT32: 4,
  BOOL: 1,
  STRING: 8,
  ARRAY: 12,
  UINT64: 8,
  INT64: 8,
  FLOAT64: 8,
};

/** The typed array of each numeric item type. */
const NUMERIC_ITEMS: Partial<Record<GgufValueType, new (b: ArrayBuffer) => GgufArrayItems>> = {
  UINT8: Uint8Array,
  INT8: Int8Array,
  UINT16: Uint16Array,
  INT16: Int16Array,
  UINT32: Uint32Array,
  INT32: Int32Array,
  FLOAT32: Float32Array,
  FLOAT64: Float64Array,
  UINT64: BigUint64Array,
  INT64: BigInt64Array,
};

// ---------------------------------------------------------------------------------------------
// Reading the header

/** The parse ran off the bytes read so far: read up to `end` and parse again. */
class NeedMore {
  constructor(readonly end: number) {}
}

/** A read position over the first bytes of a source whose full size is known. */
class Cursor {
  pos = 0;
  readonly view: DataView;
  readonly #dec = new TextDecoder("utf-8");
  constructor(
    readonly bytes: Uint8Array,
    readonly size: number,
    readonly fail: (detail: string, tensor?: string) => never,
  ) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Ensures `n` bytes at the position: the file has them, and they have been read. */
  need(n: number, what: string, tensor?: string): void {
    if (this.pos + n > this.size) {
      this.fail(
        `truncated: ${what} needs ${n} bytes at offset ${this.pos}, the file has ${this.size}`,
        tensor,
      );
    }
    if (this.pos + n > this.bytes.byteLength) throw new NeedMore(this.pos + n);
  }

  u32(what: string, tensor?: string): number {
    this.need(4, what, tensor);
    const v = this.view.getUint32(this.pos, true);
    this.pos += 4;
    return v;
  }

  u64(what: string, tensor?: string): bigint {
    this.need(8, what, tensor);
    const v = this.view.getBigUint64(this.pos, true);
    this.pos += 8;
    return v;
  }

  /** A u64 that must be a safe integer (a count, size or offset). */
  count(what: string, tensor?: string): number {
    const v = this.u64(what, tensor);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`${what} ${v} is absurd`, tensor);
    return Number(v);
  }

  string(what: string, tensor?: string): string {
    const n = this.count(`the length of ${what}`, tensor);
    if (this.pos + n > this.size) {
      this.fail(
        `truncated: ${what} of ${n} bytes at offset ${this.pos} goes past the end of the ${this.size}-byte file`,
        tensor,
      );
    }
    this.need(n, what, tensor);
    const s = this.#dec.decode(this.bytes.subarray(this.pos, this.pos + n));
    this.pos += n;
    return s;
  }

  /** Checks that `count` items of at least `min` bytes each fit in what remains of the file. */
  fits(count: number, min: number, what: string): void {
    if (count * min > this.size - this.pos) {
      this.fail(
        `${what} ${count} is absurd: even at ${min} bytes each they need ${count * min} bytes, ${
          this.size - this.pos
        } remain after offset ${this.pos} (truncated or corrupt)`,
      );
    }
  }

  typeId(what: string): GgufValueType {
    const at = this.pos;
    const id = this.u32(what);
    const t = GGUF_VALUE_TYPES[id];
    if (t === undefined) {
      this.fail(`${what} at offset ${at} is ${id}, not a GGUF value type (0..12)`);
    }
    return t;
  }

  value(type: GgufValueType, what: string): GgufValue {
    const v = this.view;
    const at = () => {
      const p = this.pos;
      this.need(MIN_VALUE_BYTES[type], what);
      this.pos += MIN_VALUE_BYTES[type];
      return p;
    };
    switch (type) {
      case "UINT8":
        return { type, value: v.getUint8(at()) };
      case "INT8":
        return { type, value: v.getInt8(at()) };
      case "UINT16":
        return { type, value: v.getUint16(at(), true) };
      case "INT16":
        return { type, value: v.getInt16(at(), true) };
      case "UINT32":
        return { type, value: v.getUint32(at(), true) };
      case "INT32":
        return { type, value: v.getInt32(at(), true) };
      case "FLOAT32":
        return { type, value: v.getFloat32(at(), true) };
      case "FLOAT64":
        return { type, value: v.getFloat64(at(), true) };
      case "UINT64":
        return { type, value: v.getBigUint64(at(), true) };
      case "INT64":
        return { type, value: v.getBigInt64(at(), true) };
      case "BOOL": {
        const p = at();
        const b = v.getUint8(p);
        if (b > 1) this.fail(`${what}: BOOL at offset ${p} is byte ${b}, expected 0 or 1`);
        return { type, value: b === 1 };
      }
      case "STRING":
        return { type, value: this.string(what) };
      case "ARRAY":
        return { type, value: this.array(what) };
    }
  }

  array(what: string): GgufArray {
    const itemType = this.typeId(`the item type of ${what}`);
    const n = this.count(`the length of ${what}`);
    this.fits(n, MIN_VALUE_BYTES[itemType], `the length of ${what}`);
    const Ctor = NUMERIC_ITEMS[itemType];
    if (Ctor) {
      const size = MIN_VALUE_BYTES[itemType];
      this.need(n * size, what);
      const copy = this.bytes.slice(this.pos, this.pos + n * size); // aligned for the typed array
      this.pos += n * size;
      return { itemType, items: new Ctor(copy.buffer) };
    }
    const items: (boolean | string | GgufArray)[] = [];
    for (let i = 0; i < n; i++) items.push(this.value(itemType, `${what}[${i}]`).value as never);
    return { itemType, items: items as GgufArrayItems };
  }
}

/** Parses a GGUF header from its first bytes (throws {@link NeedMore} when they are too few). */
function parseHeader(
  bytes: Uint8Array,
  size: number,
  fail: (detail: string, tensor?: string) => never,
): GgufHeader {
  const c = new Cursor(bytes, size, fail);
  c.need(4, "the magic");
  const magic = bytes.subarray(0, 4);
  if (!MAGIC.every((b, i) => magic[i] === b)) {
    const hex = [...magic].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    fail(`not a GGUF file: it starts with ${hex}, expected "GGUF" (47 47 55 46)`);
  }
  c.pos = 4;
  const version = c.u32("the version");
  if (version !== 2 && version !== 3) {
    // a big-endian file's version 3 reads as 0x03000000 here
    const bigEndian = (version & 0xffffff) === 0 && (version >>> 24 === 2 || version >>> 24 === 3);
    fail(
      version === 1
        ? "GGUF version 1 (32-bit counts, 2023) is not supported; expected 2 or 3"
        : bigEndian
        ? `GGUF version ${version} (${
          version >>> 24
        } byte-swapped): a big-endian file, which is not supported`
        : `unsupported GGUF version ${version}; expected 2 or 3`,
    );
  }
  const nTensors = c.count("the tensor count");
  const nKv = c.count("the metadata count");
  // the smallest kv is an empty key (8) + type (4) + a byte; the smallest tensor info 8+4+4+8
  c.fits(nKv, 13, "the metadata count");
  c.fits(nTensors, 24, "the tensor count");
  const metadata: GgufMetadata = new Map();
  for (let i = 0; i < nKv; i++) {
    const key = c.string(`metadata key ${i}`);
    if (metadata.has(key)) fail(`metadata key ${JSON.stringify(key)} appears twice`);
    const type = c.typeId(`the type of metadata ${JSON.stringify(key)}`);
    metadata.set(key, c.value(type, `metadata ${JSON.stringify(key)}`));
  }
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = metadata.get("general.alignment");
  if (al !== undefined) {
    if (al.type !== "UINT32" || al.value === 0 || (al.value & (al.value - 1)) !== 0) {
      fail(
        `general.alignment must be a UINT32 power of two, found ${al.type} ${
          al.type === "ARRAY" ? "[...]" : String(al.value)
        }`,
      );
    }
    alignment = al.value as number;
  }
  const infos: Omit<GgufTensorInfo, "byteOffset">[] = [];
  const seen = new Set<string>();
  for (let i = 0; i < nTensors; i++) {
    const name = c.string(`the name of tensor ${i}`);
    if (seen.has(name)) fail("the tensor name appears twice", name);
    seen.add(name);
    const nDims = c.u32("n_dims", name);
    if (nDims > MAX_DIMS) fail(`n_dims is ${nDims}, ggml tensors have at most ${MAX_DIMS}`, name);
    const dims: number[] = [];
    for (let d = 0; d < nDims; d++) dims.push(c.count(`dims[${d}]`, name));
    const typeAt = c.pos;
    const id = c.u32("the ggml type", name);
    const type = TYPE_BY_ID.get(id);
    if (type === undefined) {
      const known = GGML_TYPE_NAMES[id];
      fail(
        known
          ? `ggml type ${known} (${id}) is not supported; supported: ${
            Object.entries(GGML_TYPE_ID).map(([k, v]) => `${k} (${v})`).join(", ")
          }`
          : `unknown ggml type id ${id} at offset ${typeAt}`,
        name,
      );
    }
    const offset = c.count("the data offset", name);
    const shape = [...dims].reverse();
    let byteLength = 0;
    try {
      byteLength = ggmlBytes(type, shape, "shape");
    } catch (e) {
      fail((e as Error).message, name);
    }
    infos.push({ name, type, shape, dims, offset, byteLength });
  }
  const dataStart = Math.ceil(c.pos / alignment) * alignment;
  const tensors: GgufTensorInfo[] = infos.map((t) => {
    if (t.offset % alignment !== 0) {
      fail(`data offset ${t.offset} is not a multiple of the alignment ${alignment}`, t.name);
    }
    const byteOffset = dataStart + t.offset;
    if (byteOffset + t.byteLength > size) {
      fail(
        `data [${byteOffset}, ${
          byteOffset + t.byteLength
        }) (${t.type} [${t.shape}]) goes past the end of the ${size}-byte file (truncated?)`,
        t.name,
      );
    }
    return { ...t, byteOffset };
  });
  const sorted = [...tensors].filter((t) => t.byteLength > 0).sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < sorted.length; i++) {
    const a = sorted[i - 1], b = sorted[i];
    if (b.offset < a.offset + a.byteLength) {
      fail(
        `data at offset ${b.offset} overlaps that of ${JSON.stringify(a.name)} [${a.offset}, ${
          a.offset + a.byteLength
        })`,
        b.name,
      );
    }
  }
  return { version, metadata, tensors, alignment, dataStart };
}

/** Reads and parses the header of `source`, reading more of it as the parse needs. */
async function readHeader(source: ByteSource): Promise<GgufHeader> {
  const fail = (detail: string, tensor?: string): never => {
    throw new GgufError(source.path, detail, tensor);
  };
  let bytes = await source.read(0, Math.min(source.size, 1 << 20));
  for (;;) {
    try {
      return parseHeader(bytes, source.size, fail);
    } catch (e) {
      if (!(e instanceof NeedMore)) throw e;
      const want = Math.min(source.size, Math.max(2 * bytes.byteLength, e.end + (1 << 16)));
      const more = await source.read(bytes.byteLength, want - bytes.byteLength);
      if (more.byteLength === 0) fail(`could not read past byte ${bytes.byteLength}`);
      const grown = new Uint8Array(bytes.byteLength + more.byteLength);
      grown.set(bytes);
      grown.set(more, bytes.byteLength);
      bytes = grown;
    }
  }
}

/**
 * The plain JS value of a metadata entry: a number, bigint, boolean or string, or an array's items
 * (a typed array for numbers).
 */
export function ggufPlain(v: GgufValue): number | bigint | boolean | string | GgufArrayItems {
  return v.type === "ARRAY" ? v.value.items : v.value;
}

/**
 * GGUF tensors read from a {@link ByteSource}: {@link GgufReader.fromSource} reads and validates
 * only the header; each `readRaw` then reads one tensor's bytes (so multi-GB files are fine).
 * Names and shapes are the file's own (llama.cpp's `blk.0.attn_q.weight`, row-major shapes);
 * `GgufLlamaSource` (gguf_llama.ts) presents a LLaMA file under Hugging Face names.
 * `@lvm/weights/fs`'s `GgufFile.open(path)` is this over a file.
 *
 * @example
 * ```ts
 * import { encodeGguf, ggufValue, GgufReader } from "@lvm/weights";
 * const bytes = encodeGguf(new Map([["general.name", ggufValue.str("tiny")]]), [
 *   { name: "w", type: "Q8_0", shape: [2, 32], data: new Float32Array(64).fill(0.75) },
 * ]);
 * const g = await GgufReader.fromBytes(bytes, "tiny.gguf");
 * // 0.75 -> scale 0.75/127 rounded to f16, q = 127: back as 0.7499542236328125
 * console.log(g.get("general.name"), g.info("w").type, (await g.readF32("w"))[0]); // tiny Q8_0 0.7499542236328125
 * g.close();
 * ```
 */
export class GgufReader {
  /** The format version (2 or 3). */
  readonly version: number;
  /** Every metadata key/value, typed, in file order. */
  readonly metadata: GgufMetadata;
  /** Alignment of the data section and of each tensor's offset. */
  readonly alignment: number;
  /** Byte offset of the data section. */
  readonly dataStart: number;
  readonly #tensors: Map<string, GgufTensorInfo>;

  protected constructor(protected readonly file: ByteSource, header: GgufHeader) {
    this.version = header.version;
    this.metadata = header.metadata;
    this.alignment = header.alignment;
    this.dataStart = header.dataStart;
    this.#tensors = new Map(header.tensors.map((t) => [t.name, t]));
  }

  /** The file (or URL) the tensors come from. */
  get path(): string {
    return this.file.path;
  }

  /**
   * Reads and validates the header of `source`: magic, version 2 or 3, counts that fit the file,
   * known value and tensor types, no duplicate keys or names, at most 4 dims, quantized rows of a
   * multiple of 32, offsets aligned, data inside the file and not overlapping. Any failure is a
   * {@link GgufError} naming the source (and tensor); `source` is then closed.
   */
  protected static async parse(source: ByteSource): Promise<GgufHeader> {
    try {
      return await readHeader(source);
    } catch (e) {
      source.close();
      throw e;
    }
  }

  /** The tensors of `source` (see {@link GgufReader.parse} for what is checked). */
  static async fromSource(source: ByteSource): Promise<GgufReader> {
    return new GgufReader(source, await GgufReader.parse(source));
  }

  /** The tensors of a whole GGUF file in memory (`name` for messages). */
  static fromBytes(bytes: Uint8Array, name = "memory"): Promise<GgufReader> {
    return GgufReader.fromSource(new MemorySource(bytes, name));
  }

  /** Tensor infos in header order. */
  get tensors(): GgufTensorInfo[] {
    return [...this.#tensors.values()].map((t) => ({
      ...t,
      shape: [...t.shape],
      dims: [...t.dims],
    }));
  }

  /** Tensor names in header order. */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  /** Type, shape and place of `name`; a missing tensor is a {@link GgufError}. */
  info(name: string): GgufTensorInfo {
    const t = this.#tensors.get(name);
    if (!t) throw this.#missing(name);
    return { ...t, shape: [...t.shape], dims: [...t.dims] };
  }

  /** The plain value of metadata `key` (see {@link ggufPlain}), undefined when absent. */
  get(key: string): ReturnType<typeof ggufPlain> | undefined {
    const v = this.metadata.get(key);
    return v === undefined ? undefined : ggufPlain(v);
  }

  /**
   * The tensor's stored bytes (quantized blocks as in the file): a new array, or the start of
   * `out` (at least the tensor's byte size) when given.
   */
  async readRaw(name: string, out?: Uint8Array): Promise<Uint8Array> {
    const t = this.#tensors.get(name);
    if (!t) throw this.#missing(name);
    if (this.file.closed) throw new GgufError(this.path, "read after close()", name);
    if (out) intoBuffer(out, t.byteLength, `${this.path}: tensor "${name}"`);
    const bytes = await this.file.read(t.byteOffset, t.byteLength, out);
    if (bytes.byteLength !== t.byteLength) {
      throw new GgufError(
        this.path,
        `file truncated: data ends at byte ${
          t.byteOffset + bytes.byteLength
        }, expected ${t.byteLength} bytes from ${t.byteOffset}`,
        name,
      );
    }
    return bytes;
  }

  /** The tensor as f32 (F16/BF16 widened exactly, Q8_0/Q4_0 dequantized), into `out` if given. */
  async readF32(name: string, out?: Float32Array): Promise<Float32Array> {
    const t = this.info(name);
    const n = t.shape.reduce((a, b) => a * b, 1);
    return decodeGgml(t.type, await this.readRaw(name), n, `${this.path}: tensor "${name}"`, out);
  }

  /** Closes the source; reads after it fail. */
  close(): void {
    this.file.close();
  }

  #missing(name: string): GgufError {
    const names = this.names();
    return new GgufError(
      this.path,
      `no such tensor (the file has ${names.length}${names.length ? `, e.g. ${names[0]}` : ""})`,
      name,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Name, type and row-major shape of a tensor to write. */
export interface GgufTensorSpec {
  name: string;
  type: GgmlType;
  shape: readonly number[];
}

/** A tensor's place in a planned file. */
export interface GgufPlannedTensor extends GgufTensorSpec {
  /** Bytes of the data (without padding). */
  byteLength: number;
  /** Offset in the data section. */
  offset: number;
}

/** A file's layout: the header bytes (padded to the data section), each tensor's place. */
export interface GgufPlan {
  /** Everything before the data section, padding included. */
  header: Uint8Array;
  planned: GgufPlannedTensor[];
  alignment: number;
  /** Bytes of the data section: every tensor padded to the alignment. */
  dataBytes: number;
}

/** A growing little-endian byte buffer. */
class ByteWriter {
  #buf = new Uint8Array(1024);
  #view = new DataView(this.#buf.buffer);
  length = 0;
  readonly #enc = new TextEncoder();

  #room(n: number): number {
    if (this.length + n > this.#buf.byteLength) {
      const grown = new Uint8Array(Math.max(2 * this.#buf.byteLength, this.length + n));
      grown.set(this.#buf.subarray(0, this.length));
      this.#buf = grown;
      this.#view = new DataView(grown.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }

  u32(v: number): void {
    const at = this.#room(4);
    this.#view.setUint32(at, v, true);
  }

  u64(v: number | bigint): void {
    const at = this.#room(8);
    this.#view.setBigUint64(at, BigInt(v), true);
  }

  bytes(b: Uint8Array): void {
    const at = this.#room(b.byteLength); // may replace #buf: reserve first
    this.#buf.set(b, at);
  }

  string(s: string): void {
    const b = this.#enc.encode(s);
    this.u64(b.byteLength);
    this.bytes(b);
  }

  pad(alignment: number): void {
    this.#room((alignment - (this.length % alignment)) % alignment);
  }

  /** Writes one value of a numeric or BOOL type (range-checked by the caller). */
  scalar(type: GgufValueType, v: number | bigint | boolean): void {
    const at = this.#room(MIN_VALUE_BYTES[type]); // may replace #view: reserve first
    const d = this.#view;
    switch (type) {
      case "UINT8":
        return d.setUint8(at, v as number);
      case "INT8":
        return d.setInt8(at, v as number);
      case "UINT16":
        return d.setUint16(at, v as number, true);
      case "INT16":
        return d.setInt16(at, v as number, true);
      case "UINT32":
        return d.setUint32(at, v as number, true);
      case "INT32":
        return d.setInt32(at, v as number, true);
      case "FLOAT32":
        return d.setFloat32(at, v as number, true);
      case "FLOAT64":
        return d.setFloat64(at, v as number, true);
      case "UINT64":
        return d.setBigUint64(at, v as bigint, true);
      case "INT64":
        return d.setBigInt64(at, v as bigint, true);
      case "BOOL":
        return d.setUint8(at, v ? 1 : 0);
      default:
        throw new TypeError(`${type} is not a scalar type`);
    }
  }

  result(): Uint8Array {
    return this.#buf.slice(0, this.length);
  }
}

const INT_LIMITS: Partial<Record<GgufValueType, [number, number]>> = {
  UINT8: [0, 255],
  INT8: [-128, 127],
  UINT16: [0, 65535],
  INT16: [-32768, 32767],
  UINT32: [0, 4294967295],
  INT32: [-2147483648, 2147483647],
};

/** Writes a value, checking it fits its type; `what` names it in errors. */
function writeValue(w: ByteWriter, v: GgufValue, what: string): void {
  const bad = (detail: string): never => {
    throw new TypeError(`${what}: ${detail}`);
  };
  if (!v || typeof v !== "object" || !GGUF_VALUE_TYPES.includes(v.type)) {
    bad(`not a typed GGUF value (found type ${JSON.stringify((v as GgufValue)?.type)})`);
  }
  const t = v.type;
  const x = v.value;
  if (t === "STRING") {
    if (typeof x !== "string") bad(`STRING value is ${typeof x}`);
    return w.string(x as string);
  }
  if (t === "ARRAY") {
    const a = x as GgufArray;
    if (!a || !GGUF_VALUE_TYPES.includes(a.itemType)) {
      bad(`ARRAY needs {itemType, items}, found item type ${JSON.stringify(a?.itemType)}`);
    }
    const Typed = NUMERIC_ITEMS[a.itemType];
    if (Typed && !(a.items instanceof Typed)) bad(`${a.itemType} items must be a ${Typed.name}`);
    if (!Typed && !Array.isArray(a.items)) bad(`${a.itemType} items must be an array`);
    w.u32(GGUF_VALUE_TYPES.indexOf(a.itemType));
    w.u64(a.items.length);
    if (Typed) { // a typed array holds only values of its type
      const items = a.items as Uint8Array;
      return w.bytes(new Uint8Array(items.buffer, items.byteOffset, items.byteLength));
    }
    (a.items as unknown[]).forEach((item, i) => {
      const inner = a.itemType === "ARRAY"
        ? { type: "ARRAY", value: item } as GgufValue
        : { type: a.itemType, value: item } as GgufValue;
      writeValue(w, inner, `${what}[${i}]`);
    });
    return;
  }
  if (t === "BOOL") {
    if (typeof x !== "boolean") bad(`BOOL value is ${typeof x}`);
    return w.scalar(t, x as boolean);
  }
  if (t === "UINT64" || t === "INT64") {
    if (typeof x !== "bigint") bad(`${t} value must be a bigint, found ${typeof x}`);
    const ok = t === "UINT64"
      ? (x as bigint) >= 0n && (x as bigint) < 1n << 64n
      : BigInt.asIntN(64, x as bigint) === x;
    if (!ok) bad(`${x} is outside the ${t} range`);
    return w.scalar(t, x as bigint);
  }
  if (typeof x !== "number") bad(`${t} value must be a number, found ${typeof x}`);
  const lim = INT_LIMITS[t];
  if (lim && (!Number.isInteger(x) || (x as number) < lim[0] || (x as number) > lim[1])) {
    bad(`${x} is not a ${t} value`);
  }
  w.scalar(t, x as number);
}

/**
 * Lays out a GGUF v3 file: the header (metadata in the given order, then the tensor infos in the
 * given order, each tensor at the running offset padded to the alignment), as llama.cpp's writer
 * does. The alignment is `general.alignment` when the metadata has it (a UINT32 power of two),
 * else 32. Names must be unique, non-empty and under 64 UTF-8 bytes; shapes 1 to 4 dims; quantized
 * rows a multiple of 32. What every writer (here and in `@lvm/weights/fs`) follows.
 */
export function planGguf(
  metadata: GgufMetadata | Record<string, GgufValue>,
  specs: readonly GgufTensorSpec[],
): GgufPlan {
  const md = metadata instanceof Map ? metadata : new Map(Object.entries(metadata));
  let alignment = GGUF_DEFAULT_ALIGNMENT;
  const al = md.get("general.alignment");
  if (al !== undefined) {
    if (
      al.type !== "UINT32" || !Number.isInteger(al.value) || (al.value as number) <= 0 ||
      ((al.value as number) & ((al.value as number) - 1)) !== 0
    ) {
      throw new RangeError(
        `general.alignment must be a UINT32 power of two, found ${al.type} ${String(al.value)}`,
      );
    }
    alignment = al.value as number;
  }
  const w = new ByteWriter();
  for (const b of MAGIC) w.scalar("UINT8", b);
  w.u32(3);
  w.u64(specs.length);
  w.u64(md.size);
  for (const [key, v] of md) {
    if (typeof key !== "string" || key === "") {
      throw new TypeError(`metadata key ${JSON.stringify(key)} is not a non-empty string`);
    }
    w.string(key);
    if (!v || !GGUF_VALUE_TYPES.includes(v.type)) {
      throw new TypeError(
        `metadata ${JSON.stringify(key)}: not a typed GGUF value (use ggufValue.*)`,
      );
    }
    w.u32(GGUF_VALUE_TYPES.indexOf(v.type));
    writeValue(w, v, `metadata ${JSON.stringify(key)}`);
  }
  const seen = new Set<string>();
  const enc = new TextEncoder();
  let offset = 0;
  const planned = specs.map((s) => {
    const label = `tensor ${JSON.stringify(s.name)}`;
    if (typeof s.name !== "string" || s.name === "") {
      throw new TypeError(`tensor name ${JSON.stringify(s.name)} is not a non-empty string`);
    }
    if (enc.encode(s.name).byteLength > GGUF_MAX_NAME_BYTES) {
      throw new RangeError(
        `${label}: name is over ${GGUF_MAX_NAME_BYTES} bytes, which llama.cpp cannot load`,
      );
    }
    if (seen.has(s.name)) throw new RangeError(`${label} is listed twice`);
    seen.add(s.name);
    if (!isGgmlType(s.type)) {
      throw new TypeError(
        `${label}: unknown ggml type ${JSON.stringify(s.type)}; expected one of ${
          Object.keys(GGML_TYPE_ID).join(", ")
        }`,
      );
    }
    if (!Array.isArray(s.shape) || s.shape.length < 1 || s.shape.length > MAX_DIMS) {
      throw new RangeError(`${label}: shape [${s.shape}] must have 1 to ${MAX_DIMS} dimensions`);
    }
    const byteLength = ggmlBytes(s.type, s.shape, label);
    const p: GgufPlannedTensor = {
      name: s.name,
      type: s.type,
      shape: [...s.shape],
      byteLength,
      offset,
    };
    offset += Math.ceil(byteLength / alignment) * alignment;
    w.string(s.name);
    w.u32(s.shape.length);
    for (let d = s.shape.length - 1; d >= 0; d--) w.u64(s.shape[d]);
    w.u32(GGML_TYPE_ID[s.type]);
    w.u64(p.offset);
    return p;
  });
  w.pad(alignment);
  return { header: w.result(), planned, alignment, dataBytes: offset };
}

/** One tensor to write: f32 values (encoded as `type`) or its stored bytes. */
export interface GgufTensorEntry extends GgufTensorSpec {
  data: Float32Array | Uint8Array;
}

/**
 * A whole GGUF file in memory (small files, tests); `@lvm/weights/fs`'s `writeGguf` streams big
 * ones to disk one tensor at a time. Tensors keep the given order.
 *
 * @example
 * ```ts
 * import { encodeGguf, ggufValue } from "@lvm/weights";
 * const bytes = encodeGguf(new Map([["general.architecture", ggufValue.str("llama")]]), [
 *   { name: "output_norm.weight", type: "F32", shape: [4], data: new Float32Array([1, 1, 1, 1]) },
 * ]);
 * console.log(new TextDecoder().decode(bytes.subarray(0, 4))); // GGUF
 * ```
 */
export function encodeGguf(
  metadata: GgufMetadata | Record<string, GgufValue>,
  tensors: readonly GgufTensorEntry[],
): Uint8Array {
  const plan = planGguf(metadata, tensors);
  const out = new Uint8Array(plan.header.byteLength + plan.dataBytes);
  out.set(plan.header);
  tensors.forEach((t, i) => {
    const bytes = encodeGgml(t.type, t.shape, t.data, `tensor ${JSON.stringify(t.name)}`);
    out.set(bytes, plan.header.byteLength + plan.planned[i].offset);
  });
  return out;
}
