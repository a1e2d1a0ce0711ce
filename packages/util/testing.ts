/**
 * Test helpers shared by every package: seeded random data, tolerance comparison in the llm.c style
 * (`|got - ref| <= atol + rtol * |ref|`, first mismatches printed), and finite-difference gradients.
 * @module
 */
import { deepStrictEqual } from "node:assert/strict";
import { Rng } from "./rng.ts";

/**
 * Deterministic PRNG (mulberry32) started from the raw state `seed` (no `mix`, unlike `rng` of
 * `@lvm/util`): the same sequence as `new Rng(seed)`. Returns floats in [0, 1).
 */
export function rng(seed: number): () => number {
  return new Rng(seed).fn();
}

/** `n` UNIFORM floats in [lo, hi) (not normal: see {@link randNormal} for Gaussian draws). */
export function randu(n: number, seed = 1, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * r();
  return out;
}

/** `n` standard-normal floats (Box-Muller), times `std`, plus `mean`. */
export function randNormal(n: number, seed = 1, mean = 0, std = 1): Float32Array {
  const r = new Rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = mean + std * r.normal();
  return out;
}

/** `n` integers in [0, max). */
export function randint(n: number, max: number, seed = 1): Int32Array {
  const r = rng(seed);
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.floor(r() * max);
  return out;
}

/** Tolerances for {@link assertClose}. */
export interface Tolerance {
  atol?: number;
  rtol?: number;
}

/**
 * Throws unless every element satisfies `|got - ref| <= atol + rtol*|ref|` (NaN/Inf must match exactly).
 * The message lists the first mismatches with their indices.
 */
export function assertClose(
  got: ArrayLike<number>,
  ref: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-4 }: Tolerance = {},
  label = "tensor",
): void {
  if (got.length !== ref.length) {
    throw new Error(`${label}: length ${got.length} != reference ${ref.length}`);
  }
  const bad: string[] = [];
  let count = 0;
  let worst = 0;
  for (let i = 0; i < ref.length; i++) {
    const g = got[i], r = ref[i];
    const ok = Number.isFinite(r)
      ? Math.abs(g - r) <= atol + rtol * Math.abs(r)
      : Object.is(g, r) || (Number.isNaN(g) && Number.isNaN(r));
    if (!ok) {
      count++;
      worst = Math.max(worst, Math.abs(g - r));
      if (bad.length < 8) bad.push(`  [${i}] got ${g}, expected ${r}`);
    }
  }
  if (count) {
    throw new Error(
      `${label}: ${count}/${ref.length} elements differ (worst |diff| ${worst}, atol ${atol}, rtol ${rtol})\n${
        bad.join("\n")
      }`,
    );
  }
}

/**
 * Central finite-difference gradient of a scalar function `f` at `x` (f64 on the host), for checking
 * backward passes: returns d f / d x[i] for each i in `indices` (default: all).
 */
export function finiteDiff(
  f: (x: Float64Array) => number,
  x: ArrayLike<number>,
  eps = 1e-3,
  indices?: number[],
): Float64Array {
  const xs = Float64Array.from(x);
  const idx = indices ?? [...xs.keys()];
  const out = new Float64Array(idx.length);
  idx.forEach((i, k) => {
    const v = xs[i];
    xs[i] = v + eps;
    const a = f(xs);
    xs[i] = v - eps;
    const b = f(xs);
    xs[i] = v;
    out[k] = (a - b) / (2 * eps);
  });
  return out;
}

/** Deep equality (node:assert/strict). */
export function assertEquals<T>(got: T, want: T, msg?: string): void {
  deepStrictEqual(got, want, msg);
}

/** Throws unless `fn` throws an instance of `cls` whose message contains `includes`. */
export function assertThrows(
  fn: () => unknown,
  cls: abstract new (...args: any[]) => Error,
  includes = "",
): Error {
  try {
    fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new Error(`expected ${cls.name} containing "${includes}", but nothing was thrown`);
}

/** Async {@link assertThrows}. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls: abstract new (...args: any[]) => Error,
  includes = "",
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new Error(`expected ${cls.name} containing "${includes}", but nothing was thrown`);
}

function checkError(e: unknown, cls: abstract new (...args: any[]) => Error, includes: string) {
  if (!(e instanceof cls)) {
    throw new Error(`expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
  }
  if (!e.message.includes(includes)) {
    throw new Error(`expected ${cls.name} message to contain "${includes}", got: ${e.message}`);
  }
  return e;
}
