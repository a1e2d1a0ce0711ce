/**
 * Training the VQGAN: the loss and its gradients on the GPU, AdamW, dead-code restarts, and
 * checkpoints that resume exactly.
 *
 * Loss (perceptual-free, the standard VQ-VAE form; van den Oord et al. 2017):
 *   L = rec(x_hat, x) + mean((e - sg(z))^2) + beta * mean((z - sg(e))^2)
 * - rec: "l2" (default) mean squared error, which is what PSNR measures, or "l1" mean absolute error;
 *   both over every pixel and channel of the unclamped reconstruction.
 * - z: the quant_conv output; e: its nearest code; sg: stop-gradient; beta: commitment_cost (0.25).
 *   (open-muse's VectorQuantizer puts beta on the codebook term instead, as taming's "legacy" loss
 *   does; we use the form of the VQ-VAE paper.)
 * - x_hat is decoded from the straight-through latent z + sg(e - z): its value is e, its gradient
 *   flows to z unchanged.
 * - optional adversarial term (see adversarial.ts): `advWeight * -mean(D(x_hat))`, hinge loss for D.
 *
 * Dead-code restarts: code usage is counted over a window of `restartEvery` steps; at the end of the
 * window every code used by no latent is re-initialised to a latent of the current batch (chosen at
 * random, without replacement while there are enough), and its AdamW moments are reset. The first
 * step initialises the whole codebook that way (all codes are unused then), which replaces the
 * U(-1/K, 1/K) init that would send every latent to one code; a trainer made with `fineTune` (weights
 * of a trained tokenizer) keeps the codebook it was given instead.
 *
 * A batch must fit the adapter: the trainer's constructor checks it against one storage binding
 * (see model.ts's `checkBatchFits`).
 * @module
 */
import { join } from "node:path";
import {
  adamw,
  clipGradNorm,
  f32Literal,
  type Gpu,
  map,
  mean,
  nchwToRows,
  rowsToNchw,
  SafetensorsFile,
  scatterAddRows,
  type Tensor,
  vqLookup,
  vqNearest,
  writeSafetensors,
} from "./_deps.ts";
import { configToJson, paramSpecs, parseConfig, type VqganConfig } from "./config.ts";
import { checkBatchFits, Tape, type Vqgan } from "./model.ts";
import { type VqganWeights, writeFileAtomic } from "./weights.ts";

/** Reconstruction loss kind. */
export type ReconLoss = "l1" | "l2";

/** Options of {@link vqganLossAndGrads}. */
export interface LossOptions {
  /** Reconstruction loss (default "l2"). */
  recon?: ReconLoss;
  /** Commitment cost (default: the config's commitment_cost). */
  beta?: number;
  /**
   * Extra gradient added to d loss / d x_hat before the decoder's backward (the adversarial term's),
   * a function of the reconstruction (B,3,R,R). It may record work; its result is released.
   */
  extraReconGrad?: (recon: Tensor) => Tensor | null;
}

/** What one forward + backward gives. */
export interface LossResult {
  /** Parameter gradients by open-muse name (every parameter). */
  grads: Map<string, Tensor>;
  /**
   * (3) f32 on the GPU: reconstruction loss, mean((e - z)^2) (= codebook = commitment term value),
   * and the MSE of the clamped reconstruction (for PSNR).
   */
  stats: Tensor[];
  /** (B*h*w) i32: the codes used. */
  ids: Tensor;
  /** (B*h*w, E): the latents (for dead-code restarts). */
  zRows: Tensor;
  /** (B,3,R,R): the unclamped reconstruction. */
  recon: Tensor;
}

/**
 * Forward and backward of the training loss for images x (B,3,R,R) in [0,1]. The caller releases the
 * result's tensors (see {@link releaseLoss}).
 */
