import { assertEquals, assertRejects } from "@lvm/util/testing";
import { generateTokens, perplexity, type TokenDecoder } from "./generate.ts";
import { Sampler } from "./logits.ts";

/** A fake decoder whose next-token logits favour (last id + 1) % V, counting its calls. */
function fake(V: number) {
  const calls = { prefill: 0, step: 0, fed: [] as number[] };
  const row = (last: number) => {
    const x = new Float32Array(V).fill(-10);
    x[(last + 1) % V] = 10;
    return x;
  };
  const d: TokenDecoder = {
    prefill: (ids) => (calls.prefill++, calls.fed.push(...ids), Promise.resolve(row(ids.at(-1)!))),
    step: (id) => (calls.step++, calls.fed.push(id), Promise.resolve(row(id))),
  };
  return { d, calls };
}

Deno.test("generateTokens()", async (t) => {
  await t.step("exactly N ids, one prefill and N-1 steps, suppressed ids skipped", async () => {
    const { d, calls } = fake(10);
    const ids = await generateTokens(d, [3, 4], 7, new Sampler({ greedy: true, suppressFrom: 8 }));
    // 5,6,7 then 8 and 9 are suppressed (arg-max among 0..7 of a row with one spike above 7: id 0)
    assertEquals(ids, [5, 6, 7, 0, 1, 2, 3]);
    assertEquals([calls.prefill, calls.step], [1, 6]);
    assertEquals(calls.fed, [3, 4, 5, 6, 7, 0, 1, 2]);
  });
  await t.step("N = 0 runs nothing; bad arguments are errors", async () => {
    const { d, calls } = fake(4);
    assertEquals(await generateTokens(d, [1], 0, new Sampler({ greedy: true })), []);
    assertEquals(calls.prefill, 0);
    await assertRejects(
      () => generateTokens(d, [], 2, new Sampler({ greedy: true })),
      Error,
      "prompt",
    );
    await assertRejects(
      () => generateTokens(d, [1], -1, new Sampler({ greedy: true })),
      Error,
      "maxNewTokens",
    );
  });
});

Deno.test("perplexity()", () => {
  const r = perplexity([Math.log(0.5), Math.log(0.25)]);
  if (Math.abs(r.nll - 1.5 * Math.LN2) > 1e-12) throw new Error(`nll ${r.nll}`);
  if (Math.abs(r.perplexity - 2 ** 1.5) > 1e-12) throw new Error(`ppl ${r.perplexity}`);
});
