/**
 * `--dtype q8|q4` end to end: `infer score` quantizes the model while loading and scores exactly as
 * the same model built in-process with that dtype (a model whose rows are multiples of 32, so every
 * matrix is block-quantized), from a model folder or a GGUF of that block type; an unknown dtype is
 * a usage error listing the choices.
 */
import { getGpu } from "@lvm/gpu";
import { DecodeSession, Llama, makeConfig, type WeightDType } from "@lvm/transformer";
import { saveLlama } from "@lvm/transformer/fs";
import { convertLlamaToGguf } from "@lvm/weights/fs";
import { assert, assertClose, assertEquals } from "@lvm/util/testing";
import { runApp } from "@lvm/cli/testing";

Deno.test("infer score --dtype q8|q4", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvm-dtype-" });
  try {
    const gpu = await getGpu();
    const config = makeConfig({ hidden: 64, layers: 1, heads: 2, ffn: 96, vocab: 70 });
    const m32 = Llama.init(gpu, config, { seed: 4, std: 0.1 });
    await saveLlama(m32, dir);
    const weights = await m32.readParams();
    const s32 = new DecodeSession(m32);
    const f32 = await s32.logprobs([1, 5, 9, 33, 2, 60]);
    s32.release();
    m32.release();
    const tokens = [1, 5, 9, 33, 2, 60];
    for (const dtype of ["q8", "q4"] as WeightDType[]) {
      await t.step(dtype, async () => {
        const r = await runApp(
          "infer",
          "score",
          ...["--model", dir, "--tokens", tokens.join(","), "--json", "--dtype", dtype],
        );
        assertEquals(r.code, 0, r.stderr);
        const m = Llama.fromWeights(gpu, config, weights, { dtype });
        const s = new DecodeSession(m);
        const want = await s.logprobs(tokens);
        s.release();
        m.release();
        const got: number[] = JSON.parse(r.stdout).logprobs;
        assertClose(got, want, { atol: 1e-5, rtol: 1e-5 }, dtype);
        // ... and not as the f32 model does: the weights were quantized.
        assert(got.some((v, i) => Math.abs(v - f32[i]) > 1e-4), `${dtype} scores equal f32's`);
        // A GGUF of that block type scores the same: its blocks are uploaded as stored.
        const file = `${dir}/${dtype}.gguf`;
        await convertLlamaToGguf(dir, file, { type: dtype === "q8" ? "Q8_0" : "Q4_0" });
        const g = await runApp(
          "infer",
          "score",
          ...["--model", file, "--tokens", tokens.join(","), "--json", "--dtype", dtype],
        );
        assertEquals(g.code, 0, g.stderr);
        assertClose(
          JSON.parse(g.stdout).logprobs,
          want,
          { atol: 1e-5, rtol: 1e-5 },
          `${dtype} gguf`,
        );
      });
    }
    await t.step("an unknown dtype names the choices", async () => {
      const r = await runApp("infer", "score", "--model", dir, "--tokens", "1,2", "--dtype", "q5");
      assertEquals(r.code, 2, r.stderr);
      assert(/f32.*f16.*q8.*q4/.test(r.stderr), r.stderr);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