export function vqganLossAndGrads(model: Vqgan, x: Tensor, opts: LossOptions = {}): LossResult {
  const gpu = model.gpu, c = model.config;
  const beta = opts.beta ?? c.commitmentCost;
  const recon = opts.recon ?? "l2";
  const B = x.shape[0], G = model.geometry.grid, K = c.numEmbeddings;
  const codebook = model.p("quantize.embedding.weight");
  const encTape = new Tape(), decTape = new Tape();

  const z = model.encode(x, encTape); // (B,E,h,w)
  const zRows = nchwToRows(gpu, z); // (N,E), N = B*h*w
  const near = vqNearest(gpu, zRows, codebook);
  near.dist.release();
  const ids = near.ids; // (N)
  const qRows = vqLookup(gpu, ids, codebook); // (N,E)
  const q = rowsToNchw(gpu, qRows, B, G, G); // (B,E,h,w)
  const xHat = model.decode(q, decTape); // (B,3,R,R)

  const nPix = xHat.size, nLat = zRows.size;
  // Losses (each summed over the whole tensor on the GPU).
  const recTerm = map(gpu, recon === "l2" ? "(a - b) * (a - b)" : "abs(a - b)", [xHat, x]);
  const vqTerm = map(gpu, "(a - b) * (a - b)", [qRows, zRows]);
  const mseTerm = map(gpu, "(clamp(a, 0.0, 1.0) - b) * (clamp(a, 0.0, 1.0) - b)", [xHat, x]);
  const stats = [
    mean(gpu, recTerm, { axis: "all" }),
    mean(gpu, vqTerm, { axis: "all" }),
    mean(gpu, mseTerm, { axis: "all" }),
  ];
  for (const t of [recTerm, vqTerm, mseTerm]) t.release();

  // d rec / d x_hat
  let dxHat = recon === "l2"
    ? map(gpu, `(a - b) * ${lit(2 / nPix)}`, [xHat, x])
    : map(gpu, `sign(a - b) * ${lit(1 / nPix)}`, [xHat, x]);
  if (opts.extraReconGrad) {
    const extra = opts.extraReconGrad(xHat);
    if (extra) {
      const sumd = map(gpu, "a + b", [dxHat, extra]);
      dxHat.release();
      extra.release();
      dxHat = sumd;
    }
  }
  const dq = decTape.backward(dxHat)!; // (B,E,h,w), straight through to z
  // commitment: d/dz beta*mean((z - e)^2) = 2 beta (z - e) / nLat
  const dz = map(gpu, `a + (b - c) * ${lit((2 * beta) / nLat)}`, [dq, z, q]);
  dq.release();
  // codebook: d/de mean((e - z)^2) = 2 (e - z) / nLat, summed over the latents that chose e
  const dRows = map(gpu, `(a - b) * ${lit(2 / nLat)}`, [qRows, zRows]);
  const dCodebook = scatterAddRows(gpu, ids, dRows, K);
  dRows.release();
  encTape.backward(dz);
  z.release();
  q.release();
  qRows.release();
  const grads = new Map<string, Tensor>([...encTape.grads, ...decTape.grads]);
  grads.set("quantize.embedding.weight", dCodebook);
  return { grads, stats, ids, zRows, recon: xHat };
}

/** Releases every tensor of a {@link LossResult}. */
export function releaseLoss(r: LossResult): void {
  for (const g of r.grads.values()) g.release();
  for (const t of [...r.stats, r.ids, r.zRows, r.recon]) t.release();
}

const lit = f32Literal;

/** PSNR in dB of an MSE on [0,1] images. */
export function psnr(mse: number): number {
  return mse > 0 ? 10 * Math.log10(1 / mse) : Infinity;
}

// ------------------------------------------------------------------------------------- the trainer

/** Hyperparameters of a training run (saved in checkpoints). */
export interface TrainOptions {
  /** Images per step (default 16). */
  batchSize: number;
  /** Peak learning rate (default 1e-3 for the small presets). */
  lr: number;
  /** Linear warmup steps (default 50). */
  warmup: number;
  /** Total steps: the learning rate decays (cosine) to lr/10 at this step. */
  steps: number;
  beta1: number;
  beta2: number;
  weightDecay: number;
  /** Global gradient-norm clip (0: off). */
  clip: number;
  recon: ReconLoss;
  /** Dead-code restart window in steps (0: off). */
  restartEvery: number;
  /** Seed of the data sampler, restarts and init. */
  seed: number;
}

/** Defaults of {@link TrainOptions}. */
export const TRAIN_DEFAULTS: TrainOptions = {
  batchSize: 16,
  lr: 1e-3,
  warmup: 50,
  steps: 1000,
  beta1: 0.9,
  beta2: 0.99,
  weightDecay: 0,
  clip: 1,
  recon: "l2",
  restartEvery: 25,
  seed: 0,
};

/** Learning rate at step t (1-based): linear warmup, then cosine to lr/10 at `steps`. */
export function learningRate(o: TrainOptions, t: number): number {
  if (o.warmup > 0 && t <= o.warmup) return (o.lr * t) / o.warmup;
  const span = Math.max(1, o.steps - o.warmup);
  const p = Math.min(1, (t - o.warmup) / span);
  return o.lr * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * p)));
}

