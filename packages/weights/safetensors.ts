/**
 * safetensors weights from bytes: parse (one tensor at a time from a {@link ByteSource}, never the
 * whole file), encode, sharded Hugging Face checkpoints behind an index, and dtype conversion to
 * f32. No file system here: `@lvm/weights/fs` opens and writes files (`SafetensorsFile.open`,
 * `writeSafetensors`, `openWeights`).
 *
 * Format (https://github.com/huggingface/safetensors): 8 bytes little-endian u64 `N`, then `N` bytes
 * of JSON `{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}`
 * (offsets relative to the data section that starts at `8 + N`), then the raw little-endian data,
 * row-major.
 *
 * Files are written as the Rust library (and so the Python `safetensors` package) writes them, byte
 * for byte: tensors ordered by dtype alignment, largest first, then by name (so every tensor is
 * aligned to its element size), compact JSON with `__metadata__` first (its keys sorted here: the
 * library's order is a hash map's), the header padded with spaces to a multiple of 8 bytes.
 *
 * {@link TensorSource} is the read interface shared with the PyTorch `.bin` reader (torch_bin.ts),
 * so a model loader takes either.
 * @module
 */
import { type ByteSource, intoBuffer, MemorySource } from "./byte_source.ts";
import { compareCodePoints } from "./_code_points.ts";

// ---------------------------------------------------------------------------------------------
// dtypes

/** The element types of the safetensors format. */
export type StDType =
  | "BOOL"
  | "U8"
  | "I8"
  | "F8_E5M2"
  | "F8_E4M3"
  | "I16"
  | "U16"
  | "F16"
  | "BF16"
  | "I32"
  | "U32"
  | "F32"
  | "F64"
  | "I64"
  | "U64";

/**
 * Bytes per element of each dtype. The key order is the library's `Dtype` enum order (increasing
 * alignment), which decides the layout of a written file.
 */
export const ST_DTYPE_SIZE: Readonly<Record<StDType, number>> = Object.freeze({
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  F64: 8,
  I64: 8,
  U64: 8,
});

const DTYPE_RANK: Record<string, number> = Object.fromEntries(
  Object.keys(ST_DTYPE_SIZE).map((k, i) => [k, i]),
);

/** Whether `s` names a safetensors dtype. */
export function isStDType(s: unknown): s is StDType {
  return typeof s === "string" && Object.hasOwn(ST_DTYPE_SIZE, s);
}

/**
 * dtypes of the safetensors spec that this module does not read or write (sub-byte floats, the
 * E8M0 scale format, complex): files holding them are refused with a message naming them.
 */
export const ST_UNSUPPORTED_DTYPES: readonly string[] = Object.freeze([
  "F4",
  "F6_E2M3",
  "F6_E3M2",
  "F8_E8M0",
  "C64",
]);

/** Why `dtype` (not an {@link StDType}) is refused: unsupported (in the spec) or unknown. */
function badDType(dtype: unknown): string {
  const known = Object.keys(ST_DTYPE_SIZE).join(", ");
  return typeof dtype === "string" && ST_UNSUPPORTED_DTYPES.includes(dtype)
    ? `unsupported dtype ${dtype} (a safetensors dtype this reader does not handle; supported: ${known})`
    : `unknown dtype ${JSON.stringify(dtype)}; expected one of ${known}`;
}

// ---------------------------------------------------------------------------------------------
// The shared read interface

/** Name, dtype, shape and byte size of one stored tensor. */
export interface TensorInfo {
  name: string;
  /** A safetensors dtype name ("F32", "BF16", "I64", ...); the torch reader maps to the same names. */
  dtype: StDType;
  shape: number[];
  /** Bytes of the tensor's data, contiguous (numel * element size). */
  byteLength: number;
}

/**
 * A set of named tensors on disk, read one at a time: a safetensors file, a sharded checkpoint, a
 * PyTorch `.bin`. Model loaders take this, so they accept any of them.
 */
export interface TensorSource {
  /** The file or index the tensors come from (for messages). */
  readonly path: string;
  /** Tensor names, in file order. */
  names(): string[];
  /** Dtype, shape and size of `name`; throws naming the file when there is no such tensor. */
  info(name: string): TensorInfo;
  has(name: string): boolean;
  /**
   * The tensor's bytes, row-major contiguous, little-endian, in its stored dtype: a new array, or
   * given `out` (at least `info(name).byteLength` bytes), a view of its start holding them (a
   * loader reads tensor after tensor into one buffer instead of leaving each to the collector).
   */
  readRaw(name: string, out?: Uint8Array): Promise<Uint8Array>;
  /** The tensor converted to f32 (see {@link toF32}), into `out` when given (one slot per element). */
  readF32(name: string, out?: Float32Array): Promise<Float32Array>;
  /** Closes the file handles. Reads after close fail. */
  close(): void;
  /** Free-form string metadata (safetensors `__metadata__`, an index's `metadata`, ...). */
  metadata?: Record<string, string>;
}

/**
 * An error about a weights file of any format: names the file and, where relevant, the tensor.
 * Each format has its own subclass ({@link SafetensorsError}, `TorchBinError`).
 */
export class WeightsFileError extends Error {
  override name = "WeightsFileError";
  /**
   * @param path the file the error is about
   * @param detail what was wrong (and what was expected)
   * @param tensor the tensor concerned, if any
   */
  constructor(
    readonly path: string,
    readonly detail: string,
    readonly tensor?: string,
    options?: ErrorOptions,
  ) {
    super(
      `${path}: ${tensor !== undefined ? `tensor ${JSON.stringify(tensor)}: ` : ""}${detail}`,
      options,
    );
  }
}

