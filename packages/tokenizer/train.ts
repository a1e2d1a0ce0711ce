/**
 * What training the VQGAN needs from the VQGAN: the loss and its gradients on the GPU, dead-code
 * restarts, and the run's hyperparameters. The loop itself (AdamW, schedule, clipping,
 * accumulation, checkpoints, resume) is @lvm/train's `Trainer`, which drives the VQGAN through its
 * `VqganTrainable`.
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
 * A batch must fit the adapter: check it against one storage binding (see model.ts's
 * `checkBatchFits`) before allocating.
 * @module
 */
import type { Rng } from "@lvm/util";
import {
  bincount,
  countNonzero,
  f32Literal,
  type Gpu,
  map,
  mean,
  nchwToRows,
  rowsToNchw,
  scatterAddRows,
  type Tensor,
  vqLookup,
  vqNearest,
} from "./_deps.ts";
import { Tape, type Vqgan } from "./model.ts";

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

  // The step is recorded in four parts, each submitted as soon as it is recorded: the GPU runs one
  // while the CPU records the next (recording a tiny b8 step's ~1000 dispatches takes ~25 ms;
  // interleaved A/B on a loaded 2-core machine: median 1700 vs 1852 ms per step, best 1237 vs 1303).
  // On lavapipe a submit returns once the submission before it has run (a one-off script: four
  // submits of 10 matmuls of 512^2 each, the second to fourth took 41-57 ms each, the first 0.3),
  // so one part runs while the next is recorded and the recording thread waits in the submit.
  const z = model.encode(x, encTape); // (B,E,h,w)
  gpu.submit();
  const zRows = nchwToRows(gpu, z); // (N,E), N = B*h*w
  const near = vqNearest(gpu, zRows, codebook);
  near.dist.release();
  const ids = near.ids; // (N)
  const qRows = vqLookup(gpu, ids, codebook); // (N,E)
  const q = rowsToNchw(gpu, qRows, B, G, G); // (B,E,h,w)
  const xHat = model.decode(q, decTape); // (B,3,R,R)
  gpu.submit();

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
  gpu.submit();
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

/**
 * Hyperparameters of a VQGAN training run and their defaults (@lvm/train's VQGAN run config is made
 * from them: AdamW with these betas, warmup then cosine to lr/10).
 */
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

/** Hooks an add-on loss (the adversarial one) plugs into the trainer with. */
export interface TrainerExtension {
  /** Gradient added to d loss / d x_hat (B,3,R,R), or null to add nothing this step. */
  reconGrad(recon: Tensor, step: number): Tensor | null;
  /**
   * Runs after the generator's update of `step` (1-based) at learning rate `lr`, with the real
   * batch and the reconstruction (e.g. D's update).
   */
  afterStep(x: Tensor, recon: Tensor, step: number, lr: number): void;
  /** Values read back with the step's stats (e.g. D's loss), as (1) tensors, and their names. */
  stats(): { names: string[]; tensors: Tensor[] };
  /** Tensors to checkpoint (name -> GPU tensor), restored by {@link load}. */
  state(): Map<string, Tensor>;
  /** Restores tensors saved by {@link state}. */
  load(values: Map<string, Float32Array>): void;
}

/**
 * Dead-code restarts (see the module doc): code usage counted over a window of `every` steps; at
 * the end of a window (and at step 1 unless fine-tuning) every unused code is re-initialised to a
 * latent of the batch and its optimizer moments are zeroed. The counts are kept on the GPU
 * ({@link count}: a bincount added to a running tally), so a step reads nothing back unless its
 * window ends: each read costs ~11 ms on Deno, where the CPU could be recording the next step.
 */
export class CodeRestarts {
  /**
   * Uses of each code in the current window, as of the last read ({@link readUsage}, a restart):
   * the host copy a checkpoint saves.
   */
  usage: Uint32Array;
  #tally: Tensor | null = null; // (numCodes) u32 on the GPU, ahead of `usage` until a read