/** Seeded PRNG (mulberry32) whose state can be saved and restored. */
export class Rng {
  constructor(public state: number) {
    this.state = state >>> 0;
  }
  /** Uniform in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Standard normal (Box-Muller). */
  normal(): number {
    const u = Math.max(this.next(), 1e-12), v = this.next();
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
  }
}

/** Progress of one step. */
export interface StepStats {
  step: number;
  lr: number;
  /** Total loss. */
  loss: number;
  /** Reconstruction term. */
  rec: number;
  /** mean((e - z)^2): the codebook term (the commitment term is beta times it). */
  vq: number;
  /** PSNR of the clamped reconstruction of this batch (dB). */
  psnr: number;
  /** Gradient norm before clipping. */
  gradNorm: number;
  /** Distinct codes used in the restart window up to this step (before any restart). */
  codesUsed: number;
  /** Codes re-initialised at this step. */
  restarted: number;
}

/** Hooks an add-on loss (the adversarial one) plugs into the trainer with. */
export interface TrainerExtension {
  /** Gradient added to d loss / d x_hat (B,3,R,R), or null to add nothing this step. */
  reconGrad(recon: Tensor, step: number): Tensor | null;
  /** Runs after the generator step with the real batch and the reconstruction (e.g. D's update). */
  afterStep(x: Tensor, recon: Tensor, step: number): void;
  /** Values read back with the step's stats (e.g. D's loss), as (1) tensors, and their names. */
  stats(): { names: string[]; tensors: Tensor[] };
  /** Tensors to checkpoint (name -> GPU tensor), restored by {@link load}. */
  state(): Map<string, Tensor>;
  /** Restores tensors saved by {@link state}. */
  load(values: Map<string, Float32Array>): void;
}

/** A checkpoint's JSON part. */
interface TrainState {
  version: 1;
  step: number;
  rng: number;
  options: TrainOptions;
  config: Record<string, unknown>;
  /** Code usage counts of the current restart window. */
  usage: number[];
  /** Free-form state of the caller (e.g. the data sampler). */
  extra?: unknown;
}

/** Options of the {@link VqganTrainer} constructor that are not saved with checkpoints. */
export interface TrainerInit {
  /**
   * The model holds a trained tokenizer's weights (fine-tuning): step 1 keeps its codebook instead
   * of re-initialising every code from the batch (dead codes are still restarted per window).
   */
  fineTune?: boolean;
}

/**
 * The training state of a VQGAN: model, AdamW moments, step, RNG, restart window. `step(x)` runs
 * one optimisation step on a batch; `save`/`load` write and read resumable checkpoints. The
 * constructor throws a RangeError when `options.batchSize` images cannot fit the adapter.
 */
export class VqganTrainer {
  step = 0;
  readonly rng: Rng;
  /** AdamW first moments by parameter name. */
  readonly m: Map<string, Tensor> = new Map();
  /** AdamW second moments. */
  readonly v: Map<string, Tensor> = new Map();
  usage: Uint32Array;
  extension: TrainerExtension | null = null;

  /** See {@link TrainerInit.fineTune}. */
  readonly fineTune: boolean;

  constructor(readonly model: Vqgan, readonly options: TrainOptions, init: TrainerInit = {}) {
    checkBatchFits(
      model.config,
      options.batchSize,
      model.gpu.limits.maxStorageBufferBindingSize,
    );
    this.fineTune = init.fineTune ?? false;
    this.rng = new Rng(options.seed * 2654435761 + 12345);
    for (const [name, p] of model.params) {
      this.m.set(name, model.gpu.zeros(p.shape));
      this.v.set(name, model.gpu.zeros(p.shape));
    }
    this.usage = new Uint32Array(model.config.numEmbeddings);
  }

  get gpu(): Gpu {
    return this.model.gpu;
  }

