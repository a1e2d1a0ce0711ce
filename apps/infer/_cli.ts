/**
 * What every `deno task infer` subcommand shares: the command shape, usage errors, and token lists
 * (`--tokens 5,17,3` or `--tokens @FILE` with ids separated by commas/white space or a JSON array).
 * @module
 */

/** One subcommand of the inference CLI. */
export interface Command {
  /** One line for the command list. */
  summary: string;
  /** Full usage text printed by `--help` and after a usage error. */
  usage: string;
  /** Runs with the arguments after the subcommand name; resolves to the exit code. */
  run(args: string[]): Promise<number>;
}

/** A bad command line: printed with the command's usage, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/**
 * Parses a token list: `"5,17,3"`, `"5 17 3"`, `"[5,17,3]"`, or `"@path"` to read any of those from a
 * file. Every item must be a non-negative integer; the error names the first one that is not.
 */
export function parseTokens(spec: string): number[] {
  let text = spec, where = "--tokens";
  if (spec.startsWith("@")) {
    const path = spec.slice(1);
    where = path;
    try {
      text = Deno.readTextFileSync(path);
    } catch (e) {
      throw new UsageError(`--tokens ${spec}: cannot read ${path}: ${(e as Error).message}`);
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

/** Parses a number option: finite, optionally an integer within bounds; the error names the flag. */
export function numberOption(
  flag: string,
  value: string | undefined,
  fallback: number,
  { integer = false, min = -Infinity, max = Infinity } = {},
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || (integer && !Number.isInteger(n))) {
    throw new UsageError(`${flag} ${value}: expected ${integer ? "an integer" : "a number"}`);
  }
  if (n < min || n > max) {
    throw new UsageError(`${flag} ${value}: expected a value in [${min}, ${max}]`);
  }
  return n;
}

/**
 * A checkpoint-load progress callback (`loadLlama`'s `onTensor`): a line through `log` at most every
 * `everyMs` (a 7B takes minutes to load on a CPU), none for a load faster than that.
 */
export function loadProgress(
  log: (line: string) => unknown,
  everyMs = 5000,
): (name: string, index: number, total: number) => void {
  const t0 = performance.now();
  let last = t0;
  return (_name, index, total) => {
    const now = performance.now();
    if (now - last < everyMs) return;
    last = now;
    const s = (now - t0) / 1000, done = index + 1;
    const eta = (s / done) * (total - done);
    log(`  loaded ${done}/${total} tensors in ${s.toFixed(0)} s, eta ${eta.toFixed(0)} s`);
  };
}
