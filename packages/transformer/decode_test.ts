/**
 * KV-cache inference: greedy decoding with the cache equals decoding by full recompute (and the
 * PyTorch reference's greedy tokens); a decode step compiles no pipeline, creates no buffer and reads
 * back once; GPU-sampled chains equal sampling each step's logits on the CPU and read back only per
 * chunk of ids; chunked prefill and scoring equal unchunked; f16 weights stay close to f32.
 */
import { getGpu } from "@lvm/gpu";
import { SafetensorsFile } from "@lvm/weights/fs";
import { sampleCpu } from "@lvm/kernels";
import { assertClose, rng } from "@lvm/util/testing";
import { assertEquals, assertRejects } from "./_assert.ts";
import { loadLlama } from "./fs.ts";
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

    for (const fuse of [true, false]) {
      await t.step(
        `greedy with the cache == full recompute == PyTorch (fuse: ${fuse})`,
        async () => {
          const s = new DecodeSession(model, { maxTokens: 32, fuse });
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
        },
      );
    }

    await t.step("fused one-token steps == unfused, packed weights or not", async () => {
      // The fused kernels' two variants: "tex" (packed weights, CPU adapters) and "buffer".
      const ref = new DecodeSession(model, { maxTokens: 24, fuse: false });
      const runs = [true, false].map((packWeights) =>
        new DecodeSession(model, { maxTokens: 24, packWeights })
      );
      let want = await ref.prefill(prompt);
      for (const r of runs) assertClose(await r.prefill(prompt), want, { atol: 1e-5, rtol: 1e-5 });
      for (let i = 0; i < 6; i++) {
        const id = argmaxBelow(want, codes);
        want = await ref.step(id);
        for (const [j, r] of runs.entries()) {
          assertClose(await r.step(id), want, { atol: 1e-5, rtol: 1e-5 }, `run ${j} step ${i}`);
        }
      }
      for (const r of [ref, ...runs]) r.release();
    });

    await t.step(
      "fuseTail: a layer's step in 2 dispatches on the tex path, same logits",
      async () => {
        const L = model.config.layers;
        const [a, b] = [true, false].map((fuseTail) =>
          new DecodeSession(model, { maxTokens: 24, packWeights: true, fuseTail })
        );
        let la = await a.prefill(prompt), lb = await b.prefill(prompt);
        for (let i = 0; i < 4; i++) {
          const id = argmaxBelow(lb, codes);
          let d0 = gpu.dispatchCount;
          la = await a.step(id);
          const da = gpu.dispatchCount - d0;
          d0 = gpu.dispatchCount;
          lb = await b.step(id);
          const db = gpu.dispatchCount - d0;
          assertClose(la, lb, { atol: 1e-5, rtol: 1e-5 }, `step ${i}`);
          // decodeTail replaces attention, o, FFN and down (4 dispatches) on CPU adapters only.
          assertEquals(db - da, gpu.kind === "cpu" ? 3 * L : 0, `step ${i} dispatches`);
        }
        a.release();
        b.release();
      },
    );

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

    await t.step(
      "GPU-sampled greedy chain == PyTorch; feedLast leaves the next logits",
      async () => {
        const s = new DecodeSession(model, { maxTokens: 32 });
        s.append(prompt);
        const chunks: [number, number[]][] = [];
        const ids = await s.sampleOnGpu(want.length, { greedy: true, suppressFrom: codes }, {
          readEvery: 3,
          onIds: (c, first) => chunks.push([first, [...c]]),
        });
        assertEquals([...ids], want);
        assertEquals(s.length, prompt.length + want.length - 1);
        assertEquals(
          chunks.map(([f]) => f),
          [...Array(Math.ceil(want.length / 3)).keys()].map((k) => 3 * k),
        );
        assertEquals(chunks.flatMap(([, c]) => c), want);
        // feedLast: the cache then holds the last id too, and a chain continues where steps would.
        const a = new DecodeSession(model, { maxTokens: 32 });
        await a.prefill(prompt);
        const first = await a.sampleOnGpu(2, { greedy: true, suppressFrom: codes }, {
          feedLast: true,
        });
        assertEquals([...first], want.slice(0, 2));
        assertEquals(a.length, prompt.length + 2);
        const more = await a.sampleOnGpu(want.length - 2, { greedy: true, suppressFrom: codes });
        assertEquals([...more], want.slice(2));
        s.release();
        a.release();
      },
    );

    await t.step("GPU-sampled top-k chain == sampling each step's logits on the CPU", async () => {
      const N = 20, r = rng(5);
      for (const sampling of [{ topK: 5, temperature: 0.7 }, { topK: 0, temperature: 2 }]) {
        const uniforms = Array.from({ length: N }, r);
        const o = { ...sampling, suppressFrom: codes };
        const g = new DecodeSession(model, { maxTokens: 32 });
        g.append(prompt);
        const got = await g.sampleOnGpu(N, o, { uniforms, readEvery: 7 });
        const c = new DecodeSession(model, { maxTokens: 32 });
        let logits = await c.prefill(prompt);
        const ref: number[] = [];
        for (let i = 0; i < N; i++) {
          ref.push(sampleCpu(logits, { ...sampling, n: codes, u: uniforms[i] }));
          if (i + 1 < N) logits = await c.step(ref[i]);
        }
        // Equal unless a uniform lies within f32 rounding (~1e-7) of a cumulative boundary.
        assertEquals([...got], ref, JSON.stringify(sampling));
        if (new Set(ref).size < 4) throw new Error(`draws too uniform to test: ${ref}`);
        g.release();
        c.release();
      }
    });

    await t.step("a GPU-sampled chain: no new pipeline or buffer, reads per chunk", async () => {
      const s = new DecodeSession(model, { maxTokens: 40 });
      const uniforms = Array.from({ length: 12 }, rng(9));
      const o = { topK: 8, suppressFrom: codes };
      for (const greedy of [true, false]) {
        s.reset();
        s.append(prompt);
        await s.sampleOnGpu(12, { ...o, greedy }, { uniforms, readEvery: 5 }); // warm-up
        s.reset();
        s.append(prompt);
        const p0 = gpu.pipelineCount, b0 = gpu.pool.allocatedBytes, r0 = gpu.readCount;
        await s.sampleOnGpu(12, { ...o, greedy }, { uniforms, readEvery: 5 });
        assertEquals(gpu.pipelineCount - p0, 0, "pipelines compiled during a chain");
        assertEquals(gpu.pool.allocatedBytes - b0, 0, "bytes allocated during a chain");
        assertEquals(gpu.readCount - r0, 3, "GPU->CPU reads (ids 0-4, 5-9, 10-11)");
      }
      s.release();
    });

    await t.step("sampleOnGpu errors name the problem", async () => {
      const s = new DecodeSession(model, { maxTokens: prompt.length + 2 });
      await assertRejects(() => s.sampleOnGpu(2, { greedy: true }), RangeError, "call prefill()");
      s.append(prompt);
      await assertRejects(() => s.sampleOnGpu(4, { greedy: true }), RangeError, "exceed the cache");
      await assertRejects(() => s.sampleOnGpu(2, { topK: 3 }), RangeError, "needs 2 uniforms");
      await assertRejects(
        () => s.sampleOnGpu(1, { topK: 3 }, { uniforms: [1] }),
        RangeError,
        "uniforms[0] is 1",
      );
      await assertRejects(
        () => s.sampleOnGpu(1, { temperature: 0 }, { uniforms: [0.5] }),
        RangeError,
        "temperature",
      );
      assertEquals(s.length, prompt.length, "a failed call appends nothing");
      assertEquals((await s.sampleOnGpu(3, { greedy: true }, { readEvery: 1 })).length, 3);
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
  // The fused step reads the same halves as the unfused one.
  const c = new DecodeSession(m16, { maxTokens: 8, fuse: false });
  await c.prefill(prompt);
  assertClose(sb, await c.step(3), { atol: 1e-5, rtol: 1e-5 }, "f16 fused vs unfused step");
  for (const x of [a, b, c, m32, m16]) x.release();
});
