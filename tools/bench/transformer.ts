/**
 * Whole-model throughput of @lvm/transformer for the `tiny` and `100m` presets: the training
 * forward (loss), a full training step (forward + backward + global-norm clip + AdamW over every
 * parameter) and KV-cache decoding, in tokens/s, with the GPU memory each case holds (`mem_mb`,
 * also printed). The PyTorch figures for the same configs come from tools/bench_torch_transformer.py
 * (same names and shapes).
 *
 * Napkin math, per token (P parameters, V*D of them the embedding, whose lookup is free; L layers of
 * H heads of hd; causal attention at length T sees T/2 keys on average):
 *   forward  2 * (P - V*D) + 4 * L * H * hd * T/2 FLOPs (the lm_head is a matmul: counted);
 *   train    3x forward (backward = 2x), plus AdamW's 16 B/param of f32 weights, grads and moments;
 *   decode   the same matmul FLOPs at the current length, memory bound: every f32 weight matrix,
 *            4 * (P - V*D) bytes, is read once per token.
 * @module
 */
import { adamwGroup, clipGradNorm } from "@lvm/kernels";
import { type Gpu, type Tensor } from "@lvm/gpu";
import {
  DecodeSession,
  Llama,
  type LlamaConfig,
  paramCount,
  paramSpecs,
  preset,
} from "@lvm/transformer";
import type { BenchCase } from "./_harness.ts";

/**
 * Configs measured: preset, batch, sequence length, decode prompt/new tokens, repetitions (decode's
 * own: best of 3 for `100m`, whose single runs spread by up to 30% on this shared machine, on both
 * sides).
 */
const CONFIGS = [
  { name: "tiny", B: 4, T: 256, prompt: 16, decode: 32, reps: 3, decodeReps: 3 },
  { name: "100m", B: 1, T: 256, prompt: 16, decode: 16, reps: 1, decodeReps: 3 },
];

const MB = 1024 * 1024;

function tokens(n: number, vocab: number, seed: number): Int32Array {
  let s = seed >>> 0;
  return Int32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}

/** Parameters that are matmul weights (the embedding lookup is free unless it is the tied head). */
function matmulParams(c: LlamaConfig): number {
  return paramCount(c) - c.vocab * c.hidden * (c.tieEmbeddings ? 0 : 1);
}

/** Model FLOPs per token of a forward (2 per multiply-add of the matmuls, attention over `keys`). */
function forwardFlopsPerToken(c: LlamaConfig, keys: number): number {
  return 2 * matmulParams(c) + 4 * c.layers * c.heads * c.headDim * keys;
}

const mflop = (f: number) => `${(f / 1e6).toFixed(2)} MFLOP`;
const mib = (b: number) => `${(b / MB).toFixed(1)} MiB`;

