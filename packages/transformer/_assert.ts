/**
 * Tiny assertion helpers for this package's tests (`@std/assert` lives on JSR, which is unreachable;
 * node:assert's `throws` cannot check a message substring and class together as briefly).
 * @module
 */
import { deepStrictEqual } from "node:assert/strict";

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
