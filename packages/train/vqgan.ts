/**
 * The VQGAN image tokenizer as a {@link Trainable}: each micro-batch is `batch` images sampled
 * (with light augmentation) from the training sources by the run's seeded {@link Rng}; the loss is
 * @lvm/tokenizer's reconstruction + codebook + commitment loss (plus the optional adversarial term
 * of a {@link PatchDiscriminator}); after each update the codes used are counted and dead codes
 * restarted ({@link CodeRestarts}), and the discriminator takes its own step. The step's figures
 * (rec, vq, psnr, codes_used, the discriminator's losses) are staged on the GPU and read with the
 * Trainer's loss slots every `logEvery` steps; the code counts stay on the GPU too, so a step waits
 * for a read only where a restart window ends (measured, the tiny tokenizer's step on lavapipe:
 * ~11 ms per step less than reading after every update). Evaluation is the reconstruction of
 * held-out images (loss = their MSE, and PSNR).
 *
 * A checkpoint holds the tokenizer as `deno task infer --tokenizer` loads it (config.json +
 * model.safetensors), the discriminator (`discriminator.safetensors`, when there is one), and in
 * trainer_state.json the RNG state and the restart window's code usage.
 *
 * The schedule is the tokenizer's own (warmup then cosine to lr / 10 at the last step, updates
 * counted from 1: `offset` 1), and AdamW has its betas (0.9, 0.99) and no weight decay by default.
 * @module
 */
import type { Gpu, Tensor } from "@lvm/gpu";
import type { RgbImage } from "@lvm/image";
import { f32Literal, map } from "@lvm/kernels";
import {
  type AdversarialOptions,
  checkBatchFits,
  CodeRestarts,
  configToJson,
  evaluateReconstruction,
  type ImageSource,
  initVqganWeights,
  type LossResult,
  parseConfig,
  PatchDiscriminator,
  psnr,
  type ReconLoss,
  releaseLoss,
  sampleBatch,
  TRAIN_DEFAULTS,
  type TrainOptions,
  Vqgan,
  type VqganConfig,
  vqganLossAndGrads,
  VqganTokenizer,
} from "@lvm/tokenizer";
import { readTokenizerDir, saveTokenizer } from "@lvm/tokenizer/fs";
import { Rng } from "@lvm/util";
import { SafetensorsFile, writeSafetensors } from "@lvm/weights/fs";
import { join } from "node:path";
import { makeAdamWConfig } from "./optimizer.ts";
import { makeSchedule } from "./schedule.ts";
import type { EvalMetrics, LoopConfig, MicroBatch, Trainable, UpdateContext } from "./trainable.ts";
import { Trainer } from "./trainer.ts";

/** The discriminator's file in a checkpoint. */
export const DISCRIMINATOR_FILE = "discriminator.safetensors";

/** Everything that defines a VQGAN training run (JSON; saved in trainer_state.json). */
export interface VqganRunConfig extends LoopConfig {
  /** The tokenizer's open-muse config.json. */
  tokenizer: Record<string, unknown>;
  /** Images per micro-batch. */
  batch: number;
  recon: ReconLoss;
  /** Dead-code restart window in steps (0: off). */
  restartEvery: number;
  /** Seed of the init, the data order, the augmentation and the restarts. */
  seed: number;
  /** The run started from a trained tokenizer: step 1 keeps its codebook. */
  fineTune: boolean;
  /** The adversarial term, or null. */
  adversarial: AdversarialOptions | null;
  /** What identifies the training sources (a resumed run must see the same). */
  sources: string[];
}

/** Fields of {@link makeVqganRunConfig}; the rest get @lvm/tokenizer's TRAIN_DEFAULTS. */
export interface VqganRunInput {
  config: VqganConfig;
  steps: number;
  batch?: number;
  gradAccum?: number;
  lr?: number;
  warmup?: number;
  beta1?: number;
  beta2?: number;
  weightDecay?: number;
  clip?: number;
  recon?: ReconLoss;
  restartEvery?: number;
  seed?: number;
  fineTune?: boolean;
  adversarial?: AdversarialOptions | null;
  sources?: string[];
  logEvery?: number;
  evalEvery?: number;
  saveEvery?: number;
  keep?: number;
}

/**
 * A VQGAN run config with defaults (TRAIN_DEFAULTS; logEvery 10, evalEvery 0, saveEvery 100,
 * keep 1).
 */