/** An error about a safetensors file (or sharded checkpoint): names the file and, where relevant, the tensor. */
export class SafetensorsError extends WeightsFileError {
  override name = "SafetensorsError";
}

/** Number of elements of a shape, checking each dimension (1 for the scalar shape `[]`). */
function shapeNumel(shape: readonly number[], what: () => string): number {
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

// ---------------------------------------------------------------------------------------------
// Conversion to f32 (fast paths: table lookups and bit shifts on typed-array views)

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

let f16Table: Float32Array | undefined;
/** f16 bits -> f32 for all 65536 halves (256 KiB, built once). */
function getF16Table(): Float32Array {
  if (f16Table) return f16Table;
  const t = new Float32Array(65536);
  const bits = new Uint32Array(t.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0x1f) bits[h] = (sign | 0x7f800000 | (m << 13)) >>> 0; // inf / nan (payload kept)
    else if (e === 0) t[h] = (sign ? -1 : 1) * m * 2 ** -24; // zero / subnormal: exact in f32
    else bits[h] = (sign | ((e + 112) << 23) | (m << 13)) >>> 0; // rebias 15 -> 127
  }
  return (f16Table = t);
}

let f8Tables: { F8_E4M3: Float32Array; F8_E5M2: Float32Array } | undefined;
/**
 * fp8 bits -> f32 (https://arxiv.org/abs/2209.05433). E4M3 is the "fn" variant (PyTorch
 * `float8_e4m3fn`): bias 7, no infinities, 0x7f/0xff are NaN. E5M2 is IEEE-like: bias 15.
 */
function getF8Tables(): { F8_E4M3: Float32Array; F8_E5M2: Float32Array } {
  if (f8Tables) return f8Tables;
  const e4m3 = new Float32Array(256);
  const e5m2 = new Float32Array(256);
  for (let b = 0; b < 256; b++) {
    const s = b & 0x80 ? -1 : 1;
    let e = (b >>> 3) & 0xf;
    let m = b & 7;
    e4m3[b] = e === 15 && m === 7
      ? NaN
      : e === 0
      ? s * (m / 8) * 2 ** -6
      : s * (1 + m / 8) * 2 ** (e - 7);
    e = (b >>> 2) & 0x1f;
    m = b & 3;
    e5m2[b] = e === 31
      ? (m ? NaN : s * Infinity)
      : e === 0
      ? s * (m / 4) * 2 ** -14
      : s * (1 + m / 4) * 2 ** (e - 15);
  }
  return (f8Tables = { F8_E4M3: e4m3, F8_E5M2: e5m2 });
}

/** `bytes` as a fresh, aligned buffer when it is not aligned to `align`. */
function aligned(bytes: Uint8Array, align: number): Uint8Array {
  return bytes.byteOffset % align === 0 ? bytes : bytes.slice();
}

function checkBytes(dtype: StDType, bytes: Uint8Array, label: string): number {
  if (!isStDType(dtype)) {
    throw new TypeError(`${label}: ${badDType(dtype)}`);
  }
  if (!LITTLE_ENDIAN) throw new RangeError(`${label}: big-endian hosts are not supported`);
  const size = ST_DTYPE_SIZE[dtype];
  if (bytes.byteLength % size !== 0) {
    throw new RangeError(
      `${label}: ${bytes.byteLength} bytes is not a whole number of ${dtype} elements (${size} B)`,
    );
  }
  return bytes.byteLength / size;
}

/**
 * The natural typed array of `dtype` over `bytes` (BOOL, U8 and the fp8 types give the bytes;
 * F16/BF16 give their bits as Uint16Array). Shares memory with `bytes` when aligned.
 */
export function typedView(
  dtype: StDType,
  bytes: Uint8Array,
  label = "tensor",
): TensorData {
  const n = checkBytes(dtype, bytes, label);
  const b = aligned(bytes, ST_DTYPE_SIZE[dtype]);
  const buf = b.buffer, off = b.byteOffset;
  switch (dtype) {
    case "BOOL":
    case "U8":
    case "F8_E4M3":
    case "F8_E5M2":
      return b;
    case "I8":
      return new Int8Array(buf, off, n);
    case "I16":
      return new Int16Array(buf, off, n);
    case "U16":
    case "F16":
    case "BF16":
      return new Uint16Array(buf, off, n);
    case "I32":
      return new Int32Array(buf, off, n);
    case "U32":
      return new Uint32Array(buf, off, n);
    case "F32":
      return new Float32Array(buf, off, n);
    case "F64":
      return new Float64Array(buf, off, n);
    case "I64":
      return new BigInt64Array(buf, off, n);
    case "U64":
      return new BigUint64Array(buf, off, n);
  }
}

/**
 * Converts stored bytes of any dtype to f32. Without `out`, F32 input that is 4-byte aligned is
 * returned as a view (no copy); with `out` (exactly one slot per element) the result is written
 * there, which spares a loader the page faults of a fresh allocation per tensor (they cost more
 * than the conversion itself). F16 uses a 64Ki-entry table, BF16 a 16-bit shift, fp8 a 256-entry
 * table (all bit-exact, NaN payloads kept); integers convert exactly up to 2^24 and round beyond
 * (I64/U64 exact to 2^53 before the f32 rounding); BOOL gives 0/1.
 *
 * @example
 * ```ts
 * import { toF32 } from "@lvm/weights";
 * const bf16 = new Uint8Array([0x80, 0x3f, 0x00, 0xc0]); // 1, -2
 * console.log(toF32("BF16", bf16)); // Float32Array [1, -2]
 * ```
 */
