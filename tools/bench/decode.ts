/**
 * KV-cache decoding with the next token chosen on the GPU (@lvm/kernels' `sampleLogits` through
 * `DecodeSession.sampleOnGpu`): steps are submitted back to back and only the ids come back, once per
 * 32 tokens and at the end, instead of one row of logits (and one ~11 ms sync on lavapipe) per token.
 * Same presets, prompt and new-token counts as transformer.ts's `transformer decode` (the CPU-sampled
 * greedy path) and the same work: one prompt prefill, then one one-token forward per new token (the
 * last id is fed too). `cpu-sampled` is the CPU path with the same seeded top-k sampler.
 * One-token steps run @lvm/kernels' fused decode kernels (ops/decode_fused.ts, 5 dispatches per
 * layer, 2 where `decodeTail` takes attention, o projection and FFN in one: the tiny preset on
 * lavapipe); `greedy 5-dispatch` is the same greedy chain with `fuseTail: false` (tiny only: the
 * 100m's layers are too large for the tail anyway) and `greedy unfused` with `fuse: false` (the
 * per-op path, 16 per layer), so one run shows all three. `dispatches_per_token` counts the GPU
 * dispatches of the decode steps (prefill excluded).
 * @module
 */
import type { Gpu } from "@lvm/gpu";
import { DecodeSession, Llama, preset } from "@lvm/transformer";
import { Sampler, type SamplingOptions } from "@lvm/sampler";
import type { BenchCase } from "./_harness.ts";

/** Presets measured, with transformer.ts's decode prompt/new-token counts and repetitions. */
const CONFIGS = [
  { name: "tiny", prompt: 16, decode: 32, reps: 3 },
  { name: "100m", prompt: 16, decode: 16, reps: 3 },
];

const SAMPLERS: { label: string; options: SamplingOptions }[] = [
  { label: "greedy", options: { greedy: true } },
  { label: "top-k 50", options: { topK: 50 } },
];

const MB = 1024 * 1024;

function tokens(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}

function cases(cfg: (typeof CONFIGS)[number]): BenchCase[] {
  const { name, reps } = cfg;
  let model: Llama | null = null;
  let session: DecodeSession | null = null;
  let mem = 0;
  let perToken = 0; // GPU dispatches per generated token (prefill excluded)
  const build = (gpu: Gpu, fuse = true, fuseTail = true) => {
    gpu.pool.trim(); // free what earlier cases left, so the peak below is this case's own
    mem = 0;
    model = Llama.init(gpu, preset(name), { seed: 1 });
    session = new DecodeSession(model, { maxTokens: cfg.prompt + cfg.decode, fuse, fuseTail });
    return {
      s: session,
      prompt: tokens(cfg.prompt, model.config.imageCodes, 3),
      codes: model.config.imageCodes,
    };
  };
  const teardown = () => {
    session?.release();
    model?.release();
    session = model = null;
  };
  const extra = () => ({
    gpu_pool_mb: +(mem / MB).toFixed(1),
    ...(perToken ? { dispatches_per_token: +perToken.toFixed(1) } : {}),
  });
  // The fused one-token step (DecodeSession's default), and greedy once more with the 5-dispatch
  // layers (`fuseTail: false`, tiny only) and unfused (`fuse: false`, the per-op path: ~16
  // dispatches per layer) for the before/after in one run.
  const variants = [
    ...SAMPLERS.map((x) => ({ ...x, fuse: true, tail: true })),
    ...(name === "tiny" ? [{ ...SAMPLERS[0], fuse: true, tail: false }] : []),
    { ...SAMPLERS[0], fuse: false, tail: true },
  ];
  const gpuCases = variants.map(({ label, options, fuse, tail }): BenchCase => ({
    name: "transformer decode gpu-sampled",
    shape: `${name} prompt${cfg.prompt} +${cfg.decode} ${label}${
      fuse ? tail ? "" : " 5-dispatch" : " unfused"
    }`,
    items: cfg.decode,
    unit: "tokens",
    reps,
    note: `KV cache, ${label} on the GPU, ids read back per 32 tokens, ` +
      `one ${cfg.prompt}-token prefill included${
        fuse ? tail ? "" : ", fuseTail: false" : ", fuse: false"
      }`,
    setup(gpu) {
      const { s, prompt, codes } = build(gpu, fuse, tail);
      const sampler = new Sampler({ ...options, suppressFrom: codes }, 1);
      return async () => {
        s.reset();
        s.append(prompt);
        const d0 = gpu.dispatchCount; // after the prompt's prefill was recorded
        await s.sampleOnGpu(cfg.decode, { ...options, suppressFrom: codes }, {
          uniforms: sampler.drawUniforms(cfg.decode),
          feedLast: true,
        });
        perToken = (gpu.dispatchCount - d0) / cfg.decode;
        mem = Math.max(mem, gpu.pool.allocatedBytes);
      };
    },
    teardown,
    extra,
  }));
  const cpuCase: BenchCase = {
    name: "transformer decode cpu-sampled",
    shape: `${name} prompt${cfg.prompt} +${cfg.decode} top-k 50`,
    items: cfg.decode,
    unit: "tokens",
    reps,
    note: `KV cache, top-k 50 on the CPU (one logits read per token), ` +
      `one ${cfg.prompt}-token prefill included`,
    setup(gpu) {
      const { s, prompt, codes } = build(gpu);
      const sampler = new Sampler({ topK: 50, suppressFrom: codes }, 1);
      return async () => {
        s.reset();
        let logits = await s.prefill(prompt);
        const d0 = gpu.dispatchCount;
        for (let i = 0; i < cfg.decode; i++) logits = await s.step(sampler.sample(logits));
        perToken = (gpu.dispatchCount - d0) / cfg.decode;
        mem = Math.max(mem, gpu.pool.allocatedBytes);
      };
    },
    teardown,
    extra,
  };
  return [...gpuCases, cpuCase];
}

/** The GPU-sampled decode benchmarks. */
export const benches: BenchCase[] = CONFIGS.flatMap(cases);
