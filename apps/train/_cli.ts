/**
 * What the `deno task train` subcommands share beyond `@lvm/cli`: finding a model folder. The
 * re-exported `Command`, `UsageError` and the old `intOption` are kept for the commands that have
 * not switched to `@lvm/cli` yet (model.ts, tokenizer.ts); remove them once nothing imports them.
 * @module
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { UsageError } from "@lvm/cli";
import { resolveCheckpoint } from "@lvm/train";
export { type Command, UsageError } from "@lvm/cli";

/**
 * The model folder `path` (given as `--flag`) names: itself when it holds config.json (a Hugging
 * Face folder or a checkpoint-STEP folder), else a training run folder's latest checkpoint; a
 * usage error when it is neither.
 */
export async function modelFolder(flag: string, path: string): Promise<string> {
  if (existsSync(join(path, "config.json"))) return path;
  try {
    return await resolveCheckpoint(path);
  } catch {
    throw new UsageError(
      `--${flag} ${path}: holds no config.json and no checkpoint (expected a Hugging Face ` +
        `model folder, a checkpoint-STEP folder or a training run folder)`,
    );
  }
}

/**
 * Parses an integer flag value within bounds; the error names the flag.
 * @deprecated `intFlag` of `@lvm/cli` (its range errors say `expected >= 1`, this one's
 * `expected a value in [1, Infinity]`, which tests of the unswitched commands still expect).
 */
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
