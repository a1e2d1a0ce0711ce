/**
 * IEEE half (f16) and bfloat16 conversions on the CPU: what storing as f16 does, and the packing
 * of two halves per u32 word that `pack2x16float` / `unpack2x16float` use in WGSL.
 * @module
 */

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** Converts one float to IEEE half bits (round to nearest even). */
export function f32ToF16Bits(value: number): number {
  scratchF32[0] = value;
  const x = scratchU32[0];
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / nan
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow -> inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow -> 0
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && (r & 1))) r++;
    return sign | r;
  }
  let r = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (r & 1))) {
    r++;
    if (r === 0x400) {
      r = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | r;
}

/** Converts IEEE half bits to a float. */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 0x1f) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Converts bfloat16 bits to a float (exact: bf16 is the top half of an f32). */
export function bf16BitsToF32(h: number): number {
  scratchU32[0] = h << 16;
  return scratchF32[0];
}

/** Packs floats as halves two per u32 word (element 2i in the low 16 bits), as `pack2x16float`. */
export function packF16(values: ArrayLike<number>): Uint32Array {
  const out = new Uint32Array(Math.ceil(values.length / 2));
  for (let i = 0; i < values.length; i++) {
    out[i >> 1] |= f32ToF16Bits(values[i]) << ((i & 1) * 16);
  }
  return out;
}

/** Unpacks `n` halves stored two per u32 word into floats. */
export function unpackF16(words: Uint32Array, n: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = f16BitsToF32((words[i >> 1] >>> ((i & 1) * 16)) & 0xffff);
  return out;
}

/** Rounds each value to the nearest f16 (what storing as f16 does), for CPU references. */
export function roundF16(values: ArrayLike<number>): Float32Array {
  const out = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = f16BitsToF32(f32ToF16Bits(values[i]));
  return out;
}
