/**
 * Flags: `parseArgs` that reads a negative number as a flag's value ({@link parseFlags}), and the
 * parsers that turn a flag's text into a checked value: integers and floats with ranges, seeds,
 * enums, durations, required flags. Every error is a {@link UsageError} that names the flag, the
 * value given and what was expected (`--max-new-tokens -5: expected >= 0`).
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { isUsageError, UsageError } from "./command.ts";

/** A number written as a flag value: `-5`, `-0.5`, `-.5`, `-1e-3`, `-Infinity`. */
const NEGATIVE_NUMBER = /^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-Infinity$/;

/**
 * Joins `--flag -5` into `--flag=-5` for every string-valued flag of `options` (also its short
 * alias `-f -5`), so that `parseArgs` takes a negative number as the flag's value instead of
 * reporting it as an ambiguous flag. Arguments after `--` are left alone.
 */
export function joinNegativeValues(
  args: readonly string[],
  options: ParseArgsConfig["options"] = {},
): string[] {
  const takesValue = (a: string): boolean => {
    if (a.startsWith("--")) return options[a.slice(2)]?.type === "string";
    if (/^-[^-]$/.test(a)) {
      return Object.values(options).some((o) => o.short === a[1] && o.type === "string");
    }
    return false;
  };
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      out.push(...args.slice(i));
      break;
    }
    if (
      !a.includes("=") && takesValue(a) && i + 1 < args.length && NEGATIVE_NUMBER.test(args[i + 1])
    ) {
      out.push(a.startsWith("--") ? `${a}=${args[i + 1]}` : `${a}${args[i + 1]}`);
      i++;
    } else out.push(a);
  }
  return out;
}

/**
 * `node:util`'s `parseArgs` (strict unless `strict: false` is given), with two fixes: a negative
 * number is read as a string flag's value (`--seed -1`, like `--seed=-1`), and a bad flag (unknown,
 * missing value, a positional where none is allowed) is a {@link UsageError}.
 *
 * @example
 * ```ts
 * import { parseFlags } from "@lvm/cli";
 * const { values } = parseFlags({ args: ["--bias", "-5"], options: { bias: { type: "string" } } });
 * console.log(values.bias); // "-5"
 * ```
 */
export function parseFlags<const T extends ParseArgsConfig>(
  config: T,
): ReturnType<typeof parseArgs<T>> {
  const args = joinNegativeValues(config.args ?? [], config.options);
  try {
    return parseArgs({ strict: true, ...config, args }) as ReturnType<typeof parseArgs<T>>;
  } catch (e) {
    if (isUsageError(e) && !(e instanceof UsageError)) throw new UsageError((e as Error).message);
    throw e;
  }
}

/** The bounds a number flag must respect. */
export interface NumberRange {
  /** Smallest allowed value (inclusive). */
  min?: number;
  /** Largest allowed value (inclusive). */
  max?: number;
  /** The value must be greater than this (exclusive lower bound, e.g. 0 for a temperature). */
  above?: number;
}

const flagName = (flag: string) => `--${flag.replace(/^-+/, "")}`;

function rangeText({ min, max, above }: NumberRange): string {
  const lo = above !== undefined
    ? `(${above}`
    : min !== undefined && min > -Infinity
    ? `[${min}`
    : "";
  const hi = max !== undefined && max < Infinity ? `${max}]` : "";
  if (lo && hi) return `a value in ${lo}, ${hi}`;
  if (lo) return `${above !== undefined ? ">" : ">="} ${lo.slice(1)}`;
  return `<= ${max}`;
}

function parseNumber(flag: string, value: string, integer: boolean, range: NumberRange): number {
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || (integer && !Number.isSafeInteger(n))) {
    throw new UsageError(
      `${flagName(flag)} ${value}: expected ${integer ? "an integer" : "a finite number"}`,
    );
  }
  const { min = -Infinity, max = Infinity, above } = range;
  if (n < min || n > max || (above !== undefined && !(n > above))) {
    throw new UsageError(`${flagName(flag)} ${value}: expected ${rangeText(range)}`);
  }
  return n;
}

/**
 * An integer flag within `range`; `fallback` (a number, or `undefined` for "not given") when the
 * flag was not given. `flag` is the name with or without its dashes.
 *
 * @example
 * ```ts
 * import { intFlag } from "@lvm/cli";
 * console.log(intFlag("steps", "40", 100, { min: 1 })); // 40
 * console.log(intFlag("steps", undefined, 100, { min: 1 })); // 100
 * ```
 */
export function intFlag<F extends number | undefined>(
  flag: string,
  value: string | undefined,
  fallback: F,
  range: NumberRange = {},
): number | F {
  return value === undefined ? fallback : parseNumber(flag, value, true, range);
}

/** A finite number flag within `range`; `fallback` when the flag was not given. */
export function floatFlag<F extends number | undefined>(
  flag: string,
  value: string | undefined,
  fallback: F,
  range: NumberRange = {},
): number | F {
  return value === undefined ? fallback : parseNumber(flag, value, false, range);
}

/** An integer flag >= 1 (and <= `max`). */
export function positiveInt<F extends number | undefined>(
  flag: string,
  value: string | undefined,
  fallback: F,
  max?: number,
): number | F {
  return intFlag(flag, value, fallback, { min: 1, max });
}

/** An integer flag >= 0 (and <= `max`). */
export function nonNegativeInt<F extends number | undefined>(
  flag: string,
  value: string | undefined,
  fallback: F,
  max?: number,
): number | F {
  return intFlag(flag, value, fallback, { min: 0, max });
}

