/**
 * What {@link Trainer} needs from a model to train it: the one seam between the shared loop
 * (optimizer, schedule, clipping, accumulation, checkpoints, resume, signals, metrics, progress)
 * and a model's own math. Two implementations: {@link LlamaTrainable} (next-token prediction on
 * packed token rows) and {@link VqganTrainable} (the image tokenizer: reconstruction + VQ losses,
 * dead-code restarts, an optional discriminator).
 *
 * One optimizer step of a run, as the Trainer drives it:
 *
 * ```
 * for k in 0..K-1:  loss_k = model.forwardBackward({ step, index: k, count: K })
 *                   (gradients of loss_k / K, replacing (k = 0) or adding to model.grads)
 * norm = clip(model.grads); AdamW(model.params, model.grads, lr(step))        the Trainer's
 * metrics = await model.afterUpdate?({ step + 1, lr, optimizer })               model-specific
 * ```
 * The Trainer reads the losses and gradient norms back only every `logEvery` steps and before
 * every save; a model's per-step figures ride along (`ctx.stage`: copied into slots on the GPU), and
 * a model that must read values back after an update reads them through `ctx.readMany`, which
 * reads the Trainer's slots in the same wait.
 *
 * A checkpoint holds `model.saveModel(dir)`'s files (loadable by the model's own loader), the
 * Trainer's `optimizer.safetensors` and a `trainer_state.json` into which `model.state()` is
 * merged; a model's factory rebuilds it from such a folder.
 * @module
 */
import type { HostArray, Tensor } from "@lvm/gpu";
import type { AdamW, AdamWConfig } from "./optimizer.ts";
import type { LrSchedule } from "./schedule.ts";

/** The loop settings every run has, whatever it trains (JSON; saved in trainer_state.json). */
export interface LoopConfig {
  /** Optimizer steps of the run. */
  steps: number;
  /** Micro-batches whose gradients are averaged into one optimizer step. */
  gradAccum: number;
  schedule: LrSchedule;
  optimizer: AdamWConfig;
  /** Steps between progress reports (and loss read backs). */
  logEvery: number;
  /** Steps between evaluations (0 = never during the run). */
  evalEvery: number;
  /** Steps between checkpoints (0 = only at the end and on interrupt). */
  saveEvery: number;
  /** Checkpoints kept in the run folder (the oldest are deleted). */
  keep: number;
}

/** Which micro-batch {@link Trainable.forwardBackward} records. */
export interface MicroBatch {
  /** Optimizer updates done before this step (0 for the first). */
  step: number;
  /** k in 0..count-1: 0 replaces the gradients, later ones add to them. */
  index: number;
  /** K: micro-batches of this step; each one's gradients are scaled by 1/K. */
  count: number;
}

/** What the Trainer hands a model after each optimizer update. */
export interface UpdateContext {
  /** Updates done, this one included (1 for the first). */
  step: number;
  /** The learning rate of this update. */
  lr: number;
  /** The optimizer, e.g. to reset the moments of re-initialised parameters. */
  optimizer: AdamW;
  /**
   * `gpu.readMany` that also reads the Trainer's slots (losses, gradient norms, staged figures): a
   * model that must read back after an update should read through this, so that a following
   * `flush()` has its records without a second wait (each wait costs ~11 ms on Deno). Figures
   * needed only in the records are better staged ({@link stage}): no wait at all.
   */
  readMany(tensors: readonly Tensor[]): Promise<HostArray[]>;
  /**
   * Makes `value` (element 0 of an f32 tensor, as it is once this step's work has run) figure
   * `name` of this step's record, read back with the loss slots (every `logEvery` steps), through
   * `f` if given (the `f` of the name's first stage holds for the run): a per-step figure without
   * a per-step wait. The value is copied on the GPU; the tensor may be released after the call.
   */
  stage(name: string, value: Tensor, f?: (v: number) => number): void;
}

/** An evaluation: `loss` (drawn on the loss chart beside the training loss) and other figures. */
export interface EvalMetrics {
  loss: number;
}

/** What a model's {@link Trainable.evaluate} gives (when not null). */
export type EvalOf<T extends Trainable> = NonNullable<Awaited<ReturnType<T["evaluate"]>>>;

/** A model the {@link Trainer} can train (see the module doc). */
export interface Trainable {
  /** "llama", "vqgan": saved in trainer_state.json so a checkpoint resumes only as its kind. */
  readonly kind: string;
  /** What `items` counts in progress reports: "tokens", "images". */
  readonly unit: string;
  /** Parameters the optimizer updates (name -> f32 tensor), in update order. */
  readonly params: ReadonlyMap<string, Tensor>;
  /** Their gradients after {@link forwardBackward} (same names). */
  readonly grads: ReadonlyMap<string, Tensor>;
  /**
   * Records forward and backward of one micro-batch (see {@link MicroBatch}). Returns its (1) f32
   * loss tensor (the Trainer copies and releases it; nothing is read back) and the items it used.
   */
  forwardBackward(micro: MicroBatch): Promise<{ loss: Tensor; items: number }>;
  /** Model-specific work after an update; may return per-step figures for the progress record. */
  afterUpdate?(ctx: UpdateContext): Promise<Record<string, number> | void>;
  /** Evaluation on held-out data, or null when there is none. */
  evaluate(): Promise<EvalMetrics | null>;
  /** Writes the model files of a checkpoint into `dir` (the Trainer writes the rest). */
  saveModel(dir: string): Promise<void>;
  /** JSON merged into trainer_state.json (data position, RNG, ...): what its factory resumes from. */
  state(): Record<string, unknown>;
  /** Frees the model's GPU memory. */
  release(): void;
}
