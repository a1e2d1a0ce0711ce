import { assert, assertEquals, assertStrictEquals, assertThrows } from "@lvm/util/testing";
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
  assertThrows(f, UsageError, re);
}

Deno.test("parseFlags()", async (t) => {
  const options = {
    n: { type: "string", short: "n" },
    json: { type: "boolean" },
  } as const;
  await t.step("a negative number is a value: --flag -5, --flag=-5, -n -5", () => {
    for (const args of [["--n", "-5"], ["--n=-5"], ["-n", "-5"]]) {
      assertEquals(parseFlags({ args, options }).values.n, "-5", args.join(" "));
    }
    for (const v of ["-0.5", "-.5", "-1e-3", "-2E+4", "-Infinity"]) {
      assertStrictEquals(parseFlags({ args: ["--n", v], options }).values.n, v);
    }
  });
  await t.step("a flag after a string flag is still a flag; a boolean flag takes no value", () => {
    usage(() => parseFlags({ args: ["--n", "--json"], options }), /--n/);
    usage(() => parseFlags({ args: ["--json", "-5"], options }), /-5|Unknown/);
    assertEquals(
      joinNegativeValues(["--n", "-5", "--", "--n", "-3"], options),
      ["--n=-5", "--", "--n", "-3"],
    );
  });
  await t.step("unknown flags and stray positionals are usage errors", () => {
    usage(() => parseFlags({ args: ["--frob"], options }), /frob/);
    usage(() => parseFlags({ args: ["x"], options }), /x/);
    assertEquals(
      parseFlags({ args: ["x", "--json"], options, allowPositionals: true }).positionals,
      ["x"],
    );
  });
});

Deno.test("number flags", async (t) => {
  await t.step("values, fallbacks, dashes optional in the name", () => {
    assertStrictEquals(intFlag("steps", "40", 100, { min: 1 }), 40);
    assertStrictEquals(intFlag("--steps", undefined, 100), 100);
    assertStrictEquals(intFlag("steps", undefined, undefined), undefined);
    assertStrictEquals(floatFlag("lr", "1.5e-4", 1), 1.5e-4);
    assertStrictEquals(floatFlag("bias", "-2.5", 0), -2.5);
    assertStrictEquals(positiveInt("count", "3", 1), 3);
    assertStrictEquals(nonNegativeInt("top-k", "0", 50), 0);
    assertStrictEquals(positiveFloat("temperature", "0.7", 1), 0.7);
    assertStrictEquals(nonNegativeFloat("decay", "0", 0.1), 0);
    assertStrictEquals(seedFlag("seed", "4294967295"), 2 ** 32 - 1);
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
  assertStrictEquals(enumFlag("dtype", "f16", ["f32", "f16"], "f32"), "f16");
  assertStrictEquals(enumFlag("dtype", undefined, ["f32", "f16"], "f32"), "f32");
  usage(() => enumFlag("dtype", "f8", ["f32", "f16"], "f32"), /^--dtype f8: expected f32 or f16$/);
  usage(
    () => enumFlag("kind", "paint", ["sequence", "pairs", "flip"], undefined),
    /--kind paint: expected one of sequence, pairs, flip/,
  );
  assertStrictEquals(required("model", "m", "DIR"), "m");
  usage(() => required("model", undefined, "DIR"), /^--model DIR is required$/);
  assertStrictEquals(parseDuration("t", "90", 0), 90);
  assertStrictEquals(parseDuration("t", "1h30m", 0), 5400);
  assertStrictEquals(parseDuration("t", "250ms", 0), 0.25);
  assertStrictEquals(parseDuration("t", "1.5m", 0), 90);
  assertStrictEquals(parseDuration("t", undefined, 7), 7);
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
    assertEquals(options, {
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
    assertEquals([images, values.quiet, values.lr, values.out], [
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
    assert(!(assertThrows(boom, TypeError) instanceof UsageError));
    assertThrows(() => asUsage(boom), TypeError);
    usage(() => asUsage(boom, Error), /^boom$/);
    assertStrictEquals(asUsage(() => 3), 3);
  });
});