/** A number flag > 0 (and <= `max`). */
export function positiveFloat<F extends number | undefined>(
  flag: string,
  value: string | undefined,
  fallback: F,
  max?: number,
): number | F {
  return floatFlag(flag, value, fallback, { above: 0, max });
}

/** A number flag >= 0 (and <= `max`). */
export function nonNegativeFloat<F extends number | undefined>(
  flag: string,
  value: string | undefined,
  fallback: F,
  max?: number,
): number | F {
  return floatFlag(flag, value, fallback, { min: 0, max });
}

/** A seed flag: an integer in [0, 2^32 - 1] (what `@lvm/util`'s `Rng` takes). */
export function seedFlag(flag: string, value: string | undefined, fallback = 0): number {
  return intFlag(flag, value, fallback, { min: 0, max: 2 ** 32 - 1 });
}

/**
 * A flag whose value is one of `choices`; `fallback` when it was not given.
 *
 * @example
 * ```ts
 * import { enumFlag } from "@lvm/cli";
 * const dtype = enumFlag("dtype", "f16", ["f32", "f16"] as const, "f32");
 * console.log(dtype); // "f16"
 * ```
 */
export function enumFlag<const T extends string, F extends T | undefined = T>(
  flag: string,
  value: string | undefined,
  choices: readonly T[],
  fallback: F,
): T | F {
  if (value === undefined) return fallback;
  if ((choices as readonly string[]).includes(value)) return value as T;
  const list = choices.length === 2
    ? `${choices[0]} or ${choices[1]}`
    : `one of ${choices.join(", ")}`;
  throw new UsageError(`${flagName(flag)} ${value}: expected ${list}`);
}

/** The flag's value, or a {@link UsageError} `--model DIR is required`. */
export function required(flag: string, value: string | undefined, what = "VALUE"): string {
  if (value === undefined || value === "") {
    throw new UsageError(`${flagName(flag)} ${what} is required`);
  }
  return value;
}

const DURATION_UNITS: Record<string, number> = { ms: 1e-3, s: 1, m: 60, h: 3600, d: 86400 };

/**
 * A duration flag in seconds: `90` (seconds), `90s`, `1.5m`, `2h`, `1h30m`, `250ms`, `1d`;
 * `fallback` when it was not given. Negative durations are errors.
 *
 * @example
 * ```ts
 * import { parseDuration } from "@lvm/cli";
 * console.log(parseDuration("time", "1h30m", undefined)); // 5400
 * ```
 */
export function parseDuration<F extends number | undefined>(
  flag: string,
  value: string | undefined,
  fallback: F,
): number | F {
  if (value === undefined) return fallback;
  const text = value.trim();
  if (/^\d+(\.\d+)?$/.test(text)) return Number(text);
  const parts = [...text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)];
  if (!parts.length || parts.map((p) => p[0]).join("") !== text) {
    throw new UsageError(
      `${flagName(flag)} ${value}: expected a duration such as 90, 90s, 5m, 1h30m or 250ms`,
    );
  }
  return parts.reduce<number>((s, p) => s + Number(p[1]) * DURATION_UNITS[p[2]], 0);
}

/**
 * `fn()`, with an error of class `kind` (default `RangeError`: a package's "bad setting") it throws
 * turned into a {@link UsageError} with the same message, for settings that come from flags.
 *
 * @example
 * ```ts
 * import { asUsage, UsageError } from "@lvm/cli";
 * try {
 *   asUsage(() => {
 *     throw new RangeError("batch must be >= 1");
 *   });
 * } catch (e) {
 *   console.log(e instanceof UsageError); // true
 * }
 * ```
 */
export function asUsage<T>(
  fn: () => T,
  kind: abstract new (...a: never[]) => Error = RangeError,
): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof kind && !(e instanceof UsageError)) throw new UsageError(e.message);
    throw e;
  }
}

/** The names in a space- or newline-separated list, as a union type. */
type Words<S extends string> = S extends `${infer H} ${infer T}` ? Words<H> | Words<T>
  : S extends `${infer H}\n${infer T}` ? Words<H> | Words<T>
  : S extends "" ? never
  : S;

/** An options table with `T` as every name's entry. */
type FlagTable<S extends string, T> = { [K in Words<S>]: T };

/**
 * A {@link parseFlags} options table from lists of flag names (separated by spaces or newlines):
 * `string` flags take a value, `boolean` flags take none, `multiple` flags take a value and may be
 * repeated. The values `parseFlags` returns are typed by name, as with a written-out table.
 *
 * @example
 * ```ts
 * import { flagOptions, parseFlags } from "@lvm/cli";
 * const options = flagOptions({ string: "out steps", boolean: "quiet", multiple: "images" });
 * const { values } = parseFlags({ args: ["--images", "a.png", "--quiet"], options });
 * console.log(values.images, values.quiet, values.out); // [ "a.png" ] true undefined
 * ```
 */
export function flagOptions<
  const S extends string = "",
  const B extends string = "",
  const M extends string = "",
>(
  names: { string?: S; boolean?: B; multiple?: M },
):
  & FlagTable<S, { type: "string" }>
  & FlagTable<B, { type: "boolean" }>
  & FlagTable<M, {
    type: "string";
    multiple: true;
  }> {
  const table: Record<string, { type: "string" | "boolean"; multiple?: true }> = {};
  const words = (s = "") => s.split(/\s+/).filter((w) => w);
  for (const w of words(names.string)) table[w] = { type: "string" };
  for (const w of words(names.boolean)) table[w] = { type: "boolean" };
  for (const w of words(names.multiple)) table[w] = { type: "string", multiple: true };
  return table as never;
}