export function toF32(
  dtype: StDType,
  bytes: Uint8Array,
  label = "tensor",
  out?: Float32Array,
): Float32Array {
  const n = checkBytes(dtype, bytes, label);
  if (out && out.length !== n) {
    throw new RangeError(`${label}: output holds ${out.length} floats, the tensor has ${n}`);
  }
  if (dtype === "F32" && !out) {
    const b = aligned(bytes, 4);
    return new Float32Array(b.buffer, b.byteOffset, n);
  }
  const res = out ?? new Float32Array(n);
  const o = new Uint32Array(res.buffer, res.byteOffset, n); // bit-level writes: no NaN rewriting
  switch (dtype) {
    case "F32":
      o.set(typedView("U32", bytes) as Uint32Array);
      break;
    case "BF16": {
      const src = typedView(dtype, bytes) as Uint16Array;
      for (let i = 0; i < n; i++) o[i] = src[i] << 16;
      break;
    }
    case "F16": {
      const src = typedView(dtype, bytes) as Uint16Array;
      const t = new Uint32Array(getF16Table().buffer);
      for (let i = 0; i < n; i++) o[i] = t[src[i]];
      break;
    }
    case "F8_E4M3":
    case "F8_E5M2": {
      const t = getF8Tables()[dtype];
      for (let i = 0; i < n; i++) res[i] = t[bytes[i]];
      break;
    }
    case "BOOL":
      for (let i = 0; i < n; i++) res[i] = bytes[i] ? 1 : 0;
      break;
    case "I64":
    case "U64": {
      const b = aligned(bytes, 8);
      const w = new Uint32Array(b.buffer, b.byteOffset, 2 * n);
      if (dtype === "I64") {
        for (let i = 0; i < n; i++) res[i] = (w[2 * i + 1] | 0) * 4294967296 + w[2 * i];
      } else for (let i = 0; i < n; i++) res[i] = w[2 * i + 1] * 4294967296 + w[2 * i];
      break;
    }
    default: // I8, U8, I16, U16, I32, U32, F64: the engine converts typed array to typed array
      res.set(typedView(dtype, bytes) as ArrayLike<number>);
  }
  return res;
}

/**
 * Converts stored integer (or BOOL) bytes to Int32Array, exactly. Throws a RangeError naming the
 * first element outside the int32 range (possible for U32, I64, U64).
 */
export function toI32(dtype: StDType, bytes: Uint8Array, label = "tensor"): Int32Array {
  const n = checkBytes(dtype, bytes, label);
  const bad = (i: number, v: bigint | number): never => {
    throw new RangeError(`${label}: ${dtype} element ${i} = ${v} is outside the int32 range`);
  };
  switch (dtype) {
    case "BOOL":
    case "U8":
    case "I8":
    case "I16":
    case "U16":
      return new Int32Array(typedView(dtype, bytes) as ArrayLike<number>);
    case "I32": {
      const b = aligned(bytes, 4);
      return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + 4 * n));
    }
    case "U32": {
      const src = typedView(dtype, bytes) as Uint32Array;
      for (let i = 0; i < n; i++) if (src[i] > 0x7fffffff) bad(i, src[i]);
      return new Int32Array(src);
    }
    case "I64":
    case "U64": {
      const b = aligned(bytes, 8);
      const w = new Int32Array(b.buffer, b.byteOffset, 2 * n);
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) {
        const lo = w[2 * i], hi = w[2 * i + 1];
        // In range iff the high word is the sign extension of the low word (U64: both 0).
        if (hi !== (lo < 0 ? -1 : 0) || (dtype === "U64" && lo < 0)) {
          bad(i, (typedView(dtype, bytes) as BigInt64Array | BigUint64Array)[i]);
        }
        out[i] = lo;
      }
      return out;
    }
    default:
      throw new TypeError(`${label}: toI32 needs an integer dtype, found ${dtype}`);
  }
}

/**
 * Converts stored integer (or BOOL) bytes to BigInt64Array, exactly; U64 values above 2^63-1 are a
 * RangeError naming the element.
 */
export function toBigInt64(dtype: StDType, bytes: Uint8Array, label = "tensor"): BigInt64Array {
  const n = checkBytes(dtype, bytes, label);
  if (dtype === "I64" || dtype === "U64") {
    const b = aligned(bytes, 8);
    const out = new BigInt64Array(b.buffer.slice(b.byteOffset, b.byteOffset + 8 * n));
    if (dtype === "U64") {
      for (let i = 0; i < n; i++) {
        if (out[i] < 0n) {
          throw new RangeError(
            `${label}: U64 element ${i} = ${BigInt.asUintN(64, out[i])} is outside the int64 range`,
          );
        }
      }
    }
    return out;
  }
  if (dtype === "U32") {
    return BigInt64Array.from(typedView(dtype, bytes) as Uint32Array, (x) => BigInt(x));
  }
  const v = toI32(dtype, bytes, label); // the other integer dtypes all fit int32
  const out = new BigInt64Array(n);
  for (let i = 0; i < n; i++) out[i] = BigInt(v[i]);
  return out;
}

