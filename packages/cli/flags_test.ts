import { deepStrictEqual, equal, throws } from "node:assert/strict";
import {
  asUsage,
  enumFlag,
  flagOptions,
  floatFlag,
  intFlag,
  joinNegativeValues,
  nonNegativeFloat,
  nonNegativeInt,
  parseDuration,
  parseFlags,
  positiveFloat,
  positiveInt,
  required,
  seedFlag,
  UsageError,
} from "./mod.ts";

/** Asserts `f` throws a UsageError whose message matches `re`. */
function usage(f: () => unknown, re: RegExp) {
  throws(f, (e) => e instanceof UsageError && re.test(e.message));
}

Deno.test("parseFlags()", async (t) => {
  const options = {
    n: { type: "string", short: "n" },
    json: { type: "boolean" },
  } as const;
  await t.step("a negative number is a value: --flag -5, --flag=-5, -n -5", () => {
    for (const args of [["--n", "-5"], ["--n=-5"], ["-n", "-5"]]) {
      deepStrictEqual(parseFlags({ args, options }).values.n, "-5", args.join(" "));
    }
    for (const v of ["-0.5", "-.5", "-1e-3", "-2E+4", "-Infinity"]) {
      equal(parseFlags({ args: ["--n", v], options }).values.n, v);
    }
  });
  await t.step("a flag after a string flag is still a flag; a boolean flag takes no value", () => {
    usage(() => parseFlags({ args: ["--n", "--json"], options }), /--n/);
    usage(() => parseFlags({ args: ["--json", "-5"], options }), /-5|Unknown/);
    deepStrictEqual(
      joinNegativeValues(["--n", "-5", "--", "--n", "-3"], options),
      ["--n=-5", "--", "--n", "-3"],
    );
  });
  await t.step("unknown flags and stray positionals are usage errors", () => {
    usage(() => parseFlags({ args: ["--frob"], options }), /frob/);
    usage(() => parseFlags({ args: ["x"], options }), /x/);
    deepStrictEqual(
      parseFlags({ args: ["x", "--json"], options, allowPositionals: true }).positionals,
      ["x"],
    );
  });
});

Deno.test("number flags", async (t) => {
  await t.step("values, fallbacks, dashes optional in the name", () => {
    equal(intFlag("steps", "40", 100, { min: 1 }), 40);
    equal(intFlag("--steps", undefined, 100), 100);
    equal(intFlag("steps", undefined, undefined), undefined);
    equal(floatFlag("lr", "1.5e-4", 1), 1.5e-4);
    equal(floatFlag("bias", "-2.5", 0), -2.5);
    equal(positiveInt("count", "3", 1), 3);
    equal(nonNegativeInt("top-k", "0", 50), 0);
    equal(positiveFloat("temperature", "0.7", 1), 0.7);
    equal(nonNegativeFloat("decay", "0", 0.1), 0);
    equal(seedFlag("seed", "4294967295"), 2 ** 32 - 1);
  });
  await t.step("range errors say the bound", () => {
    usage(() => positiveInt("max-new-tokens", "-5", 256), /^--max-new-tokens -5: expected >= 1$/);
    usage(() => nonNegativeInt("top-k", "-1", 50), /^--top-k -1: expected >= 0$/);
    usage(() => positiveFloat("temperature", "0", 1), /^--temperature 0: expected > 0$/);
    usage(() => floatFlag("top-p", "1.5", 1, { above: 0, max: 1 }), /expected a value in \(0, 1\]/);
    usage(() => intFlag("steps", "0", 1, { min: 1, max: 10 }), /expected a value in \[1, 10\]/);
    usage(() => intFlag("x", "11", 1, { max: 10 }), /^--x 11: expected <= 10$/);
    usage(() => seedFlag("seed", "-1"), /--seed -1: expected a value in \[0, 4294967295\]/);
  });
  await t.step("non-numbers say what was expected", () => {
    usage(() => intFlag("steps", "1.5", 1), /^--steps 1\.5: expected an integer$/);
    usage(() => intFlag("steps", "", 1), /expected an integer/);
    usage(() => intFlag("steps", "1e30", 1), /expected an integer/);
    usage(() => floatFlag("lr", "abc", 1), /^--lr abc: expected a finite number$/);
    usage(() => floatFlag("lr", "Infinity", 1), /expected a finite number/);
  });
  await t.step("through parseFlags: --flag -5 reaches the range check", () => {
    const { values } = parseFlags({
      args: ["--max-new-tokens", "-5"],
      options: { "max-new-tokens": { type: "string" } },
    });
    usage(() => positiveInt("max-new-tokens", values["max-new-tokens"], 256), /expected >= 1/);
  });
});

Deno.test("enumFlag(), required(), parseDuration()", () => {
  equal(enumFlag("dtype", "f16", ["f32", "f16"], "f32"), "f16");
  equal(enumFlag("dtype", undefined, ["f32", "f16"], "f32"), "f32");
  usage(() => enumFlag("dtype", "f8", ["f32", "f16"], "f32"), /^--dtype f8: expected f32 or f16$/);
  usage(
    () => enumFlag("kind", "paint", ["sequence", "pairs", "flip"], undefined),
    /--kind paint: expected one of sequence, pairs, flip/,
  );
  equal(required("model", "m", "DIR"), "m");
  usage(() => required("model", undefined, "DIR"), /^--model DIR is required$/);
  equal(parseDuration("t", "90", 0), 90);
  equal(parseDuration("t", "1h30m", 0), 5400);
  equal(parseDuration("t", "250ms", 0), 0.25);
  equal(parseDuration("t", "1.5m", 0), 90);
  equal(parseDuration("t", undefined, 7), 7);
  usage(() => parseDuration("t", "-5s", 0), /--t -5s: expected a duration/);
  usage(() => parseDuration("t", "5 parsecs", 0), /expected a duration/);
});

Deno.test("flagOptions()", async (t) => {
  await t.step("builds the table parseArgs takes from lists of names", () => {
    const options = flagOptions({
      string: `out steps
        lr`,
      boolean: "quiet",
      multiple: "images",
    });
    deepStrictEqual(options, {
      out: { type: "string" },
      steps: { type: "string" },
      lr: { type: "string" },
      quiet: { type: "boolean" },
      images: { type: "string", multiple: true },
    });
    const { values } = parseFlags({
      args: ["--images", "a", "--images", "b", "--quiet", "--lr", "-1e-3"],
      options,
    });
    const images: string[] | undefined = values.images; // typed by name
    deepStrictEqual([images, values.quiet, values.lr, values.out], [
      ["a", "b"],
      true,
      "-1e-3",
      undefined,
    ]);
  });
  await t.step("an unknown flag is still a usage error", () => {
    usage(() => parseFlags({ args: ["--nope"], options: flagOptions({ string: "out" }) }), /nope/);
  });
});

Deno.test("asUsage()", async (t) => {
  await t.step("a RangeError becomes a UsageError with its message", () => {
    usage(() =>
      asUsage(() => {
        throw new RangeError("batch must be >= 1");
      }), /^batch must be >= 1$/);
  });
  await t.step("other errors pass through; kind widens what is converted", () => {
    const boom = () => {
      throw new TypeError("boom");
    };
    throws(boom, (e) => e instanceof TypeError && !(e instanceof UsageError));
    throws(() => asUsage(boom), (e) => e instanceof TypeError);
    usage(() => asUsage(boom, Error), /^boom$/);
    equal(asUsage(() => 3), 3);
  });
});