  /** One optimisation step on images x (B,3,R,R) in [0,1] (the caller keeps x). */
  async trainStep(x: Tensor): Promise<StepStats & Record<string, number>> {
    const gpu = this.gpu, o = this.options, t = this.step + 1;
    const ext = this.extension;
    const r = vqganLossAndGrads(this.model, x, {
      recon: o.recon,
      extraReconGrad: ext ? (rec) => ext.reconGrad(rec, t) : undefined,
    });
    const names = [...this.model.params.keys()];
    const grads = names.map((n) => r.grads.get(n)!);
    const clip = clipGradNorm(gpu, grads, o.clip > 0 ? o.clip : 3.4e38);
    const lr = learningRate(o, t);
    for (const n of names) {
      adamw(gpu, {
        param: this.model.p(n),
        grad: r.grads.get(n)!,
        m: this.m.get(n)!,
        v: this.v.get(n)!,
      }, {
        lr,
        step: t,
        beta1: o.beta1,
        beta2: o.beta2,
        weightDecay: o.weightDecay,
        gradScale: clip.scale,
      });
    }
    ext?.afterStep(x, r.recon, t);
    const extStats = ext?.stats() ?? { names: [], tensors: [] };
    const host = await gpu.readMany([...r.stats, clip.norm, r.ids, ...extStats.tensors]);
    const [rec, vq, mse, gnorm] = [0, 1, 2, 3].map((i) => (host[i] as Float32Array)[0]);
    const ids = host[4] as Int32Array;
    for (const id of ids) this.usage[id]++;
    const codesUsed = this.usedCodes();
    let restarted = 0;
    const window = o.restartEvery;
    const initAll = t === 1 && !this.fineTune;
    if (initAll || (window > 0 && t % window === 0)) {
      restarted = await this.#restart(r.zRows, initAll);
      this.usage.fill(0);
    }
    releaseLoss(r);
    clip.norm.release();
    clip.scale.release();
    this.step = t;
    const extra: Record<string, number> = {};
    extStats.names.forEach((n, i) => (extra[n] = (host[5 + i] as Float32Array)[0]));
    const beta = this.model.config.commitmentCost;
    return {
      step: t,
      lr,
      loss: rec + (1 + beta) * vq,
      rec,
      vq,
      psnr: psnr(mse),
      gradNorm: gnorm,
      codesUsed,
      restarted,
      ...extra,
    };
  }

  /** Codes used in the current restart window. */
  usedCodes(): number {
    return this.usage.reduce((s, c) => s + (c > 0 ? 1 : 0), 0);
  }

