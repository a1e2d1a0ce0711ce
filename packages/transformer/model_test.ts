/**
 * The whole model against the PyTorch reference (tools/ref_llama.py): logits, loss, every parameter
 * gradient, and the losses of 10 AdamW steps with global-norm clipping, for a multi-head untied model
 * and a grouped-query tied one.
 */
import { adamw, clipGradNorm } from "@lvm/kernels";
import { getGpu, type Tensor } from "@lvm/gpu";
import { SafetensorsFile } from "@lvm/weights/fs";
import { assertClose } from "@lvm/util/testing";
import { loadLlama } from "./fs.ts";
import { makeConfig, paramSpecs } from "./config.ts";
import { Llama } from "./model.ts";
import { assertEquals, assertThrows } from "./_assert.ts";

const FIXTURES = new URL("../../tests/fixtures/transformer/", import.meta.url).pathname;

async function reference(name: string) {
  const f = await SafetensorsFile.open(`${FIXTURES}${name}/reference.safetensors`);
  const out = new Map<string, Float32Array>();
  for (const n of f.names()) out.set(n, await f.readF32(n));
  const meta = f.metadata;
  f.close();
  return { get: (n: string) => out.get(n)!, meta };
}

/** max |x| of an array, for tolerances relative to a tensor's scale. */
const maxAbs = (x: ArrayLike<number>) =>
  Array.from(x).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

for (const variant of ["mha", "gqa_tied"]) {
  Deno.test(`Llama matches PyTorch (${variant})`, async (t) => {
    const gpu = await getGpu();
    const ref = await reference(variant);
    const model = await loadLlama(gpu, `${FIXTURES}${variant}`);
    const c = model.config;
    const inputs = ref.get("inputs"), targets = ref.get("targets");
    const [B, T] = [2, inputs.length / 2];
    const batch = { B, T, inputs, targets };

    await t.step("forward: logits and loss", async () => {
      const { loss, logits } = model.forward(batch, { train: true, keepLogits: true });
      const [l, lg] = await gpu.readMany([loss!, logits![0]]);
      assertClose(
        lg,
        ref.get("logits"),
        { atol: 2e-5 * maxAbs(ref.get("logits")), rtol: 1e-4 },
        "logits",
      );
      assertClose(l, ref.get("loss"), { atol: 0, rtol: 2e-6 }, "loss");
      logits!.forEach((x) => x.release());
      loss!.release();
      // The evaluation path (no activations kept) gives the same numbers.
      const ev = model.forward({ B, T, inputs }, {});
      assertClose(await gpu.readF32(ev.logits![0]), ref.get("logits"), {
        atol: 2e-5 * maxAbs(ref.get("logits")),
        rtol: 1e-4,
      }, "eval logits");
      ev.logits!.forEach((x) => x.release());
    });

    await t.step("backward: every parameter gradient", async () => {
      const grads = model.backward();
      const specs = paramSpecs(c);
      const got = await gpu.readMany(specs.map((s) => grads.get(s.name)!));
      specs.forEach((s, i) => {
        const r = ref.get(`grad.${s.name}`);
        assertClose(got[i], r, { atol: 1e-5 * maxAbs(r) + 1e-9, rtol: 1e-3 }, `d ${s.name}`);
      });
    });

    await t.step("10 AdamW steps with clipping: losses and gradient norms", async () => {
      const specs = paramSpecs(c);
      const moments = new Map<string, { m: Tensor; v: Tensor }>();
      for (const s of specs) moments.set(s.name, { m: gpu.zeros(s.shape), v: gpu.zeros(s.shape) });
      const losses: number[] = [], norms: number[] = [];
      for (let step = 1; step <= 10; step++) {
        const { loss } = model.forward(batch, { train: true });
        const grads = model.backward();
        const clip = clipGradNorm(gpu, specs.map((s) => grads.get(s.name)!), 1.0);
        for (const s of specs) {
          adamw(gpu, {
            param: model.param(s.name),
            grad: grads.get(s.name)!,
            ...moments.get(s.name)!,
          }, {
            lr: 1e-2,
            step,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weightDecay: 0.1,
            gradScale: clip.scale,
          });
        }
        const [l, n] = await gpu.readMany([loss!, clip.norm]);
        losses.push(l[0]);
        norms.push(n[0]);
        for (const x of [loss!, clip.norm, clip.scale]) x.release();
      }
      const final = model.forward(batch, { keepLogits: false });
      const [fl] = await gpu.readMany([final.loss!]);
      final.loss!.release();
      assertClose(losses, ref.get("adamw.losses"), { atol: 1e-4, rtol: 1e-3 }, "AdamW losses");
      assertClose(norms, ref.get("adamw.grad_norms"), { atol: 1e-4, rtol: 1e-3 }, "grad norms");
      assertClose(fl, ref.get("adamw.final_loss"), { atol: 1e-4, rtol: 2e-3 }, "final loss");
      for (const { m, v } of moments.values()) [m, v].forEach((x) => x.release());
    });
    model.release();
  });
}

Deno.test("Llama row-chunked classifier == one chunk", async () => {
  const gpu = await getGpu();
  const dir = `${FIXTURES}gqa_tied`;
  const ref = await reference("gqa_tied");
  const whole = await loadLlama(gpu, dir);
  const chunked = await loadLlama(gpu, dir, { headChunkRows: 5 }); // 22 rows -> 5+5+5+5+2
  const inputs = ref.get("inputs"), targets = ref.get("targets");
  const batch = { B: 2, T: inputs.length / 2, inputs, targets };
  const a = whole.forward(batch, { train: true, keepLogits: true });
  const b = chunked.forward(batch, { train: true, keepLogits: true });
  assertEquals(b.logits!.map((t) => t.shape[0]), [5, 5, 5, 5, 2]);
  const [la, ...lb] = await gpu.readMany([a.logits![0], ...b.logits!]);
  const joined = new Float32Array(la.length);
  let o = 0;
  for (const x of lb) (joined.set(x, o), o += x.length);
  assertClose(joined, la, { atol: 1e-5, rtol: 1e-5 }, "chunked logits"); // other matmul variants per chunk size
  const [lossA, lossB] = await gpu.readMany([a.loss!, b.loss!]);
  assertClose(lossB, lossA, { atol: 1e-6, rtol: 1e-6 }, "chunked loss");
  const ga = whole.backward(), gb = chunked.backward();
  for (const { name } of paramSpecs(whole.config)) {
    const [x, y] = await gpu.readMany([ga.get(name)!, gb.get(name)!]);
    assertClose(y, x, { atol: 1e-6 * maxAbs(x), rtol: 1e-5 }, `chunked d ${name}`);
  }
  whole.release();
  chunked.release();
});

Deno.test("Llama.forward() rejects T over maxPositions", async () => {
  const gpu = await getGpu();
  const model = Llama.init(
    gpu,
    makeConfig({ hidden: 8, layers: 1, heads: 2, ffn: 16, vocab: 10, maxPositions: 6 }),
    { seed: 1 },
  );
  const ids = (n: number) => Array.from({ length: n }, (_, i) => i % 10);
  // T = maxPositions is fine; one more position is an error naming T and the limit.
  model.forward({ B: 2, T: 6, inputs: ids(12), targets: ids(12) }).loss!.release();
  assertThrows(
    () => model.forward({ B: 1, T: 7, inputs: ids(7) }),
    RangeError,
    "T=7 exceeds the model's maxPositions (6)",
  );
  assertThrows(
    () => model.forward({ B: 2, T: 7, inputs: ids(14), targets: ids(14) }, { train: true }),
    RangeError,
    "maxPositions (6)",
  );
  model.release();
});