  constructor(
    readonly numCodes: number,
    readonly every: number,
    readonly fineTune = false,
    usage?: ArrayLike<number>,
  ) {
    this.usage = new Uint32Array(numCodes);
    if (usage) {
      if (usage.length !== numCodes) {
        throw new RangeError(
          `CodeRestarts: usage has ${usage.length} counts, expected ${numCodes}`,
        );
      }
      this.usage.set(usage);
    }
  }

  #counts(gpu: Gpu): Tensor {
    return this.#tally ??= gpu.upload(this.usage, [this.numCodes], "u32");
  }

  /** Adds the codes `ids` ((N) i32, one step's) to the window's counts (recorded, nothing read). */
  count(gpu: Gpu, ids: Tensor): void {
    bincount(gpu, ids, this.numCodes, this.#counts(gpu));
  }

  /** The codes used in the window so far, as a (1) f32 tensor (the caller releases it). */
  used(gpu: Gpu): Tensor {
    return countNonzero(gpu, this.#counts(gpu));
  }

  /** Reads the window's counts into {@link usage} and returns it. */
  async readUsage(gpu: Gpu): Promise<Uint32Array> {
    if (this.#tally) this.usage.set((await gpu.read(this.#tally)) as Uint32Array);
    return this.usage;
  }

  /**
   * After the counts of step `step` (1-based): at the end of a window re-initialises the unused
   * codes of `codebook` (K,E) from the latents `zRows` (N,E), zeroes their rows of the `moments`
   * (AdamW m and v) and starts a new window. Returns how many codes were restarted (0 when the
   * window goes on: nothing is read then).
   */
  async restartDue(
    gpu: Gpu,
    step: number,
    zRows: Tensor,
    codebook: Tensor,
    moments: Tensor[],
    rng: Rng,
  ): Promise<number> {
    const initAll = step === 1 && !this.fineTune;
    if (!initAll && !(this.every > 0 && step % this.every === 0)) return 0;
    const restarted = await this.#restart(gpu, zRows, codebook, moments, rng, initAll);
    this.usage.fill(0);
    gpu.write(this.#counts(gpu), this.usage);
    return restarted;
  }

  /** Frees the counts on the GPU (after reading them into {@link usage} if they are needed). */
  release(): void {
    this.#tally?.release();
    this.#tally = null;
  }

  async #restart(
    gpu: Gpu,
    zRows: Tensor,
    codebook: Tensor,
    moments: Tensor[],
    rng: Rng,
    all: boolean,
  ): Promise<number> {
    const K = this.numCodes, E = codebook.shape[1];
    // One wait for the counts and what a restart needs.
    const [u, z, cbh, ...mh] = await gpu.readMany([
      this.#counts(gpu),
      zRows,
      codebook,
      ...moments,
    ]) as [Uint32Array, ...Float32Array[]];
    this.usage.set(u);
    const dead: number[] = [];
    for (let k = 0; k < K; k++) if (all || this.usage[k] === 0) dead.push(k);
    if (!dead.length) return 0;
    const N = zRows.shape[0];
    // Latents in a random order; past N, reuse them with a little noise so no two codes coincide.
    const order = Array.from({ length: N }, (_, i) => i);
    for (let i = N - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [order[i], order[j]] = [order[j], order[i]];
    }
    let scale = 0;
    for (let i = 0; i < z.length; i++) scale += z[i] * z[i];
    scale = Math.sqrt(scale / z.length) || 1;
    dead.forEach((k, i) => {
      const src = order[i % N];
      const noise = i >= N ? 0.01 * scale : 0;
      for (let d = 0; d < E; d++) {
        cbh[k * E + d] = z[src * E + d] + (noise ? noise * rng.normal() : 0);
        for (const m of mh) m[k * E + d] = 0;
      }
    });
    gpu.write(codebook, cbh);
    moments.forEach((m, i) => gpu.write(m, mh[i]));
    return dead.length;
  }
}
