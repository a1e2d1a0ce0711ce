/**
 * Weight initialisation as Hugging Face's `LlamaPreTrainedModel._init_weights`: every Linear and the
 * embedding ~ N(0, 0.02^2), RMSNorm weights = 1. Seeded and reproducible (one stream per tensor, so a
 * tensor's values do not depend on the sizes of the others).
 * @module
 */
import { type LlamaConfig, paramSpecs } from "./config.ts";

/** Options of {@link initWeights}. */
export interface InitOptions {
  /** Seed of the random streams (default 0). */
  seed?: number;
  /** Standard deviation of the matrices (default 0.02, HF `initializer_range`). */
  std?: number;
}

/** Host weights by Hugging Face name, in checkpoint order. */
export type HostWeights = Map<string, Float32Array>;

/** Fresh weights for `config`: matrices N(0, std^2), norm weights 1. */
export function initWeights(config: LlamaConfig, options: InitOptions = {}): HostWeights {
  const { seed = 0, std = 0.02 } = options;
  const out: HostWeights = new Map();
  for (const { name, shape } of paramSpecs(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    out.set(
      name,
      shape.length === 1 ? new Float32Array(n).fill(1) : normal(n, std, hashSeed(seed, name)),
    );
  }
  return out;
}

/** `n` samples of N(0, std^2) from a seeded stream (xorshift128+ with Box-Muller). */
export function normal(n: number, std: number, seed: number): Float32Array {
  // splitmix32 expands the seed into the 4-word state of xoshiro128+.
  let s = seed >>> 0;
  const split = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split(), b = split(), c = split(), d = split();
  const next = () => {
    const r = (a + d) >>> 0;
    const t = b << 9;
    c ^= a;
    d ^= b;
    b ^= c;
    a ^= d;
    c ^= t;
    d = (d << 11) | (d >>> 21);
    return (r >>> 8) / 16777216; // 24 bits in [0, 1)
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u1 = next() || 2 ** -25, u2 = next();
    const r = Math.sqrt(-2 * Math.log(u1)) * std;
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

/** A 32-bit seed for one named tensor (FNV-1a of the name mixed with the run seed). */
function hashSeed(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ (seed >>> 0);
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return (h ^ Math.imul(seed >>> 0, 0x9e3779b1)) >>> 0;
}