  /** Re-initialises unused codes (all when `all`) to latents of this batch; resets their moments. */
  async #restart(zRows: Tensor, all: boolean): Promise<number> {
    const gpu = this.gpu, name = "quantize.embedding.weight";
    const K = this.model.config.numEmbeddings, E = this.model.config.quantizedEmbedDim;
    const dead: number[] = [];
    for (let k = 0; k < K; k++) if (all || this.usage[k] === 0) dead.push(k);
    if (!dead.length) return 0;
    const cb = this.model.p(name), m = this.m.get(name)!, v = this.v.get(name)!;
    const [z, cbh, mh, vh] = (await gpu.readMany([zRows, cb, m, v])) as Float32Array[];
    const N = zRows.shape[0];
    // Latents in a random order; past N, reuse them with a little noise so no two codes coincide.
    const order = Array.from({ length: N }, (_, i) => i);
    for (let i = N - 1; i > 0; i--) {
      const j = this.rng.int(i + 1);
      [order[i], order[j]] = [order[j], order[i]];
    }
    let scale = 0;
    for (let i = 0; i < z.length; i++) scale += z[i] * z[i];
    scale = Math.sqrt(scale / z.length) || 1;
    dead.forEach((k, i) => {
      const src = order[i % N];
      const noise = i >= N ? 0.01 * scale : 0;
      for (let d = 0; d < E; d++) {
        cbh[k * E + d] = z[src * E + d] + (noise ? noise * this.rng.normal() : 0);
        mh[k * E + d] = 0;
        vh[k * E + d] = 0;
      }
    });
    gpu.write(cb, cbh);
    gpu.write(m, mh);
    gpu.write(v, vh);
    return dead.length;
  }

  /**
   * Writes a checkpoint `DIR/ckpt-<step>/` (model.safetensors with open-muse names, optimizer.safetensors
   * with m./v. moments and extension state, state.json: step, RNG, options, config, restart window,
   * `extra`), then points `DIR/latest.json` at it (atomic rename) and deletes older checkpoints.
   * A crash at any moment leaves the previous checkpoint usable.
   */
  async save(dir: string, extra?: unknown): Promise<string> {
    const gpu = this.gpu;
    const sub = `ckpt-${String(this.step).padStart(7, "0")}`;
    const path = join(dir, sub);
    await Deno.mkdir(path, { recursive: true });
    const weights = await this.model.readWeights();
    const opt: Record<string, { dtype: "F32"; shape: readonly number[]; data: Float32Array }> = {};
    const names = [...this.model.params.keys()];
    const ms = await gpu.readMany(names.flatMap((n) => [this.m.get(n)!, this.v.get(n)!]));
    names.forEach((n, i) => {
      const shape = this.model.params.get(n)!.shape;
      opt[`m.${n}`] = { dtype: "F32", shape, data: ms[2 * i] as Float32Array };
      opt[`v.${n}`] = { dtype: "F32", shape, data: ms[2 * i + 1] as Float32Array };
    });
    if (this.extension) {
      const st = this.extension.state();
      const vals = await gpu.readMany([...st.values()]);
      [...st.keys()].forEach((k, i) => {
        opt[`ext.${k}`] = { dtype: "F32", shape: st.get(k)!.shape, data: vals[i] as Float32Array };
      });
    }
    await writeModelFile(join(path, "model.safetensors"), this.model.config, weights);
    await writeSafetensors(join(path, "optimizer.safetensors"), opt);
    const state: TrainState = {
      version: 1,
      step: this.step,
      rng: this.rng.state,
      options: this.options,
      config: configToJson(this.model.config),
      usage: Array.from(this.usage),
      extra,
    };
    await writeFileAtomic(join(path, "state.json"), JSON.stringify(state) + "\n");
    await writeFileAtomic(
      join(dir, "latest.json"),
      JSON.stringify({ checkpoint: sub, step: this.step }) + "\n",
    );
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory && e.name.startsWith("ckpt-") && e.name !== sub) {
        await Deno.remove(join(dir, e.name), { recursive: true });
      }
    }
    return path;
  }

  /**
   * Restores model weights, moments, step, RNG and restart window from `DIR/latest.json`'s
   * checkpoint. Returns the saved `extra`.
   */
  async load(dir: string): Promise<unknown> {
    const { path, state } = await readCheckpointState(dir);
    const gpu = this.gpu;
    const model = await SafetensorsFile.open(join(path, "model.safetensors"));
    const opt = await SafetensorsFile.open(join(path, "optimizer.safetensors"));
    try {
      for (const [n, p] of this.model.params) {
        gpu.write(p, await model.readF32(n));
        gpu.write(this.m.get(n)!, await opt.readF32(`m.${n}`));
        gpu.write(this.v.get(n)!, await opt.readF32(`v.${n}`));
        await gpu.settle();
      }
      if (this.extension) {
        const vals = new Map<string, Float32Array>();
        for (const k of opt.names()) {
          if (k.startsWith("ext.")) vals.set(k.slice(4), await opt.readF32(k));
        }
        this.extension.load(vals);
      }
    } finally {
      model.close();
      opt.close();
    }
    this.step = state.step;
    this.rng.state = state.rng >>> 0;
    this.usage = Uint32Array.from(state.usage);
    return state.extra;
  }

  /** Frees the moments (not the model). */
  release(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.release();
  }
}

async function writeModelFile(
  path: string,
  config: VqganConfig,
  weights: VqganWeights,
): Promise<void> {
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  for (const s of paramSpecs(config)) {
    tensors[s.name] = { dtype: "F32", shape: s.shape, data: weights.get(s.name)! };
  }
  await writeSafetensors(path, tensors, { format: "pt" });
}

/** The checkpoint `DIR/latest.json` points at: its directory, config, options and step. */
export async function readCheckpointState(
  dir: string,
): Promise<{ path: string; state: TrainState; config: VqganConfig; options: TrainOptions }> {
  const latest = join(dir, "latest.json");
  let sub: string;
  try {
    sub = JSON.parse(await Deno.readTextFile(latest)).checkpoint;
  } catch (e) {
    throw new Error(`${latest}: no checkpoint to resume (${(e as Error).message})`, { cause: e });
  }
  if (typeof sub !== "string" || !/^ckpt-\d+$/.test(sub)) {
    throw new Error(
      `${latest}: "checkpoint" must name a ckpt-<step> folder, found ${JSON.stringify(sub)}`,
    );
  }
  const path = join(dir, sub);
  const state = JSON.parse(await Deno.readTextFile(join(path, "state.json"))) as TrainState;
  if (state.version !== 1) throw new Error(`${path}/state.json: unknown version ${state.version}`);
  return {
    path,
    state,
    config: parseConfig(state.config, `${path}/state.json`),
    options: state.options,
  };
}
