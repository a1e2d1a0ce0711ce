/**
 * Seeded randomness for the sentence builders and the loader. Every random choice is derived from
 * a seed and the *name* of the choice (`mix(seed, a, b, ...)`), never from a shared sequential
 * stream, so a sentence's content does not depend on which process builds it or in which order:
 * that is what makes `--part I/N`, resume and the loader's exact resume possible.
 * @module
 */

/** 32-bit mixing of integers (murmur3 finalizer over a running hash). Returns a u32. */
export function mix(...xs: number[]): number {
  let h = 0x9e3779b9;
  for (const x of xs) {
    // Split values above 2^32 (item keys up to 2^36) into two words.
    const lo = x >>> 0, hi = Math.floor(x / 4294967296) >>> 0;
    for (const w of hi ? [lo, hi] : [lo]) {
      h ^= Math.imul(w ^ (w >>> 16), 0x85ebca6b);
      h = Math.imul((h << 13) | (h >>> 19), 5) + 0xe6546b64;
    }
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Deterministic PRNG (mulberry32) seeded from `mix(...seed)`. Returns floats in [0, 1). */
export function rng(...seed: number[]): () => number {
  let a = mix(...seed);
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Integer in [0, n) from a generator. */
export function randInt(r: () => number, n: number): number {
  return Math.floor(r() * n);
}

/** Fisher-Yates permutation of 0..n-1 driven by `r`. */
export function permutation(n: number, r: () => number): Uint32Array {
  const p = new Uint32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    const t = p[i];
    p[i] = p[j];
    p[j] = t;
  }
  return p;
}
