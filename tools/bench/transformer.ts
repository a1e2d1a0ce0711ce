/**
 * Whole-model throughput of @lvm/transformer for the `tiny` and `100m` presets: the training
 * forward (loss), a full training step (forward + backward + global-norm clip + AdamW over every
 * parameter) and KV-cache decoding, in tokens/s, with the GPU memory the pool holds. The PyTorch
 * figures for the same configs come from tools/bench_torch_transformer.py (same names and shapes).
 * @module
 */
import { adamw, clipGradNorm, type Gpu, type Tensor } from "@lvm/kernels";
import { DecodeSession, Llama, paramCount, paramSpecs, preset } from "@lvm/transformer";
import type { BenchCase } from "./_harness.ts";

/** Configs measured: preset, batch, sequence length, decode prompt/new tokens, repetitions. */
const CONFIGS = [
  { name: "tiny", B: 4, T: 256, prompt: 16, decode: 32, reps: 3 },
  { name: "100m", B: 1, T: 256, prompt: 16, decode: 16, reps: 1 },
];

const MB = 1024 * 1024;

function tokens(n: number, vocab: number, seed: number): Int32Array {
  let s = seed >>> 0;
  return Int32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}

/** Model FLOPs per token of a forward (2 per multiply-add of the matmuls, attention at length T). */
function forwardFlopsPerToken(name: string, T: number): number {
  const c = preset(name);
  const matmuls = paramCount(c) - c.vocab * c.hidden * (c.tieEmbeddings ? 0 : 1); // embedding lookup is free
  const attn = 2 * 2 * c.layers * c.heads * c.headDim * (T / 2); // causal: ~T/2 keys per query
  return 2 * matmuls + attn;
}

function cases(cfg: (typeof CONFIGS)[number]): BenchCase[] {
  const { name, B, T, reps } = cfg;
  const N = B * T;
  let model: Llama;
  let mem = 0;
  const extra = () => ({
    params_m: +(paramCount(preset(name)) / 1e6).toFixed(1),
    // Peak bytes of pooled GPU buffers in the case (weights, grads, moments, activations; the
    // session's packed-weight and KV-cache textures of decode are not pooled and not counted).
    gpu_pool_mb: +(mem / MB).toFixed(1),
  });
  const build = (gpu: Gpu) => {
    // Free what earlier cases left in the pool, so the peak below is this case's own memory.
    gpu.pool.trim();
    mem = 0;
    model = Llama.init(gpu, preset(name), { seed: 1 });
    const ids = tokens(N + 1, model.config.imageCodes, 7);
    return { inputs: ids.subarray(0, N), targets: ids.subarray(1) };
  };
  const flops = forwardFlopsPerToken(name, T) * N;
  return [
    {
      name: `transformer forward`,
      shape: `${name} B${B} T${T}`,
      items: N,
      unit: "tokens",
      flops,
      reps,
      note: "loss, no activations kept",
      setup(gpu) {
        const { inputs, targets } = build(gpu);
        return async () => {
          const { loss } = model.forward({ B, T, inputs, targets });
          await gpu.read(loss!);
          mem = Math.max(mem, gpu.pool.allocatedBytes);
          loss!.release();
        };
      },
      teardown: () => model.release(),
      extra,
    },
    {
      name: `transformer train step`,
      shape: `${name} B${B} T${T}`,
      items: N,
      unit: "tokens",
      flops: 3 * flops,
      reps,
      note: "fwd+bwd+clip+AdamW, one loss read",
      setup(gpu) {
        const { inputs, targets } = build(gpu);
        const specs = paramSpecs(model.config);
        const moments = specs.map((s) => ({ m: gpu.zeros(s.shape), v: gpu.zeros(s.shape) }));
        let step = 0;
        return async () => {
          step++;
          const { loss } = model.forward({ B, T, inputs, targets }, { train: true });
          const grads = model.backward();
          const clip = clipGradNorm(gpu, specs.map((s) => grads.get(s.name)!), 1.0);
          specs.forEach((s, i) =>
            adamw(gpu, { param: model.param(s.name), grad: grads.get(s.name)!, ...moments[i] }, {
              lr: 1e-4,
              step,
              beta1: 0.9,
              beta2: 0.95,
              weightDecay: 0.1,
              gradScale: clip.scale,
            })
          );
          await gpu.read(loss!);
          mem = Math.max(mem, gpu.pool.allocatedBytes);
          for (const t of [loss!, clip.norm, clip.scale] as Tensor[]) t.release();
        };
      },
      teardown: () => model.release(),
      extra,
    },
    {
      name: `transformer decode`,
      shape: `${name} prompt${cfg.prompt} +${cfg.decode}`,
      items: cfg.decode,
      unit: "tokens",
      reps,
      note: `KV cache, greedy on CPU, one ${cfg.prompt}-token prefill included`,
      setup(gpu) {
        build(gpu);
        const session = new DecodeSession(model, { maxTokens: cfg.prompt + cfg.decode });
        const prompt = Array.from(tokens(cfg.prompt, model.config.imageCodes, 3));
        const codes = model.config.imageCodes;
        const argmax = (x: Float32Array) => {
          let b = 0;
          for (let i = 1; i < codes; i++) if (x[i] > x[b]) b = i;
          return b;
        };
        return async () => {
          session.reset();
          let logits = await session.prefill(prompt);
          for (let i = 0; i < cfg.decode; i++) logits = await session.step(argmax(logits));
          mem = Math.max(mem, gpu.pool.allocatedBytes);
        };
      },
      teardown: () => model.release(),
      extra,
    },
  ];
}

/** The transformer benchmarks. */
export const benches: BenchCase[] = CONFIGS.flatMap(cases);