export function makeVqganRunConfig(i: VqganRunInput): VqganRunConfig {
  const d = TRAIN_DEFAULTS;
  const lr = i.lr ?? d.lr, warmup = i.warmup ?? d.warmup;
  const c: VqganRunConfig = {
    tokenizer: configToJson(i.config),
    batch: i.batch ?? d.batchSize,
    recon: i.recon ?? d.recon,
    restartEvery: i.restartEvery ?? d.restartEvery,
    seed: i.seed ?? d.seed,
    fineTune: i.fineTune ?? false,
    adversarial: i.adversarial ?? null,
    sources: i.sources ?? [],
    steps: i.steps,
    gradAccum: i.gradAccum ?? 1,
    schedule: vqganSchedule(lr, warmup, i.steps),
    optimizer: makeAdamWConfig({
      beta1: i.beta1 ?? d.beta1,
      beta2: i.beta2 ?? d.beta2,
      eps: 1e-8,
      weightDecay: i.weightDecay ?? d.weightDecay,
      decay: "all",
      clip: i.clip ?? d.clip,
    }),
    logEvery: i.logEvery ?? 10,
    evalEvery: i.evalEvery ?? 0,
    saveEvery: i.saveEvery ?? 100,
    keep: i.keep ?? 1,
  };
  for (const k of ["batch", "steps", "gradAccum", "logEvery", "keep"] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) {
      throw new RangeError(`VqganRunConfig.${k} must be an integer >= 1, found ${c[k]}`);
    }
  }
  return c;
}

/** The tokenizer's schedule: warmup to `lr`, cosine to lr / 10 at `steps`, updates from 1. */
export function vqganSchedule(lr: number, warmup: number, steps: number) {
  return makeSchedule({
    kind: "cosine",
    lr,
    minLr: lr / 10,
    warmup,
    decaySteps: Math.max(steps, warmup),
    offset: 1,
  });
}

/** The images a VQGAN run trains and evaluates on. */
export interface VqganData {
  train: ImageSource[];
  /** Held-out evaluation images (none: no evaluation). */
  eval: RgbImage[];
}

/** What one micro-batch leaves for the after-update work. */
interface Micro {
  x: Tensor;
  r: LossResult;
}

/** A VQGAN, its data sampler, code restarts and optional discriminator (see the module doc). */
export class VqganTrainable implements Trainable {
  readonly kind = "vqgan";
  readonly unit = "images";
  readonly rng: Rng;
  readonly restarts: CodeRestarts;
  #grads = new Map<string, Tensor>();
  #micro: Micro[] = [];

  /**
   * Wraps `model` for `config`; `state` continues a checkpoint's RNG and code usage. Throws a
   * RangeError when `config.batch` images cannot fit the adapter (before allocating anything).
   */
  constructor(
    readonly model: Vqgan,
    readonly config: VqganRunConfig,
    readonly data: VqganData,
    readonly discriminator: PatchDiscriminator | null = null,
    state?: { rng: number; usage: number[] },
  ) {
    checkBatchFits(model.config, config.batch, model.gpu.limits.maxStorageBufferBindingSize);
    this.rng = new Rng(state?.rng ?? config.seed * 2654435761 + 12345);
    this.restarts = new CodeRestarts(
      model.config.numEmbeddings,
      config.restartEvery,
      config.fineTune,
      state?.usage,
    );
  }

  /**
   * Builds the run's model: from checkpoint folder `from.checkpoint` (weights, discriminator,
   * `from.state`'s RNG and code usage), else from `from.weights` (an init tokenizer's) or a fresh
   * init from the seed.
   */
  static async open(
    gpu: Gpu,
    config: VqganRunConfig,
    data: VqganData,
    from: {
      checkpoint?: string;
      state?: { rng: number; usage: number[] };
      weights?: Map<string, Float32Array>;
    } = {},
  ): Promise<VqganTrainable> {
    const vc = vqganConfig(config);
    checkBatchFits(vc, config.batch, gpu.limits.maxStorageBufferBindingSize, "batch");
    let weights = from.weights;
    if (from.checkpoint) weights = (await readTokenizerDir(from.checkpoint)).weights;
    const model = Vqgan.fromWeights(gpu, vc, weights ?? initVqganWeights(vc, config.seed));
    let d: PatchDiscriminator | null = null;
    try {
      if (config.adversarial) {
        d = new PatchDiscriminator(gpu, config.adversarial, config.optimizer);
        if (from.checkpoint) await loadDiscriminator(d, join(from.checkpoint, DISCRIMINATOR_FILE));
      }
      return new VqganTrainable(model, config, data, d, from.state);
    } catch (e) {
      d?.release();
      model.release();
      throw e;
    }
  }

  get gpu(): Gpu {
    return this.model.gpu;
  }
  get params(): ReadonlyMap<string, Tensor> {
    return this.model.params;
  }
  get grads(): ReadonlyMap<string, Tensor> {
    return this.#grads;
  }

