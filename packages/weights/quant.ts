/**
 * GGML's block quantization, bit for bit: `Q8_0` and `Q4_0` blocks of {@link QK} = 32 weights
 * with one f16 scale, as llama.cpp's reference quantizers (`quantize_row_q8_0_ref`,
 * `quantize_row_q4_0_ref`) write them and its dequantizers read them.
 *
 * - `Q8_0` (34 bytes per block): f16 `d = max|x| / 127`, then 32 int8 `q = round(x / d)` (half away
 *   from zero); `x ≈ q * d`.
 * - `Q4_0` (18 bytes per block): `m` = the value of largest magnitude (with its sign), f16
 *   `d = m / -8`, then 16 bytes: byte j holds element j in its low nibble and element j + 16 in
 *   its high nibble, each `min(15, trunc(x / d + 8.5))`; `x ≈ (q - 8) * d`.
 *
 * A quantized matrix is a sequence of rows, each its own blocks (rows of a multiple of 32 values).
 * Bytes in GGUF's layout ({@link quantize}, {@link dequantize}) are what files hold; the split
 * layout ({@link splitBlocks}: scales and quants as separate, 4-byte-aligned u32 arrays, the same
 * bytes in total) is what a GPU kernel reads.
 * @module
 */
import { f16BitsToF32, f32ToF16Bits } from "@lvm/util";

/** Weights per block. */
export const QK = 32;

/** The block-quantized types. */
export type QuantType = "Q8_0" | "Q4_0";

/** Bytes of one block of each type (f16 scale + quants). */
export const BLOCK_BYTES: Readonly<Record<QuantType, number>> = { Q8_0: 34, Q4_0: 18 };

/** Bytes of the quants of one block (without the scale). */
export const QUANT_BYTES: Readonly<Record<QuantType, number>> = { Q8_0: 32, Q4_0: 16 };

/** Whether `t` names a block-quantized type. */
export function isQuantType(t: string): t is QuantType {
  return t === "Q8_0" || t === "Q4_0";
}

function checkLength(type: QuantType, n: number, what: string): void {
  if (!Number.isInteger(n) || n < 0 || n % QK !== 0) {
    throw new RangeError(
      `${type}: ${what} has ${n} values; block quantization needs a multiple of ${QK}`,
    );
  }
}

/** Bytes of `n` values (a multiple of 32) quantized as `type`. */
export function quantizedBytes(type: QuantType, n: number): number {
  checkLength(type, n, "a tensor");
  return (n / QK) * BLOCK_BYTES[type];
}

const f = Math.fround;

/** round() of C: half away from zero. */
function roundAway(v: number): number {
  return v < 0 ? -Math.round(-v) : Math.round(v);
}

/**
 * Quantizes `x` (a multiple of 32 values, row after row) into GGUF blocks of `type`, into `out`
 * when given (at least {@link quantizedBytes} bytes).
 */
export function quantize(type: QuantType, x: ArrayLike<number>, out?: Uint8Array): Uint8Array {
  const n = x.length;
  const bytes = quantizedBytes(type, n);
  if (out && out.length < bytes) {
    throw new RangeError(`${type}: output has ${out.length} bytes, ${bytes} needed`);
  }
  const y = out ?? new Uint8Array(bytes);
  const B = BLOCK_BYTES[type];
  for (let b = 0, o = 0; b < n; b += QK, o += B) {
    if (type === "Q8_0") {
      let amax = 0;
      for (let j = 0; j < QK; j++) amax = Math.max(amax, Math.abs(f(x[b + j])));
      const d = f(amax / 127);
      const id = d ? f(1 / d) : 0;
      const h = f32ToF16Bits(d);
      y[o] = h & 0xff;
      y[o + 1] = h >> 8;
      for (let j = 0; j < QK; j++) y[o + 2 + j] = roundAway(f(f(x[b + j]) * id)) & 0xff;
    } else {
      let amax = 0, max = 0;
      for (let j = 0; j < QK; j++) {
        const v = f(x[b + j]);
        if (amax < Math.abs(v)) {
          amax = Math.abs(v);
          max = v;
        }
      }
      const d = f(max / -8);
      const id = d ? f(1 / d) : 0;
      const h = f32ToF16Bits(d);
      y[o] = h & 0xff;
      y[o + 1] = h >> 8;
      for (let j = 0; j < QK / 2; j++) {
        const q0 = Math.min(15, Math.trunc(f(f(f(x[b + j]) * id) + 8.5)));
        const q1 = Math.min(15, Math.trunc(f(f(f(x[b + QK / 2 + j]) * id) + 8.5)));
        y[o + 2 + j] = q0 | (q1 << 4);
      }
    }
  }
  return y;
}

/** Dequantizes `n` values of `type` from GGUF blocks `bytes` (into `out` when given). */
export function dequantize(
  type: QuantType,
  bytes: Uint8Array,
  n: number,
  out?: Float32Array,
): Float32Array {
  const need = quantizedBytes(type, n);
  if (bytes.length < need) {
    throw new RangeError(`${type}: ${n} values need ${need} bytes, found ${bytes.length}`);
  }
  const y = out ?? new Float32Array(n);
  const B = BLOCK_BYTES[type];
  for (let b = 0, o = 0; b < n; b += QK, o += B) {
    const d = f16BitsToF32(bytes[o] | (bytes[o + 1] << 8));
    if (type === "Q8_0") {
      for (let j = 0; j < QK; j++) y[b + j] = ((bytes[o + 2 + j] << 24) >> 24) * d;
    } else {
      for (let j = 0; j < QK / 2; j++) {
        const q = bytes[o + 2 + j];
        y[b + j] = ((q & 15) - 8) * d;
        y[b + QK / 2 + j] = ((q >> 4) - 8) * d;
      }
    }
  }
  return y;
}

/**
 * The blocks of a quantized tensor split for a GPU: `scales` (the f16 scales, two per u32, block
 * 2i in the low half) and `quants` (each block's 32 or 16 quant bytes, little-endian in u32 words:
 * 8 words per Q8_0 block, 4 per Q4_0 block). The same bytes as the GGUF blocks, 4-byte aligned.
 */
export interface SplitBlocks {
  type: QuantType;
  /** Number of blocks. */
  blocks: number;
  /** ceil(blocks / 2) words. */
  scales: Uint32Array;
  /** blocks * (8 | 4) words. */
  quants: Uint32Array;
}

/** Splits GGUF blocks of `type` (`bytes`, whole blocks) into {@link SplitBlocks}. */
export function splitBlocks(type: QuantType, bytes: Uint8Array): SplitBlocks {
  const B = BLOCK_BYTES[type], QB = QUANT_BYTES[type];
  if (bytes.length % B !== 0) {
    throw new RangeError(
      `${type}: ${bytes.length} bytes is not a whole number of ${B}-byte blocks`,
    );
  }
  const blocks = bytes.length / B;
  const scales = new Uint32Array(Math.ceil(blocks / 2));
  const quants = new Uint32Array((blocks * QB) / 4);
  const qb = new Uint8Array(quants.buffer);
  for (let i = 0; i < blocks; i++) {
    const o = i * B;
    scales[i >> 1] |= (bytes[o] | (bytes[o + 1] << 8)) << ((i & 1) * 16);
    qb.set(bytes.subarray(o + 2, o + B), i * QB);
  }
  return { type, blocks, scales, quants };
}