/** f32 -> bf16 bits, round to nearest even; NaN stays NaN (quiet). */
function f32ToBf16Words(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = u[i];
    out[i] = (x & 0x7fffffff) > 0x7f800000
      ? (x >>> 16) | 0x40
      : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

/**
 * f32 -> f16 bits, round to nearest even, overflow to inf, NaN -> quiet NaN; the same results as
 * tensor.ts `f32ToF16Bits`, on u32 words in one loop (about 10x faster than calling it per element).
 */
function f32ToF16Words(src: Float32Array): Uint16Array {
  const u = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const x = u[i];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    const m = x & 0x7fffff;
    const e = exp - 112; // rebias 127 -> 15
    if (exp === 0xff) out[i] = sign | 0x7c00 | (m ? 0x200 : 0);
    else if (e >= 31) out[i] = sign | 0x7c00;
    else if (e > 0) {
      // a carry out of the mantissa bumps the exponent, up to inf: the bit layout does it
      let h = (e << 10) | (m >>> 13);
      const rem = m & 0x1fff;
      if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
      out[i] = sign | h;
    } else if (e < -10) out[i] = sign;
    else {
      const mm = m | 0x800000, shift = 14 - e;
      let r = mm >>> shift;
      const rem = mm & ((1 << shift) - 1), half = 1 << (shift - 1);
      if (rem > half || (rem === half && (r & 1))) r++;
      out[i] = sign | r;
    }
  }
  return out;
}

/**
 * Encodes f32 values as `dtype` bytes (F32, F64, F16 and BF16 round to nearest even). fp8 targets
 * are not encoded here: pass their bytes as a Uint8Array.
 */
