import {
  assert,
  assertEquals,
  AssertionError,
  assertMatch,
  assertRejects,
  assertStrictEquals,
  assertThrows,
  fewCases,
  TEST_CASES_ENV,
} from "./testing.ts";

Deno.test("assert, assertStrictEquals, assertMatch", () => {
  assert(1);
  assertThrows(() => assert(0, "zero"), AssertionError, "zero");
  assertThrows(() => assert(""), AssertionError, "expected a truthy value");
  assertStrictEquals(NaN, NaN);
  const o = { a: 1 };
  assertStrictEquals(o, o);
  assertThrows(() => assertStrictEquals({ a: 1 }, { a: 1 }), AssertionError);
  assertThrows(() => assertStrictEquals(0, -0), AssertionError);
  assertThrows(() => assertStrictEquals<unknown>(1, "1", "loose"), AssertionError, "loose");
  assertMatch("step 4/4", /^step \d\/4$/);
  assertThrows(() => assertMatch("abc", /x/), AssertionError, "does not match /x/");
});

Deno.test("assertEquals is deep and strict", () => {
  const ok: [unknown, unknown][] = [
    [1, 1],
    [NaN, NaN],
    ["a", "a"],
    [null, null],
    [[1, [2, { x: 3 }]], [1, [2, { x: 3 }]]],
    [{ a: 1, b: 2 }, { b: 2, a: 1 }],
    [new Float32Array([1, 2]), new Float32Array([1, 2])],
    [new Uint8Array([1, 2]).buffer, new Uint8Array([1, 2]).buffer],
    [new Map([[1, "a"], [2, "b"]]), new Map([[2, "b"], [1, "a"]])],
    [new Set([1, [2]]), new Set([[2], 1])],
    [new Date(5), new Date(5)],
    [/a/g, /a/g],
    [new TypeError("x"), new TypeError("x")],
  ];
  for (const [a, b] of ok) assertEquals(a, b);
  const cyc: Record<string, unknown> = {};
  cyc.self = cyc;
  const cyc2: Record<string, unknown> = {};
  cyc2.self = cyc2;
  assertEquals(cyc, cyc2);
  const bad: [unknown, unknown][] = [
    [1, "1"],
    [0, -0],
    [null, undefined],
    [[1, 2], [1, 2, 3]],
    [[1, 2], { 0: 1, 1: 2 }],
    [{ a: 1 }, { a: 1, b: undefined }],
    [{ a: { b: 1 } }, { a: { b: 2 } }],
    [new Float32Array([1, 2]), new Float64Array([1, 2])],
    [new Uint8Array([1, 2]), [1, 2]],
    [new Uint8Array([1, 2]).buffer, new Uint8Array([1, 3]).buffer],
    [new Map([[1, "a"]]), new Map([[1, "b"]])],
    [new Set([1]), new Set([2])],
    [new Date(5), new Date(6)],
    [/a/g, /a/i],
    [new TypeError("x"), new TypeError("y")],
    [new TypeError("x"), new RangeError("x")],
  ];
  for (const [a, b] of bad) {
    assertThrows(() => assertEquals(a, b), AssertionError);
  }
  assertThrows(() => assertEquals([1], [2], "custom"), AssertionError, "custom");
  assertThrows(() => assertEquals({ a: 1 }, { a: 2 }), AssertionError, 'expected {"a":2}');
});

Deno.test("assertThrows / assertRejects check the class and the message", async () => {
  const boom = () => {
    throw new RangeError("--batch 16: too big");
  };
  const e = assertThrows(boom, RangeError, "too big");
  assertStrictEquals(e.message, "--batch 16: too big");
  assertThrows(boom, Error, /^--batch \d+: too/);
  assertThrows(() => assertThrows(boom, TypeError), AssertionError, "expected TypeError");
  assertThrows(() => assertThrows(boom, RangeError, "small"), AssertionError, 'containing "small"');
  assertThrows(() => assertThrows(boom, RangeError, /^too/), AssertionError, "matching /^too/");
  assertThrows(() => assertThrows(() => 1, Error), AssertionError, "nothing was thrown");
  await assertRejects(() => Promise.reject(new TypeError("nope")), TypeError, /^nope$/);
  await assertRejects(
    () => assertRejects(() => Promise.resolve(1), Error),
    AssertionError,
    "nothing was thrown",
  );
  await assertRejects(
    () => assertRejects(() => Promise.reject(new Error("a")), Error, /b/),
    AssertionError,
    "matching /b/",
  );
});

Deno.test('fewCases() reads LVM_TEST_CASES: only "few" thins the case lists', () => {
  const before = Deno.env.get(TEST_CASES_ENV);
  try {
    Deno.env.delete(TEST_CASES_ENV);
    assertEquals(fewCases(), false);
    Deno.env.set(TEST_CASES_ENV, "few");
    assertEquals(fewCases(), true);
    Deno.env.set(TEST_CASES_ENV, "all");
    assertEquals(fewCases(), false);
  } finally {
    if (before === undefined) Deno.env.delete(TEST_CASES_ENV);
    else Deno.env.set(TEST_CASES_ENV, before);
  }
});
