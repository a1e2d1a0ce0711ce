/**
 * What every `deno task train` subcommand shares: the command shape and usage errors (the same
 * shape as the inference CLI's).
 * @module
 */

/** One subcommand of the trainer CLI. */
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

/** Parses an integer flag value within bounds; the error names the flag. */
export function intOption(
  flag: string,
  value: string | undefined,
  fallback: number,
  { min = -Infinity, max = Infinity } = {},
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === "" || !Number.isInteger(n)) {
    throw new UsageError(`--${flag} ${value}: expected an integer`);
  }
  if (n < min || n > max) {
    throw new UsageError(`--${flag} ${value}: expected a value in [${min}, ${max}]`);
  }
  return n;
}