export function fromF32(dtype: StDType, values: Float32Array, label = "tensor"): Uint8Array {
  switch (dtype) {
    case "F32":
      return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
    case "F64":
      return new Uint8Array(new Float64Array(values).buffer);
    case "BF16":
      return new Uint8Array(f32ToBf16Words(values).buffer);
    case "F16":
      return new Uint8Array(f32ToF16Words(values).buffer);
    default:
      throw new TypeError(
        `${label}: cannot encode f32 values as ${dtype} (only F32, F64, F16, BF16; pass fp8 bytes as a Uint8Array)`,
      );
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding tensors for writing

/** Host data of one tensor to write. */
export type TensorData =
  | Float32Array
  | Float64Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | Int32Array
  | Uint32Array
  | BigInt64Array
  | BigUint64Array;

/** One tensor to write. */
export interface TensorEntry {
  dtype: StDType;
  shape: readonly number[];
  /**
   * A Uint8Array is taken as the raw stored bytes (numel * element size). Another typed array has
   * one element per tensor element: stored as is when it is the dtype's own array (Float32Array
   * for F32, Uint16Array for F16/BF16 bits or U16, BigInt64Array for I64, ...), converted otherwise
   * (floats to F16/BF16/F32/F64 rounding to nearest even; integers to integer dtypes, range-checked).
   */
  data: TensorData;
}

const INT_RANGE: Partial<Record<StDType, [number, number]>> = {
  BOOL: [0, 1],
  U8: [0, 255],
  I8: [-128, 127],
  I16: [-32768, 32767],
  U16: [0, 65535],
  I32: [-2147483648, 2147483647],
  U32: [0, 4294967295],
};

function nativeDType(data: TensorData): StDType[] {
  if (data instanceof Float32Array) return ["F32"];
  if (data instanceof Float64Array) return ["F64"];
  if (data instanceof Int8Array) return ["I8"];
  if (data instanceof Int16Array) return ["I16"];
  if (data instanceof Uint16Array) return ["U16", "F16", "BF16"];
  if (data instanceof Int32Array) return ["I32"];
  if (data instanceof Uint32Array) return ["U32"];
  if (data instanceof BigInt64Array) return ["I64"];
  if (data instanceof BigUint64Array) return ["U64"];
  return [];
}

/**
 * The stored bytes of `entry` (see {@link TensorEntry.data} for the accepted inputs). Throws a
 * TypeError/RangeError naming `name` when the data does not fit the dtype and shape.
 */
export function encodeTensor(name: string, entry: TensorEntry): Uint8Array {
  const { dtype, shape, data } = entry;
  const label = `tensor ${JSON.stringify(name)}`;
  if (!isStDType(dtype)) throw new TypeError(`${label}: ${badDType(dtype)}`);
  if (!Array.isArray(shape)) throw new TypeError(`${label}: shape must be an array of counts`);
  const n = shapeNumel(shape, () => label);
  const size = ST_DTYPE_SIZE[dtype];
  if (data instanceof Uint8Array) {
    if (data.byteLength !== n * size) {
      throw new RangeError(
        `${label}: ${data.byteLength} bytes given for ${dtype} [${shape}], expected ${n * size}`,
      );
    }
    if (dtype === "BOOL") {
      const i = data.findIndex((b) => b > 1);
      if (i >= 0) {
        throw new RangeError(`${label}: BOOL element ${i} is byte ${data[i]}, expected 0 or 1`);
      }
    }
    return data;
  }
  if (data.length !== n) {
    throw new RangeError(
      `${label}: ${data.length} elements given for shape [${shape}], expected ${n}`,
    );
  }
  if (nativeDType(data).includes(dtype)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (dtype === "F32" || dtype === "F64" || dtype === "F16" || dtype === "BF16") {
    if (data instanceof BigInt64Array || data instanceof BigUint64Array) {
      return fromF32(dtype, Float32Array.from(data, (v) => Number(v)), label);
    }
    if (dtype === "F64") return new Uint8Array(new Float64Array(data).buffer);
    return fromF32(dtype, data instanceof Float32Array ? data : new Float32Array(data), label);
  }
  if (dtype === "F8_E4M3" || dtype === "F8_E5M2") {
    throw new TypeError(`${label}: give ${dtype} data as raw bytes (a Uint8Array)`);
  }
  // integer target from another array type: every value must be an integer in range
  if (dtype === "I64" || dtype === "U64") {
    const out = dtype === "I64" ? new BigInt64Array(n) : new BigUint64Array(n);
    for (let i = 0; i < n; i++) {
      const v = data[i];
      if (typeof v === "number" && !Number.isSafeInteger(v)) {
        throw new RangeError(`${label}: element ${i} = ${v} is not an exact integer for ${dtype}`);
      }
      const b = BigInt(v);
      if (dtype === "U64" ? b < 0n || b > 0xffffffffffffffffn : b !== BigInt.asIntN(64, b)) {
        throw new RangeError(`${label}: element ${i} = ${v} is outside the ${dtype} range`);
      }
      out[i] = b as never;
    }
    return new Uint8Array(out.buffer);
  }
  const [lo, hi] = INT_RANGE[dtype]!;
  const out = new Uint8Array(n * size);
  const view = typedView(dtype, out) as Uint8Array | Int8Array | Int16Array | Uint16Array;
  for (let i = 0; i < n; i++) {
    const v = Number(data[i]);
    if (!Number.isInteger(v) || v < lo || v > hi) {
      throw new RangeError(`${label}: element ${i} = ${data[i]} is not a ${dtype} value`);
    }
    view[i] = v;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading

/** The library refuses headers over 100 MB; so do we. */
const MAX_HEADER_BYTES = 100_000_000;

/** {@link TensorInfo} plus where the bytes are in a safetensors file. */
export interface SafetensorsTensorInfo extends TensorInfo {
  /** `[begin, end)` relative to the data section, as in the header. */
  dataOffsets: [number, number];
}

/** A parsed safetensors header: where the data starts, each tensor, `__metadata__`. */
export interface SafetensorsHeader {
  /** Byte offset of the data section (8 + header length). */
  dataStart: number;
  tensors: Map<string, SafetensorsTensorInfo>;
  metadata?: Record<string, string>;
}

/**
 * Safetensors tensors read from a {@link ByteSource}: {@link SafetensorsReader.fromSource} reads and
 * validates only the header; each `readRaw` then reads one tensor's bytes (so multi-GB files are
 * fine). `@lvm/weights/fs`'s `SafetensorsFile.open(path)` is this over a file.
 *
 * @example
 * ```ts
 * import { encodeSafetensors, SafetensorsReader } from "@lvm/weights";
 * const bytes = encodeSafetensors({ w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) } });
 * const f = await SafetensorsReader.fromBytes(bytes, "w.safetensors");
 * console.log(f.info("w").shape, await f.readF32("w")); // [ 2 ] Float32Array(2) [ 1, 2 ]
 * f.close();
 * ```
 */
export class SafetensorsReader implements TensorSource {
  readonly #tensors: Map<string, SafetensorsTensorInfo>;
  /** Byte offset of the data section (8 + header length). */
  readonly dataStart: number;
  /** The header's `__metadata__`, if any. */
  readonly metadata?: Record<string, string>;

  protected constructor(protected readonly file: ByteSource, header: SafetensorsHeader) {
    this.#tensors = header.tensors;
    this.dataStart = header.dataStart;
    this.metadata = header.metadata;
  }

  /** The file (or URL) the tensors come from. */
  get path(): string {
    return this.file.path;
  }

  /**
   * Reads and validates the header of `source`: length within the source and under 100 MB, UTF-8
   * JSON object, known dtypes, shapes of counts, `data_offsets` with begin <= end inside the data
   * section, size = numel * element size, no two tensors overlapping, `__metadata__` a string map.
   * Any failure is a {@link SafetensorsError} naming the source (and tensor); `source` is then
   * closed.
   */
  protected static async parse(source: ByteSource): Promise<SafetensorsHeader> {
    try {
      return await readHeader(source.path, source);
    } catch (e) {
      source.close();
      throw e;
    }
  }

  /** The tensors of `source` (see {@link SafetensorsReader.parse} for what is checked). */
  static async fromSource(source: ByteSource): Promise<SafetensorsReader> {
    return new SafetensorsReader(source, await SafetensorsReader.parse(source));
  }

  /** The tensors of a whole safetensors file in memory (`name` for messages). */
  static fromBytes(bytes: Uint8Array, name = "memory"): Promise<SafetensorsReader> {
    return SafetensorsReader.fromSource(new MemorySource(bytes, name));
  }

  /** Tensor names in file order (by data offset). */
  names(): string[] {
    return [...this.#tensors.keys()];
  }

  has(name: string): boolean {
    return this.#tensors.has(name);
  }

  info(name: string): SafetensorsTensorInfo {
    const t = this.#tensors.get(name);
    if (!t) throw missingTensor(this.path, name, this.names());
    return { ...t, shape: [...t.shape], dataOffsets: [...t.dataOffsets] };
  }

  async readRaw(name: string, out?: Uint8Array): Promise<Uint8Array> {
    const t = this.#tensors.get(name);
    if (!t) throw missingTensor(this.path, name, this.names());
    if (this.file.closed) throw new SafetensorsError(this.path, "read after close()", name);
    const [begin, end] = t.dataOffsets;
    if (out) intoBuffer(out, end - begin, `${this.path}: tensor "${name}"`);
    const bytes = await this.file.read(this.dataStart + begin, end - begin, out);
    if (bytes.byteLength !== end - begin) {
      throw new SafetensorsError(
        this.path,
        `file truncated: data ends at byte ${this.dataStart + begin + bytes.byteLength}, ` +
          `expected ${end - begin} bytes from ${this.dataStart + begin}`,
        name,
      );
    }
    return bytes;
  }

  async readF32(name: string, out?: Float32Array): Promise<Float32Array> {
    const t = this.info(name);
    return toF32(t.dtype, await this.readRaw(name), `${this.path}: tensor "${name}"`, out);
  }

  close(): void {
    this.file.close();
  }
}

function missingTensor(path: string, name: string, names: string[]): SafetensorsError {
  const near = names.filter((n) => n.endsWith(name) || name.endsWith(n)).slice(0, 3);
  return new SafetensorsError(
    path,
    `no such tensor (the file has ${names.length}${
      near.length ? `; similar: ${near.join(", ")}` : names.length ? `, e.g. ${names[0]}` : ""
    })`,
    name,
  );
}

/**
 * The first key that occurs twice in one object of `text` (valid JSON), with the key of that object
 * in the top-level object (`parent`; undefined for the top level itself).
 */
function duplicateKey(text: string): { key: string; parent?: string } | undefined {
  // One entry per open object/array: its keys so far (null for arrays) and its own top-level key.
  const stack: { keys: Set<string> | null; parent?: string }[] = [];
  let str = ""; // the last string token
  let key: string | undefined; // the key whose value comes next
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) { // '"': find the closing quote, skipping escaped characters
      let j = i + 1;
      for (;;) {
        j = text.indexOf('"', j);
        let k = j - 1, bs = 0;
        while (text.charCodeAt(k--) === 0x5c) bs++;
        if (bs % 2 === 0) break;
        j++;
      }
      const raw = text.slice(i + 1, j);
      str = raw.includes("\\") ? JSON.parse(`"${raw}"`) : raw;
      i = j;
    } else if (c === 0x3a) { // ':' ends a key
      const keys = stack[stack.length - 1].keys!;
      if (keys.has(str)) {
        return {
          key: str,
          parent: stack.length === 1 ? undefined : stack[stack.length - 1].parent,
        };
      }
      keys.add(str);
      key = str;
    } else if (c === 0x7b || c === 0x5b) { // '{' or '['
      const parent = stack.length === 1 ? key : stack[stack.length - 1]?.parent;
      stack.push({ keys: c === 0x7b ? new Set() : null, parent });
    } else if (c === 0x7d || c === 0x5d) stack.pop();
  }
  return undefined;
}

async function readHeader(path: string, file: ByteSource): Promise<SafetensorsHeader> {
  const fail = (detail: string, tensor?: string): never => {
    throw new SafetensorsError(path, detail, tensor);
  };
  if (file.size < 8) fail(`file is ${file.size} bytes, shorter than the 8-byte header length`);
  const lenBytes = await file.read(0, 8);
  const n64 = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (n64 > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${n64} exceeds the 100 MB limit (corrupt, or not a safetensors file)`);
  }
  const n = Number(n64);
  if (8 + n > file.size) {
    fail(`header length ${n} goes beyond the end of the ${file.size}-byte file (truncated?)`);
  }
  if (n < 2) fail(`header length ${n} is too small for a JSON object`);
  const raw = await file.read(8, n);
  if (raw.byteLength !== n) fail(`could not read the ${n}-byte header`);
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(raw);
  } catch {
    return fail("header is not valid UTF-8");
  }
  if (!text.startsWith("{")) {
    fail(`header does not start with "{" (found ${JSON.stringify(text.slice(0, 8))})`);
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON: ${(e as Error).message}`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail("header is not a JSON object");
  }
  // JSON.parse keeps the last of two equal keys: a tensor listed twice would silently lose one.
  const dup = duplicateKey(text);
  if (dup) {
    if (dup.parent === undefined) {
      fail(
        dup.key === "__metadata__"
          ? "__metadata__ appears twice in the header"
          : "the tensor name appears twice in the header",
        dup.key === "__metadata__" ? undefined : dup.key,
      );
    }
    if (dup.parent === "__metadata__") {
      fail(`__metadata__ key ${JSON.stringify(dup.key)} appears twice`);
    }
    fail(`key ${JSON.stringify(dup.key)} appears twice in the entry`, dup.parent);
  }
  const dataStart = 8 + n;
  const dataSize = file.size - dataStart;
  let metadata: Record<string, string> | undefined;
  const list: SafetensorsTensorInfo[] = [];
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (v === null || typeof v !== "object" || Array.isArray(v)) {
        fail("__metadata__ is not a JSON object of strings");
      }
      for (const [k, s] of Object.entries(v as object)) {
        if (typeof s !== "string") {
          fail(`__metadata__ value of ${JSON.stringify(k)} is ${typeof s}, expected a string`);
        }
      }
      metadata = { ...(v as Record<string, string>) };
      continue;
    }
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      fail("entry is not an object with dtype, shape, data_offsets", name);
    }
    const { dtype, shape, data_offsets: offs } = v as Record<string, unknown>;
    if (!isStDType(dtype)) fail(badDType(dtype), name);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`, name);
    }
    if (
      !Array.isArray(offs) || offs.length !== 2 ||
      !offs.every((o) => Number.isSafeInteger(o) && o >= 0)
    ) {
      fail(
        `data_offsets ${JSON.stringify(offs)} is not [begin, end] of non-negative integers`,
        name,
      );
    }
    const [begin, end] = offs as [number, number];
    if (begin > end) fail(`data_offsets [${begin}, ${end}]: begin > end`, name);
    if (end > dataSize) {
      fail(
        `data_offsets [${begin}, ${end}] go beyond the ${dataSize}-byte data section ` +
          `(file truncated or header corrupt)`,
        name,
      );
    }
    let numel = 1;
    for (const d of shape as number[]) numel *= d;
    const want = numel * ST_DTYPE_SIZE[dtype as StDType];
    if (end - begin !== want) {
      fail(
        `data_offsets [${begin}, ${end}] hold ${
          end - begin
        } bytes but ${dtype} [${shape}] needs ${want}`,
        name,
      );
    }
    list.push({
      name,
      dtype: dtype as StDType,
      shape: [...(shape as number[])],
      byteLength: want,
      dataOffsets: [begin, end],
    });
  }
  list.sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let prev: SafetensorsTensorInfo | undefined;
  for (const t of list) {
    if (t.byteLength === 0) continue;
    if (prev && t.dataOffsets[0] < prev.dataOffsets[1]) {
      fail(
        `data_offsets [${t.dataOffsets}] overlap those of ${
          JSON.stringify(prev.name)
        } [${prev.dataOffsets}]`,
        t.name,
      );
    }
    prev = t;
  }
  return { dataStart, tensors: new Map(list.map((t) => [t.name, t])), metadata };
}

// ---------------------------------------------------------------------------------------------
// Writing

/** Name, dtype and shape of a tensor to be written (`@lvm/weights/fs`'s `SafetensorsWriter`). */
export interface TensorSpec {
  name: string;
  dtype: StDType;
  shape: readonly number[];
}

/** A tensor's place in a planned file: {@link TensorSpec} plus its data bytes and offset. */
export interface PlannedTensor extends TensorSpec {
  byteLength: number;
  /** Offset in the data section. */
  begin: number;
}

/** A file's layout: the header bytes (length prefix included), each tensor's place, data bytes. */
export interface SafetensorsPlan {
  header: Uint8Array;
  planned: PlannedTensor[];
  dataBytes: number;
}

/**
 * Lays out tensors as the library does (dtype alignment descending, then name) and builds the
 * padded header bytes: what every writer (here and in `@lvm/weights/fs`) follows.
 */
export function planSafetensors(
  specs: readonly TensorSpec[],
  metadata?: Record<string, string>,
): SafetensorsPlan {
  const seen = new Set<string>();
  const planned: PlannedTensor[] = specs.map((s) => {
    const label = `tensor ${JSON.stringify(s.name)}`;
    if (typeof s.name !== "string") throw new TypeError(`tensor name ${s.name} is not a string`);
    if (s.name === "__metadata__") {
      throw new RangeError(`"__metadata__" is reserved, not a tensor name`);
    }
    if (seen.has(s.name)) throw new RangeError(`${label} is listed twice`);
    seen.add(s.name);
    if (!isStDType(s.dtype)) {
      throw new TypeError(`${label}: ${badDType(s.dtype)}`);
    }
    const n = shapeNumel(s.shape, () => label);
    return {
      name: s.name,
      dtype: s.dtype,
      shape: [...s.shape],
      byteLength: n * ST_DTYPE_SIZE[s.dtype],
      begin: 0,
    };
  });
  planned.sort((a, b) =>
    DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype] || compareCodePoints(a.name, b.name)
  );
  const parts: string[] = [];
  if (metadata !== undefined) {
    const keys = Object.keys(metadata).sort(compareCodePoints);
    for (const k of keys) {
      if (typeof metadata[k] !== "string") {
        throw new TypeError(
          `metadata ${JSON.stringify(k)} is ${typeof metadata[k]}, expected a string`,
        );
      }
    }
    parts.push(
      `"__metadata__":{${
        keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(",")
      }}`,
    );
  }
  let offset = 0;
  for (const t of planned) {
    t.begin = offset;
    offset += t.byteLength;
    parts.push(
      `${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(",")}],` +
        `"data_offsets":[${t.begin},${offset}]}`,
    );
  }
  const json = new TextEncoder().encode(`{${parts.join(",")}}`);
  const n = Math.ceil(json.byteLength / 8) * 8;
  const header = new Uint8Array(8 + n).fill(0x20, 8 + json.byteLength);
  new DataView(header.buffer).setBigUint64(0, BigInt(n), true);
  header.set(json, 8);
  return { header, planned, dataBytes: offset };
}

/**
 * A whole safetensors file in memory, laid out and headed byte for byte as the Python/Rust library
 * writes it (`@lvm/weights/fs`'s `writeSafetensors` writes the same bytes to a file).
 *
 * @example
 * ```ts
 * import { encodeSafetensors } from "@lvm/weights";
 * const bytes = encodeSafetensors({ b: { dtype: "BF16", shape: [3], data: new Float32Array([1, 2, 3]) } });
 * console.log(bytes.byteLength); // 8-byte length + padded JSON header + 6 data bytes
 * ```
 */
export function encodeSafetensors(
  tensors: Record<string, TensorEntry>,
  metadata?: Record<string, string>,
): Uint8Array {
  const bytes = new Map<string, Uint8Array>();
  for (const [name, t] of Object.entries(tensors)) bytes.set(name, encodeTensor(name, t));
  const plan = planSafetensors(
    Object.entries(tensors).map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })),
    metadata,
  );
  const out = new Uint8Array(plan.header.byteLength + plan.dataBytes);
  out.set(plan.header, 0);
  for (const p of plan.planned) out.set(bytes.get(p.name)!, plan.header.byteLength + p.begin);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Sharded checkpoints (Hugging Face layout)

/** How {@link ShardedCheckpoint.fromIndex} reaches the shards an index names. */
export interface ShardOpener {
  /** Where shard `file` (a name beside the index) lives: a path or URL. */
  locate(file: string): string;
  /** Whether it is there (a missing shard is reported with the tensors it should hold). */
  exists(location: string): Promise<boolean>;
  /** Opens it (headers only). */
  open(location: string): Promise<TensorSource>;
}

/**
 * Several files behind one index JSON (`{"metadata": {...}, "weight_map": {name: file}}`), as
 * `model.safetensors.index.json` / `pytorch_model.bin.index.json`. Every shard is opened (headers
 * only) and every name checked to be in its shard when the index is opened
 * (`@lvm/weights/fs`'s `openShardedCheckpoint(indexPath)` for files).
 */
export class ShardedCheckpoint implements TensorSource {
  private constructor(
    readonly path: string,
    /** Open shards by file name. */
    readonly shards: Map<string, TensorSource>,
    private readonly weightMap: Map<string, string>,
    readonly metadata?: Record<string, string>,
  ) {}

  /**
   * Parses the index text (read from `indexPath`) and opens its shards through `opener`. A bad
   * index, a shard that does not exist or cannot be opened, and a name mapped to a shard lacking
   * it, are {@link SafetensorsError}s naming the index, the shard and the tensor.
   */
  static async fromIndex(
    indexPath: string,
    indexText: string,
    opener: ShardOpener,
  ): Promise<ShardedCheckpoint> {
    const fail = (detail: string, tensor?: string): never => {
      throw new SafetensorsError(indexPath, detail, tensor);
    };
    let index: any;
    try {
      index = JSON.parse(indexText);
    } catch (e) {
      return fail(`cannot read the index: ${(e as Error).message}`);
    }
    const wm = index?.weight_map;
    if (wm === null || typeof wm !== "object" || Array.isArray(wm)) {
      fail(`no "weight_map" object (name -> shard file) in the index`);
    }
    const weightMap = new Map<string, string>();
    for (const [name, file] of Object.entries(wm as Record<string, unknown>)) {
      if (
        typeof file !== "string" || file === "" || file.startsWith("/") ||
        file.split(/[\\/]/).includes("..")
      ) {
        fail(`weight_map entry ${JSON.stringify(file)} is not a file name beside the index`, name);
      }
      weightMap.set(name, file as string);
    }
    let metadata: Record<string, string> | undefined;
    if (index.metadata && typeof index.metadata === "object") {
      metadata = {};
      for (const [k, v] of Object.entries(index.metadata)) {
        metadata[k] = typeof v === "string" ? v : JSON.stringify(v);
      }
    }
    const shards = new Map<string, TensorSource>();
    try {
      const files = [...new Set(weightMap.values())].sort();
      for (const f of files) {
        const p = opener.locate(f);
        const users = [...weightMap].filter(([, s]) => s === f).map(([n]) => n);
        if (!(await opener.exists(p))) {
          fail(
            `shard ${JSON.stringify(f)} (listed for ${users.length} tensor(s), e.g. ${
              users[0]
            }) does not exist at ${p}`,
          );
        }
        shards.set(f, await opener.open(p));
      }
      for (const [name, f] of weightMap) {
        if (!shards.get(f)!.has(name)) {
          fail(`the index maps it to shard ${JSON.stringify(f)}, which has no such tensor`, name);
        }
      }
    } catch (e) {
      for (const s of shards.values()) s.close();
      throw e;
    }
    return new ShardedCheckpoint(indexPath, shards, weightMap, metadata);
  }

  /** Names sorted, as in the index. */
  names(): string[] {
    return [...this.weightMap.keys()];
  }

  has(name: string): boolean {
    return this.weightMap.has(name);
  }

  #shard(name: string): TensorSource {
    const f = this.weightMap.get(name);
    if (f === undefined) throw missingTensor(this.path, name, this.names());
    return this.shards.get(f)!;
  }

  info(name: string): TensorInfo {
    return this.#shard(name).info(name);
  }

  async readRaw(name: string, out?: Uint8Array): Promise<Uint8Array> {
    return await this.#shard(name).readRaw(name, out);
  }

  async readF32(name: string, out?: Float32Array): Promise<Float32Array> {
    return await this.#shard(name).readF32(name, out);
  }

  close(): void {
    for (const s of this.shards.values()) s.close();
  }
}

/** `model-0000k-of-0000n.safetensors`, Hugging Face's shard name. */
export function shardFileName(k: number, n: number, prefix = "model", ext = "safetensors"): string {
  return `${prefix}-${String(k).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.${ext}`;
}

/** The natural typed array of a tensor of any {@link TensorSource} (see {@link typedView}). */
export async function readTyped(source: TensorSource, name: string): Promise<TensorData> {
  const info = source.info(name);
  return typedView(info.dtype, await source.readRaw(name), `${source.path}: tensor "${name}"`);
}
