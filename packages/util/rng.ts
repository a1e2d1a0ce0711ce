/**
 * The one seeded random number generator of the project: mulberry32, whose whole state is one u32
 * (so a run can save it and resume the exact sequence), plus `mix`, a murmur3-style hash that
 * derives independent seeds from names (`Rng.from(seed, "shuffle", epoch)`), which is what lets
 * dataset builds run in parts and resume without depending on the order work was done in.
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

/**
 * A seeded PRNG (mulberry32): uniform floats in [0, 1), reproducible per seed; `state` can be
 * saved and given back to the constructor to continue the exact sequence.
 *
 * @example
 * ```ts
 * import { Rng } from "@lvm/util";
 * const a = new Rng(7), b = new Rng(7);
 * console.log(a.next() === b.next()); // true
 * const saved = a.state;
 * console.log(a.next() === new Rng(saved).next()); // true
 * ```
 */
export class Rng {
  #a: number;
  /** Starts from `seed` (a u32 state; any finite number is taken modulo 2^32). */
  constructor(seed = 0) {
    if (!Number.isFinite(seed)) throw new RangeError(`Rng seed must be a number, found ${seed}`);
    this.#a = seed >>> 0;
  }
  /** An Rng seeded from `mix(...seed)`: independent streams named by integers. */
  static from(...seed: number[]): Rng {
    return new Rng(mix(...seed));
  }
  /** An Rng continuing from a saved {@link Rng.state}. */
  static fromState(state: number): Rng {
    return new Rng(state);
  }
  /** The internal state (a u32): `new Rng(state)` continues the exact sequence. */
  get state(): number {
    return this.#a;
  }
  set state(s: number) {
    this.#a = s >>> 0;
  }
  /** The next float in [0, 1). */
  next(): number {
    this.#a = (this.#a + 0x6d2b79f5) >>> 0;
    let t = this.#a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** A standard normal draw (Box-Muller, two uniforms per draw). */
  normal(): number {
    const u = Math.max(this.next(), 1e-12), v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
  /** This generator as a plain function `() => float in [0, 1)`. */
  fn(): () => number {
    return () => this.next();
  }
}

/** A generator function `() => float in [0, 1)` seeded from `mix(...seed)`. */
export function rng(...seed: number[]): () => number {
  return Rng.from(...seed).fn();
}

/** Integer in [0, n) from a generator function. */
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