function cases(cfg: (typeof CONFIGS)[number]): BenchCase[] {
  const { name, B, T, reps } = cfg;
  const c = preset(name);
  const N = B * T;
  const P = paramCount(c);
  let model: Llama;
  let session: DecodeSession | null = null;
  let sessionBytes: { textures: number; buffers: number } | null = null;
  let held: Tensor[] = []; // optimizer moments of the train step
  let mem = 0;
  // GPU dispatches recorded by one train step, and by one decode step (prefill excluded).
  let perStep = 0, perToken = 0;
  const extra = () => {
    const s = sessionBytes;
    return {
      params_m: +(P / 1e6).toFixed(1),

      // Peak bytes of pooled GPU buffers in the case (weights, grads, moments, activations, and the
      // decode session's pooled tensors).
      gpu_pool_mb: +(mem / MB).toFixed(1),
      // Decode: everything the session holds (KV cache, packed weights; textures are not pooled).
      ...(s ? { session_mb: +((s.textures + s.buffers) / MB).toFixed(1) } : {}),
      // The case's GPU memory: the pool's peak plus the session's textures. Matmul's scratch
      // textures (a few per shape, shared by all cases) are not counted.
      mem_mb: +((mem + (s?.textures ?? 0)) / MB).toFixed(1),
    };
  };
  const build = (gpu: Gpu) => {
    // Free what earlier cases left in the pool, so the peak below is this case's own memory.
    gpu.pool.trim();
    mem = 0;
    sessionBytes = null;
    model = Llama.init(gpu, c, { seed: 1 });
    const ids = tokens(N + 1, model.config.imageCodes, 7);
    return { inputs: ids.subarray(0, N), targets: ids.subarray(1) };
  };
  const teardown = () => {
    session?.release();
    session = null;
    held.forEach((t) => t.release());
    held = [];
    model.release();
  };
  const fwd = forwardFlopsPerToken(c, T / 2);
  const flops = fwd * N;
  const ctx = cfg.prompt + cfg.decode / 2; // mean cache length of a decode step
  const kvBytes = 2 * c.layers * (cfg.prompt + cfg.decode) * c.kvHeads * c.headDim * 4;
  const trainStep = (oneSubmit = false): BenchCase => ({
    name: oneSubmit ? "transformer train step[one submit]" : "transformer train step",
    shape: `${name} B${B} T${T}`,
    items: N,
    unit: "tokens",
    flops: 3 * flops,
    reps,
    note: `fwd+bwd+clip+AdamW, one loss read; ${mflop(3 * fwd)}/token = 3x forward, ` +
      `weights+grads+moments 16 B/param = ${mib(16 * P)}` +
      (oneSubmit ? "; recorded work submitted once, at the loss read (Gpu.submitEvery 0)" : ""),
    // The A/B of Gpu.submitEvery (64 on the gpu kind, already 0 on the cpu kind).
    ...(oneSubmit ? { kinds: ["gpu" as const] } : {}),
    setup(gpu) {
      const { inputs, targets } = build(gpu);
      const specs = paramSpecs(model.config);
      const moments = specs.map((s) => ({ m: gpu.zeros(s.shape), v: gpu.zeros(s.shape) }));
      held = moments.flatMap((x) => [x.m, x.v]);
      let step = 0;
      return async () => {
        step++;
        const every = gpu.submitEvery;
        if (oneSubmit) gpu.submitEvery = 0;
        const d0 = gpu.dispatchCount;
        const { loss } = model.forward({ B, T, inputs, targets }, { train: true });
        const grads = model.backward();
        const clip = clipGradNorm(gpu, specs.map((s) => grads.get(s.name)!), 1.0);
        // As @lvm/train's optimizer: the small parameters' updates in groups (adamwGroup).
        const states = specs.map((s, i) => ({
          param: model.param(s.name),
          grad: grads.get(s.name)!,
          ...moments[i],
        }));
        adamwGroup(gpu, states, {
          lr: 1e-4,
          step,
          beta1: 0.9,
          beta2: 0.95,
          weightDecay: 0.1,
          gradScale: clip.scale,
        });
        await gpu.read(loss!);
        gpu.submitEvery = every;
        perStep = gpu.dispatchCount - d0;
        mem = Math.max(mem, gpu.pool.allocatedBytes);
        for (const t of [loss!, clip.norm, clip.scale] as Tensor[]) t.release();
      };
    },
    teardown,
    extra: () => ({ ...extra(), dispatches_per_step: perStep }),
  });
  return [
    {
      name: `transformer forward`,
      shape: `${name} B${B} T${T}`,
      items: N,
      unit: "tokens",
      flops,
      reps,
      note: `loss, no activations kept; ${mflop(fwd)}/token = 2*(P-V*D) + 4*L*H*hd*T/2, ` +
        `f32 weights ${mib(4 * P)}`,
      setup(gpu) {
        const { inputs, targets } = build(gpu);
        return async () => {
          const { loss } = model.forward({ B, T, inputs, targets });
          await gpu.read(loss!);
          mem = Math.max(mem, gpu.pool.allocatedBytes);
          loss!.release();
        };
      },
      teardown,
      extra,
    },
    trainStep(),
    ...(name === "100m" ? [trainStep(true)] : []),
    {
      name: `transformer decode`,
      shape: `${name} prompt${cfg.prompt} +${cfg.decode}`,
      items: cfg.decode,
      unit: "tokens",
      reps: cfg.decodeReps,
      note: `KV cache, greedy on CPU, one ${cfg.prompt}-token prefill included; ` +
        `${mflop(forwardFlopsPerToken(c, ctx))}/token, memory bound: ` +
        `${mib(4 * matmulParams(c))} of f32 matrices read per token, KV cache ${mib(kvBytes)}`,
      setup(gpu) {
        build(gpu);
        session = new DecodeSession(model, { maxTokens: cfg.prompt + cfg.decode });
        const s = session;
        sessionBytes = s.memoryBytes;
        const prompt = Array.from(tokens(cfg.prompt, model.config.imageCodes, 3));
        const codes = model.config.imageCodes;
        const argmax = (x: Float32Array) => {
          let b = 0;
          for (let i = 1; i < codes; i++) if (x[i] > x[b]) b = i;
          return b;
        };
        return async () => {
          s.reset();
          let logits = await s.prefill(prompt);
          const d0 = gpu.dispatchCount;
          for (let i = 0; i < cfg.decode; i++) logits = await s.step(argmax(logits));
          perToken = (gpu.dispatchCount - d0) / cfg.decode;
          mem = Math.max(mem, gpu.pool.allocatedBytes);
        };
      },
      teardown,
      extra: () => ({ ...extra(), dispatches_per_token: +perToken.toFixed(1) }),
    },
  ];
}

/** The transformer benchmarks. */
export const benches: BenchCase[] = CONFIGS.flatMap(cases);