  forwardBackward(micro: MicroBatch): Promise<{ loss: Tensor; items: number }> {
    const gpu = this.gpu, c = this.config, R = this.model.config.resolution, B = c.batch;
    if (micro.index === 0) this.#releaseStep();
    const x = gpu.upload(sampleBatch(this.data.train, B, R, this.rng), [B, 3, R, R]);
    const t = micro.step + 1, d = this.discriminator;
    const r = vqganLossAndGrads(this.model, x, {
      recon: c.recon,
      extraReconGrad: d ? (rec) => d.reconGrad(rec, t) : undefined,
    });
    if (micro.count === 1) {
      this.#grads = r.grads;
    } else {
      // Average over the micro-batches: g = sum_k g_k / K.
      const s = f32Literal(1 / micro.count);
      for (const [n, g] of r.grads) {
        const prev = micro.index === 0 ? null : this.#grads.get(n)!;
        this.#grads.set(n, prev ? map(gpu, `a + b * ${s}`, [prev, g]) : map(gpu, `a * ${s}`, [g]));
        prev?.release();
        g.release();
      }
    }
    r.grads = new Map();
    this.#micro.push({ x, r });
    const beta = this.model.config.commitmentCost;
    const loss = map(gpu, `a + b * ${f32Literal(1 + beta)}`, [r.stats[0], r.stats[1]]);
    return Promise.resolve({ loss, items: B });
  }

