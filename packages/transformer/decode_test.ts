/**
 * KV-cache inference: greedy decoding with the cache equals decoding by full recompute (and the
 * PyTorch reference's greedy tokens); a decode step compiles no pipeline, creates no buffer and reads
 * back once; chunked prefill and scoring equal unchunked; f16 weights stay close to f32.
 */
import { getGpu, SafetensorsFile } from "@lvm/kernels";
import { assertClose } from "@lvm/kernels/testing";
import { assertEquals } from "./_assert.ts";
import { loadLlama } from "./checkpoint.ts";
import { DecodeSession } from "./decode.ts";
import type { Llama } from "./model.ts";

const FIXTURES = new URL("../../tests/fixtures/transformer/", import.meta.url).pathname;

async function ref(variant: string, name: string): Promise<number[]> {
  const f = await SafetensorsFile.open(`${FIXTURES}${variant}/reference.safetensors`);
  const v = Array.from(await f.readF32(name));
  f.close();
  return v;
}

const argmaxBelow = (x: ArrayLike<number>, n: number) => {
  let b = 0;
  for (let i = 1; i < n; i++) if (x[i] > x[b]) b = i;
  return b;
};

/** Logits (V) of the token after `seq`, by a full forward without cache. */
async function fullLogits(model: Llama, seq: number[]): Promise<Float32Array> {
  const V = model.config.vocab;
  const { logits } = model.forward({ B: 1, T: seq.length, inputs: seq });
  const all = await model.gpu.readF32(logits![0]);
  logits!.forEach((t) => t.release());
  return all.slice((seq.length - 1) * V);
}

for (const variant of ["mha", "gqa_tied"]) {
  Deno.test(`DecodeSession (${variant})`, async (t) => {
    const gpu = await getGpu();
    const model = await loadLlama(gpu, `${FIXTURES}${variant}`);
    const codes = model.config.imageCodes;
    const prompt = await ref(variant, "generate.prompt");
    const want = await ref(variant, "generate.tokens");

    await t.step("greedy with the cache == full recompute == PyTorch", async () => {
      const s = new DecodeSession(model, { maxTokens: 32 });
      const cached: number[] = [];
      let logits = await s.prefill(prompt);
      const seq = [...prompt];
      for (let i = 0; i < want.length; i++) {
        const full = await fullLogits(model, seq);
        assertClose(logits, full, { atol: 1e-4, rtol: 1e-4 }, `step ${i} logits`);
        const id = argmaxBelow(logits, codes);
        cached.push(id);
        seq.push(id);
        if (i + 1 < want.length) logits = await s.step(id);
      }
      assertEquals(cached, want);
      assertEquals(s.length, prompt.length + want.length - 1);
      s.release();
    });

    await t.step("a decode step: no new pipeline or buffer, one read", async () => {
      const s = new DecodeSession(model, { maxTokens: 40 });
      let logits = await s.prefill(prompt);
      logits = await s.step(argmaxBelow(logits, codes)); // warm-up: compiles the step's kernels
      const p0 = gpu.pipelineCount, b0 = gpu.pool.allocatedBytes, r0 = gpu.readCount;
      const steps = 12;
      for (let i = 0; i < steps; i++) logits = await s.step(argmaxBelow(logits, codes));
      assertEquals(gpu.pipelineCount - p0, 0, "pipelines compiled during decode");
      assertEquals(gpu.pool.allocatedBytes - b0, 0, "bytes allocated during decode");
      assertEquals(gpu.readCount - r0, steps, "GPU->CPU reads");
      s.release();
    });

    await t.step("chunked prefill == one-shot prefill; cache overflow is an error", async () => {
      const seq = [...prompt, ...want];
      const a = new DecodeSession(model, { maxTokens: 16 });
      const b = new DecodeSession(model, { maxTokens: 16, chunk: 3 });
      assertClose(
        await b.prefill(seq),
        await a.prefill(seq),
        { atol: 1e-5, rtol: 1e-5 },
        "chunked",
      );
      let threw = false;
      try {
        await a.prefill([1, 2, 3, 4]);
      } catch (e) {
        threw = e instanceof RangeError && /exceed the cache of 16/.test(e.message);
      }
      assertEquals(threw, true, "overflow error");
      a.release();
      b.release();
    });

    await t.step("packed weights (CPU-adapter texture layout) == plain tensors", async () => {
      const a = new DecodeSession(model, { maxTokens: 16, packWeights: true });
      const b = new DecodeSession(model, { maxTokens: 16, packWeights: false });
      assertClose(await a.prefill(prompt), await b.prefill(prompt), { atol: 1e-5, rtol: 1e-5 });
      assertClose(await a.step(want[0]), await b.step(want[0]), { atol: 1e-5, rtol: 1e-5 });
      a.release();
      b.release();
    });

    await t.step("logprobs match PyTorch, chunked or not", async () => {
      const inputs = await ref(variant, "inputs");
      const row0 = inputs.slice(0, inputs.length / 2);
      const expected = await ref(variant, "score.logprobs");
      for (const chunk of [512, 4, 1]) {
        const s = new DecodeSession(model, { maxTokens: 16, chunk });
        assertClose(await s.logprobs(row0), expected, { atol: 2e-5, rtol: 1e-5 }, `chunk ${chunk}`);
        s.release();
      }
    });
    model.release();
  });
}

Deno.test("DecodeSession with f16 weights", async () => {
  const gpu = await getGpu();
  const dir = `${FIXTURES}mha`;
  const m32 = await loadLlama(gpu, dir);
  const m16 = await loadLlama(gpu, dir, { dtype: "f16" });
  assertEquals(m16.param("model.layers.0.mlp.up_proj.weight").dtype, "f16");
  assertEquals(m16.param("model.norm.weight").dtype, "f32");
  const prompt = await ref("mha", "generate.prompt");
  const a = new DecodeSession(m32, { maxTokens: 8 }), b = new DecodeSession(m16, { maxTokens: 8 });
  const la = await a.prefill(prompt), lb = await b.prefill(prompt);
  // f16 weights: ~3 significant digits per weight.
  assertClose(lb, la, { atol: 2e-2, rtol: 1e-2 }, "f16 vs f32 logits");
  const sa = await a.step(3), sb = await b.step(3);
  assertClose(sb, sa, { atol: 2e-2, rtol: 1e-2 }, "f16 vs f32 step logits");
  for (const x of [a, b, m32, m16]) x.release();
});
