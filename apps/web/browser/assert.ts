/**
 * `node:assert/strict` as the browser bundle of the op tests sees it (`bundle_map.json` points it
 * here): the functions the tests and `@lvm/util/testing` use — `ok`, `equal`/`strictEqual`,
 * `notEqual`, `deepStrictEqual`/`deepEqual`, `notDeepStrictEqual`, `throws`, `rejects`, `match`,
 * `fail`, and the default `assert` — with Node's strict semantics for the values tests compare
 * (primitives, arrays, typed arrays, plain objects, maps, sets, errors by class, RegExp, object or
 * validation function).
 * @module
 */

/** Node's AssertionError stand-in. */
export class AssertionError extends Error {
  override name = "AssertionError";
}

function show(v: unknown): string {
  try {
    return JSON.stringify(v, (_k, x) => ArrayBuffer.isView(x) ? Array.from(x as never) : x) ??
      String(v);
  } catch {
    return String(v);
  }
}

function same(a: unknown, b: unknown): boolean {
  if (Object.is(a, b)) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Object.getPrototypeOf(a) !== Object.getPrototypeOf(b)) return false;
  if (ArrayBuffer.isView(a)) {
    const x = a as unknown as ArrayLike<unknown>, y = b as unknown as ArrayLike<unknown>;
    if (x.length !== y.length) return false;
    for (let i = 0; i < x.length; i++) if (!Object.is(x[i], y[i])) return false;
    return true;
  }
  if (a instanceof Map || a instanceof Set) {
    return same([...(a as Map<unknown, unknown>)], [...(b as Map<unknown, unknown>)]);
  }
  if (a instanceof Error && (a.message !== (b as Error).message)) return false;
  const ka = Object.keys(a), kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) =>
    Object.hasOwn(b, k) &&
    same((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k])
  );
}

function check(cond: boolean, msg: string | Error | undefined, fallback: () => string): void {
  if (cond) return;
  if (msg instanceof Error) throw msg;
  throw new AssertionError(msg ?? fallback());
}

/** Throws unless `v` is truthy. */
export function ok(v: unknown, msg?: string | Error): asserts v {
  check(!!v, msg, () => `expected a truthy value, found ${show(v)}`);
}

/** Throws unless `got` is `want` (Object.is). */
export function strictEqual<T>(got: unknown, want: T, msg?: string | Error): asserts got is T {
  check(Object.is(got, want), msg, () => `expected ${show(want)}, found ${show(got)}`);
}
export const equal = strictEqual;

/** Throws if `got` is `want`. */
export function notStrictEqual(got: unknown, want: unknown, msg?: string | Error): void {
  check(!Object.is(got, want), msg, () => `expected anything but ${show(want)}`);
}
export const notEqual = notStrictEqual;

/** Throws unless `got` and `want` are deeply and strictly equal. */
export function deepStrictEqual<T>(got: unknown, want: T, msg?: string | Error): asserts got is T {
  check(same(got, want), msg, () => `expected ${show(want)}, found ${show(got)}`);
}
export const deepEqual = deepStrictEqual;

/** Throws if `got` and `want` are deeply and strictly equal. */
export function notDeepStrictEqual(got: unknown, want: unknown, msg?: string | Error): void {
  check(!same(got, want), msg, () => `expected anything but ${show(want)}`);
}
export const notDeepEqual = notDeepStrictEqual;

/** Throws unless `s` matches `re`. */
export function match(s: string, re: RegExp, msg?: string | Error): void {
  check(re.test(s), msg, () => `${show(s)} does not match ${re}`);
}

/** Always throws. */
export function fail(msg: string | Error = "Failed"): never {
  if (msg instanceof Error) throw msg;
  throw new AssertionError(msg);
}

type Expected =
  | (new (...a: any[]) => unknown)
  | ((e: unknown) => boolean)
  | RegExp
  | Record<string, unknown>;

function matches(e: unknown, expected: Expected | undefined): boolean {
  if (expected === undefined) return true;
  if (expected instanceof RegExp) return expected.test(String(e));
  if (typeof expected === "function") {
    if (expected.prototype !== undefined && e instanceof (expected as new () => unknown)) {
      return true;
    }
    if (expected.prototype instanceof Error || expected === Error) return false;
    return (expected as (e: unknown) => boolean)(e) === true;
  }
  const err = e as Record<string, unknown>;
  return Object.entries(expected).every(([k, v]) =>
    v instanceof RegExp && typeof err?.[k] === "string"
      ? v.test(err[k] as string)
      : same(err?.[k], v)
  );
}

/** Throws unless `fn` throws an error matching `expected`. */
export function throws(fn: () => unknown, expected?: Expected | string, msg?: string): void {
  if (typeof expected === "string") [msg, expected] = [expected, undefined];
  try {
    fn();
  } catch (e) {
    check(matches(e, expected), msg, () => `unexpected error: ${e}`);
    return;
  }
  fail(msg ?? "Missing expected exception.");
}

/** Rejects unless `p` (or what `p()` returns) rejects with an error matching `expected`. */
export async function rejects(
  p: Promise<unknown> | (() => Promise<unknown>),
  expected?: Expected | string,
  msg?: string,
): Promise<void> {
  if (typeof expected === "string") [msg, expected] = [expected, undefined];
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    check(matches(e, expected), msg, () => `unexpected rejection: ${e}`);
    return;
  }
  fail(msg ?? "Missing expected rejection.");
}

/** `assert(v)` is `ok(v)`, with the others as properties. */
const assert = Object.assign((v: unknown, msg?: string | Error) => ok(v, msg), {
  ok,
  equal,
  strictEqual,
  notEqual,
  notStrictEqual,
  deepEqual,
  deepStrictEqual,
  notDeepEqual,
  notDeepStrictEqual,
  match,
  fail,
  throws,
  rejects,
  AssertionError,
  strict: undefined as unknown,
});
assert.strict = assert;
export { assert as strict };
export default assert;
