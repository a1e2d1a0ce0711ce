/**
 * Test helpers shared by every package: seeded random data, tolerance comparison in the llm.c style
 * (`|got - ref| <= atol + rtol * |ref|`, first mismatches printed), finite-difference gradients, and
 * the `assertX` assertions the tests use. No `node:` imports: the op tests also run in a browser.
 * @module
 */
import { Rng } from "./rng.ts";

/** Environment variable that thins the op tests' case lists: "few" (see {@link fewCases}). */
export const TEST_CASES_ENV = "LVM_TEST_CASES";

/**
 * Whether `LVM_TEST_CASES=few` asks the op tests to keep, of a long list of cases that differ mostly
 * in the shaders they compile, one per code path: for a slow shader compiler such as the browser
 * run's (SwiftShader compiles a Winograd F(8x8) kernel in ~10 s). The full lists still run natively.
 * The browser test sets it (the page's query string stands for the environment there).
 */
export function fewCases(): boolean {
  const env = (globalThis as { Deno?: { env?: { get(k: string): string | undefined } } }).Deno?.env;
  try {
    return env?.get(TEST_CASES_ENV) === "few";
  } catch {
    return false; // no --allow-env
  }
}

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

/** Thrown by the assertions below when they fail. */
export class AssertionError extends Error {
  override name = "AssertionError";
}

function show(v: unknown): string {
  try {
    return JSON.stringify(
      v,
      (_k, x) =>
        ArrayBuffer.isView(x)
          ? Array.from(x as unknown as ArrayLike<unknown>)
          : typeof x === "bigint"
          ? `${x}n`
          : x,
    ) ?? String(v);
  } catch {
    return String(v);
  }
}

/**
 * Deep strict equality in the sense of Node's `deepStrictEqual`, for the values tests compare:
 * primitives by `Object.is`, same prototypes, arrays/plain objects by own enumerable keys, typed
 * arrays and ArrayBuffers element-wise, Maps and Sets by content, Dates by time, RegExps by
 * source and flags, Errors also by name and message.
 */
function same(a: unknown, b: unknown, seen = new Map<object, object>()): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (seen.get(a) === b) return true;
  seen.set(a, b);
  if (ArrayBuffer.isView(a) || a instanceof ArrayBuffer) {
    const x = ArrayBuffer.isView(a) && !(a instanceof DataView)
      ? a as unknown as ArrayLike<unknown>
      : new Uint8Array(ArrayBuffer.isView(a) ? a.buffer : a as ArrayBuffer);
    const y = ArrayBuffer.isView(b) && !(b instanceof DataView)
      ? b as unknown as ArrayLike<unknown>
      : new Uint8Array(ArrayBuffer.isView(b) ? (b as DataView).buffer : b as ArrayBuffer);
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) return false;
    return true;
  }
  if (a instanceof Date && !Object.is(a.getTime(), (b as Date).getTime())) return false;
  if (a instanceof RegExp && String(a) !== String(b)) return false;
  if (
    a instanceof Error &&
    (a.message !== (b as Error).message || a.name !== (b as Error).name)
  ) return false;
  if (a instanceof Set) {
    const rest = [...(b as Set<unknown>)];
    if (a.size !== rest.length) return false;
    for (const v of a) {
      const i = rest.findIndex((w) => same(v, w, seen));
      if (i < 0) return false;
      rest.splice(i, 1);
    }
  } else if (a instanceof Map) {
    const m = b as Map<unknown, unknown>;
    if (a.size !== m.size) return false;
    const rest = [...m];
    for (const [k, v] of a) {
      const i = rest.findIndex(([k2, v2]) => same(k, k2, seen) && same(v, v2, seen));
      if (i < 0) return false;
      rest.splice(i, 1);
    }
  }
  const ka = Object.keys(a), kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) =>
    Object.hasOwn(b, k) &&
    same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], seen)
  );
}

function fail(msg: string | undefined, fallback: () => string): never {
  throw new AssertionError(msg ?? fallback());
}

/** Throws unless `cond` is truthy. */
export function assert(cond: unknown, msg?: string): asserts cond {
  if (!cond) fail(msg, () => `expected a truthy value, found ${show(cond)}`);
}

/** Deep strict equality (see the module's `same`: Node's `deepStrictEqual` semantics). */
export function assertEquals<T>(got: unknown, want: T, msg?: string): asserts got is T {
  if (!same(got, want)) fail(msg, () => `expected ${show(want)}, found ${show(got)}`);
}

/** Throws unless `got` and `want` are the same value (`Object.is`), objects by identity. */
export function assertStrictEquals<T>(got: unknown, want: T, msg?: string): asserts got is T {
  if (!Object.is(got, want)) fail(msg, () => `expected ${show(want)}, found ${show(got)}`);
}

/** Throws unless `re` matches `text`. */
export function assertMatch(text: string, re: RegExp, msg?: string): void {
  if (!re.test(text)) fail(msg, () => `${show(text)} does not match ${re}`);
}

type ErrorClass = abstract new (...args: any[]) => Error;

/**
 * Throws unless `fn` throws an instance of `cls` whose message contains `includes` (a string) or
 * matches it (a RegExp). Returns the error for further checks.
 */
export function assertThrows(
  fn: () => unknown,
  cls: ErrorClass,
  includes: string | RegExp = "",
): Error {
  try {
    fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new AssertionError(`expected ${cls.name} ${want(includes)}, but nothing was thrown`);
}

/** Async {@link assertThrows}. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  cls: ErrorClass,
  includes: string | RegExp = "",
): Promise<Error> {
  try {
    await fn();
  } catch (e) {
    return checkError(e, cls, includes);
  }
  throw new AssertionError(`expected ${cls.name} ${want(includes)}, but nothing was thrown`);
}

function want(includes: string | RegExp): string {
  return typeof includes === "string" ? `containing "${includes}"` : `matching ${includes}`;
}

function checkError(e: unknown, cls: ErrorClass, includes: string | RegExp): Error {
  if (!(e instanceof cls)) {
    throw new AssertionError(
      `expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`,
    );
  }
  if (typeof includes === "string" ? !e.message.includes(includes) : !includes.test(e.message)) {
    throw new AssertionError(`expected ${cls.name} message ${want(includes)}, got: ${e.message}`);
  }
  return e;
}