  /**
   * The discriminator's step, the step's figures staged for the next read (reconstruction and VQ
   * terms, batch PSNR of the last micro-batch, codes used in the restart window, the
   * discriminator's losses), the codes counted on the GPU, and the code restarts where a window
   * ends (the only read back).
   */
  async afterUpdate(ctx: UpdateContext): Promise<Record<string, number>> {
    const gpu = this.gpu, d = this.discriminator;
    const last = this.#micro[this.#micro.length - 1];
    d?.afterStep(last.x, last.r.recon, ctx.step, ctx.lr);
    const [rec, vq, mse] = last.r.stats;
    ctx.stage("rec", rec);
    ctx.stage("vq", vq);
    ctx.stage("psnr", mse, psnr);
    for (const m of this.#micro) this.restarts.count(gpu, m.r.ids);
    const used = this.restarts.used(gpu);
    ctx.stage("codes_used", used);
    used.release();
    const extra = d?.stats() ?? { names: [], tensors: [] };
    extra.names.forEach((k, i) => ctx.stage(k, extra.tensors[i]));
    const name = "quantize.embedding.weight";
    const restarted = await this.restarts.restartDue(
      gpu,
      ctx.step,
      last.r.zRows,
      this.model.p(name),
      [ctx.optimizer.m(name), ctx.optimizer.v(name)],
      this.rng,
    );
    this.#releaseStep();
    return { restarted };
  }

  /** Frees the last step's gradients, batches and loss tensors (the update has been recorded). */
  #releaseStep(): void {
    for (const m of this.#micro) {
      releaseLoss(m.r);
      m.x.release();
    }
    this.#micro = [];
    for (const g of this.#grads.values()) g.release();
    this.#grads = new Map();
  }

  /** Reconstruction of the held-out images: loss = their mean MSE; also PSNR and the count. */
  async evaluate(): Promise<(EvalMetrics & { psnr: number; mse: number; images: number }) | null> {
    if (!this.data.eval.length) return null;
    const tok = new VqganTokenizer(this.model, "training", this.config.batch);
    const e = await evaluateReconstruction(tok, this.data.eval);
    return { loss: e.mse, psnr: e.psnr, mse: e.mse, images: e.images };
  }

  /** config.json + model.safetensors (a loadable tokenizer) and the discriminator. */
  async saveModel(dir: string): Promise<void> {
    await this.restarts.readUsage(this.gpu); // for state(), which the Trainer calls next
    await saveTokenizer(dir, this.model.config, await this.model.readWeights());
    const d = this.discriminator;
    if (d) {
      const st = d.state();
      const vals = await this.gpu.readMany([...st.values()]);
      const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
      [...st.keys()].forEach((k, i) => {
        tensors[k] = { dtype: "F32", shape: [...st.get(k)!.shape], data: vals[i] as Float32Array };
      });
      await writeSafetensors(join(dir, DISCRIMINATOR_FILE), tensors);
    }
  }

  /** The RNG state and the restart window's code usage (as of the last read: see saveModel). */
  state(): { rng: number; usage: number[] } {
    return { rng: this.rng.state, usage: Array.from(this.restarts.usage) };
  }

  /** Frees the discriminator, the pending step's tensors and the model. */
  release(): void {
    this.#releaseStep();
    this.restarts.release();
    this.discriminator?.release();
    this.model.release();
  }
}

/** The tokenizer config of a run config. */
export function vqganConfig(c: VqganRunConfig): VqganConfig {
  return parseConfig(c.tokenizer, "trainer_state.json");
}

async function loadDiscriminator(d: PatchDiscriminator, path: string): Promise<void> {
  const f = await SafetensorsFile.open(path);
  try {
    const vals = new Map<string, Float32Array>();
    for (const k of f.names()) vals.set(k, await f.readF32(k));
    d.load(vals);
  } finally {
    f.close();
  }
}

// ------------------------------------------------ checkpoints of the previous tokenizer trainer

/**
 * A checkpoint of the tokenizer trainer that came before the shared loop: `DIR/latest.json` names
 * `DIR/ckpt-STEP/` holding model.safetensors, optimizer.safetensors (`m.<param>`, `v.<param>`,
 * `ext.<discriminator tensor>`) and state.json (step, RNG, options, config, code usage, sources).
 */
export interface LegacyVqganCheckpoint {
  path: string;
  step: number;
  rng: number;
  usage: number[];
  options: TrainOptions;
  config: VqganConfig;
  sources: string[] | null;
  adversarial: AdversarialOptions | null;
}

/** The previous trainer's checkpoint in `dir` (its `checkpoints/` folder), or null if none. */
export async function readLegacyVqganCheckpoint(
  dir: string,
): Promise<LegacyVqganCheckpoint | null> {
  const latest = join(dir, "latest.json");
  let sub: unknown;
  try {
    sub = JSON.parse(await Deno.readTextFile(latest)).checkpoint;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new RangeError(`${latest}: unreadable (${(e as Error).message})`);
  }
  if (typeof sub !== "string" || !/^ckpt-\d+$/.test(sub)) {
    throw new RangeError(`${latest}: "checkpoint" must name a ckpt-STEP folder, found ${sub}`);
  }
  const path = join(dir, sub);
  const st = JSON.parse(await Deno.readTextFile(join(path, "state.json")));
  if (st.version !== 1 || !Number.isInteger(st.step)) {
    throw new RangeError(`${path}/state.json: not a tokenizer checkpoint state (version 1)`);
  }
  return {
    path,
    step: st.step,
    rng: st.rng >>> 0,
    usage: st.usage,
    options: st.options,
    config: parseConfig(st.config, `${path}/state.json`),
    sources: st.extra?.sources ?? null,
    adversarial: st.extra?.adversarial ?? null,
  };
}

/** The run config of a previous trainer's checkpoint, for `steps` and the given cadence. */
export function legacyRunConfig(
  c: LegacyVqganCheckpoint,
  over: Partial<VqganRunInput> & { steps: number },
): VqganRunConfig {
  const o = c.options;
  return makeVqganRunConfig({
    config: c.config,
    batch: o.batchSize,
    lr: o.lr,
    warmup: o.warmup,
    beta1: o.beta1,
    beta2: o.beta2,
    weightDecay: o.weightDecay,
    clip: o.clip,
    recon: o.recon,
    restartEvery: o.restartEvery,
    seed: o.seed,
    adversarial: c.adversarial,
    sources: c.sources ?? [],
    ...over,
  });
}

/**
 * Continues a previous trainer's checkpoint with the shared loop: its weights, AdamW moments and
 * step, discriminator, RNG and code usage; the next save writes the current format.
 */
export async function resumeLegacyVqgan(
  gpu: Gpu,
  c: LegacyVqganCheckpoint,
  run: VqganRunConfig,
  data: VqganData,
): Promise<Trainer<VqganTrainable, VqganRunConfig>> {
  const read = async (file: string) => {
    const f = await SafetensorsFile.open(join(c.path, file));
    try {
      const out = new Map<string, Float32Array>();
      for (const n of f.names()) out.set(n, await f.readF32(n));
      return out;
    } finally {
      f.close();
    }
  };
  const model = await VqganTrainable.open(gpu, run, data, {
    weights: await read("model.safetensors"),
    state: { rng: c.rng, usage: c.usage },
  });
  const trainer = new Trainer(gpu, model, run, {
    step: c.step,
    tokens: c.step * run.batch * run.gradAccum,
    seconds: 0,
    history: [],
  });
  try {
    const opt = await read("optimizer.safetensors");
    for (const n of model.params.keys()) {
      const m = opt.get(`m.${n}`), v = opt.get(`v.${n}`);
      if (!m || !v) throw new RangeError(`${c.path}/optimizer.safetensors: no moments of ${n}`);
      gpu.write(trainer.optimizer.m(n), m);
      gpu.write(trainer.optimizer.v(n), v);
    }
    trainer.optimizer.step = c.step;
    if (model.discriminator) {
      const ext = new Map<string, Float32Array>();
      for (const [k, t] of opt) if (k.startsWith("ext.")) ext.set(k.slice(4), t);
      model.discriminator.load(ext);
    }
    await gpu.settle();
  } catch (e) {
    trainer.release();
    throw e;
  }
  return trainer;
}
