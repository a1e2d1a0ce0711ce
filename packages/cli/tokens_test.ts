import { assert, assertEquals, assertThrows } from "@lvm/util/testing";
import { checkVocab, parseTokens } from "./mod.ts";

Deno.test("parseTokens()", async (t) => {
  await t.step("commas, white space, JSON arrays, @FILE", async () => {
    assertEquals(parseTokens("5,17,3"), [5, 17, 3]);
    assertEquals(parseTokens(" 5  17\n3, 4 "), [5, 17, 3, 4]);
    assertEquals(parseTokens("[5, 17, 3]"), [5, 17, 3]);
    const f = await Deno.makeTempFile();
    await Deno.writeTextFile(f, "8 9\n10\n");
    assertEquals(parseTokens(`@${f}`), [8, 9, 10]);
    await Deno.remove(f);
  });
  await t.step("bad items are named", () => {
    for (
      const [spec, msg] of [
        ["1,x,3", /item 1 is "x"/],
        ["[1,-2]", /item 1 is -2/],
        ["1.5", /item 0/],
        ["", /no token ids/],
        ["@/nonexistent/ids", /cannot read/],
      ] as const
    ) {
      let err = "";
      try {
        parseTokens(spec);
      } catch (e) {
        err = (e as Error).message;
      }
      assert(msg.test(err), `${spec}: ${err}`);
    }
  });
});

Deno.test("checkVocab() names the first id outside the vocabulary", () => {
  checkVocab([0, 5, 9], 10, "m");
  assertThrows(
    () => checkVocab([1, 2, 100, 3], 96, "m"),
    Error,
    /token id 100 \(position 2\) .* 0\.\.95/,
  );
});
