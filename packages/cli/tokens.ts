/**
 * Token lists on the command line: `--tokens 5,17,3`, `"5 17 3"`, `[5,17,3]`, or `@FILE` holding
 * any of those, and the check that ids fit a model's vocabulary.
 * @module
 */
import { UsageError } from "./command.ts";

/**
 * Parses a token list: `"5,17,3"`, `"5 17 3"`, `"[5,17,3]"`, or `"@path"` to read any of those from a
 * file. Every item must be a non-negative integer; the error names the first one that is not.
 *
 * @example
 * ```ts
 * import { parseTokens } from "@lvm/cli";
 * console.log(parseTokens("5, 17 3")); // [ 5, 17, 3 ]
 * ```
 */
export function parseTokens(spec: string, flag = "--tokens"): number[] {
  let text = spec, where = flag;
  if (spec.startsWith("@")) {
    const path = spec.slice(1);
    where = path;
    try {
      text = Deno.readTextFileSync(path);
    } catch (e) {
      throw new UsageError(`${flag} ${spec}: cannot read ${path}: ${(e as Error).message}`);
    }
  }
  const trimmed = text.trim();
  let items: unknown[];
  if (trimmed.startsWith("[")) {
    try {
      items = JSON.parse(trimmed);
    } catch (e) {
      throw new UsageError(`${where}: not a valid JSON array: ${(e as Error).message}`);
    }
    if (!Array.isArray(items)) throw new UsageError(`${where}: expected a JSON array of ids`);
  } else {
    items = trimmed.split(/[\s,]+/).filter((s) => s.length > 0);
  }
  if (items.length === 0) throw new UsageError(`${where}: no token ids found`);
  return items.map((v, i) => {
    const n = typeof v === "number"
      ? v
      : typeof v === "string" && /^-?\d+$/.test(v)
      ? Number(v)
      : NaN;
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new UsageError(
        `${where}: item ${i} is ${JSON.stringify(v)}, expected a non-negative integer token id`,
      );
    }
    return n;
  });
}

/** Throws a RangeError naming the first id outside [0, vocab) and its position. */
export function checkVocab(ids: readonly number[], vocab: number, model: string): void {
  const i = ids.findIndex((id) => id >= vocab);
  if (i >= 0) {
    throw new RangeError(
      `token id ${ids[i]} (position ${i}) is outside the vocabulary of ${model}: expected 0..${
        vocab - 1
      }`,
    );
  }
}
