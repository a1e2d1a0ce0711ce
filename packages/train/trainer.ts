/**
 * The training loop, the same for every model (see trainable.ts for the model's side). One
 * optimizer step:
 *
 * ```
 * for k in 0..gradAccum-1:                      micro-batch k
 *   loss_k = model.forwardBackward(k)           gradients of loss_k / K, accumulated
 *   copy loss_k into a GPU slot                 (no readback)
 * norm, scale = clipGradNorm(grads, clip)       on the GPU
 * adamw(every param, lr(step), gradScale)       on the GPU, scale read by the kernel
 * copy norm into a GPU slot
 * model.afterUpdate(step, lr, optimizer)        model-specific (code restarts, a discriminator)
 * ```
 * The CPU reads the slots back only every `logEvery` steps and before every save (one readMany
 * of small buffers): each step's loss (mean over its micro-batches), gradient norm and the
 * figures the model staged (`ctx.stage`: copied into slots on the GPU); a model that reads back in
 * `afterUpdate` through `ctx.readMany` takes the slots along (a `flush()` right after that step
 * then waits for nothing: each wait costs ~11 ms on Deno). The CPU
 * records at most one step ahead of the GPU (it waits for step s-1 to finish after recording step
 * s), so memory stays bounded and progress timings are honest. On Deno (2.9) that wait is tighter
 * than it reads: `onSubmittedWorkDone()` polls the device inside the call and returns only when
 * everything submitted has run (a one-off script: 60 matmuls of 512^2 submitted, ~270 ms of work,
 * then the call took 271-299 ms and the promise 11 ms more), so each step starts on an idle queue.
 * Without the wait (a scratch trainable without per-step reads, 4 steps per flush, the tiny
 * tokenizer on lavapipe): 446 against 449 ms per step, within noise; on a real GPU the gap is the
 * step's first submitted batch.
 *
 * Divergence: before every checkpoint the losses and gradient norms since the last check and the
 * parameters' global norm must be finite; otherwise nothing is saved (the good checkpoints stay,
 * `latest` keeps naming the last of them) and {@link DivergenceError} names it.
 *
 * Exact resume: the model (F32), the AdamW moments and step count, the schedule (a function of the
 * step) and the model's state (data position, RNG) are saved. A run of N steps and a run of k steps
 * + resume + N-k steps give the same weights bit for bit on the same adapter.
 * @module
 */
import type { Gpu, HostArray, Tensor } from "@lvm/gpu";
import { gradNorm } from "@lvm/kernels";
import type { TokenDataset, TokenLoader } from "@lvm/sentence";
import { join } from "node:path";
import {
  commitCheckpoint,
  HISTORY_LIMIT,
  type LogRecord,
  OPTIMIZER_FILE,
  readTrainerState,
  resolveCheckpoint,
  STATE_FILE,
  type TrainerState,
} from "./checkpoint.ts";
import { type TrainConfig, validateTrainConfig } from "./config.ts";
import type { LossEvalResult } from "./evaluate.ts";
import { LlamaTrainable } from "./llama.ts";
import { LossChart } from "./metrics.ts";
import { AdamW } from "./optimizer.ts";
import { lrAt } from "./schedule.ts";
import type { EvalMetrics, EvalOf, LoopConfig, Trainable } from "./trainable.ts";

/** One completed step, as read back. */
export interface StepRecord {
  /** Steps completed after this one (1 for the first). */
  step: number;
  /** Mean loss of the step's micro-batches. */
  loss: number;
  /** Learning rate used. */
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** The model's own figures of this step ({@link Trainable.afterUpdate}), if any. */
  metrics?: Record<string, number>;
}

/** A progress report (every `logEvery` steps and at the end). */
export interface LogEntry {
  step: number;
  steps: number;
  /** Mean loss over the steps since the previous report. */
  loss: number;
  /** Learning rate of the last step. */
  lr: number;
  /** Gradient norm of the last step (before clipping). */
  gradNorm: number;
  /** Items (tokens, images: {@link Trainable.unit}) trained on so far, all sessions. */
  tokens: number;
  /** Items per second since the previous report. */
  tokensPerSec: number;
  /** What `tokens` counts ("tokens", "images"). */
  unit: string;
  /** Seconds of this session so far. */
  elapsedSec: number;
  /** Estimated seconds to the last step at this session's rate. */
  etaSec: number;
  /** Steps per second of this session (validation and saving left out). */
  stepsPerSec: number;
  /** The steps of this report. */
  records: StepRecord[];
}

/** An evaluation report: the model's evaluation (a LLaMA's {@link LossEvalResult}) and the step. */
export type EvalEntry<E extends EvalMetrics = LossEvalResult> = E & { step: number };

/** Callbacks and stop signal of {@link Trainer.run}; `E` is the model's evaluation. */
export interface RunOptions<E extends EvalMetrics = LossEvalResult> {
  /** Run folder for checkpoints (null: never save). */
  out: string | null;
  /** Abort to stop after the current step; a checkpoint is saved (when `out` is set). */
  signal?: AbortSignal;
  /** Also report after the first step of this session (a sign of life on slow runs). */
  logFirst?: boolean;
  /** Evaluate after the last step (default: when `evalEvery` > 0). */
  finalEval?: boolean;
  /** PNG path of the loss chart, redrawn at each evaluation and report (throttled) and at the end. */
  chart?: string | null;
  /** Title of the loss chart. */
  chartTitle?: string;
  /** Legend of the evaluation's loss on the chart (default "validation"). */
  chartEvalName?: string;
  onLog?(entry: LogEntry): void;
  onEval?(entry: EvalEntry<E>): void;
  onSave?(path: string, step: number): void;
}

/** How {@link Trainer.run} ended. */
export interface RunResult<E extends EvalMetrics = LossEvalResult> {
  step: number;
  /** True when stopped by the signal before the last step. */
  interrupted: boolean;
  /** The last checkpoint written, if any. */
  checkpoint: string | null;
  /** Last reported mean loss (NaN if none). */
  loss: number;
  /** The last record read back (its metrics: the model's figures of the last step). */
  last: StepRecord | null;
  /** The last evaluation of this session, if any. */
  eval: E | null;
}

/**
 * The loss, a gradient norm or the weights became NaN or infinite: training stopped without saving
 * the poisoned state. `checkpoint` is the last good checkpoint (null if none was written).
 */
export class DivergenceError extends Error {
  override name = "DivergenceError";
  constructor(message: string, readonly step: number, readonly checkpoint: string | null) {
    super(message);
  }
}

/** Settings that may change when resuming (the rest are fixed by the checkpoint). */
export type ResumeOverrides =
  & Partial<
    Pick<
      TrainConfig,
      "steps" | "logEvery" | "evalEvery" | "evalBatches" | "saveEvery" | "keep" | "data"
    >
  >
  & {
    /** New peak learning rate (the floor keeps its ratio to the peak unless `minLr` is given). */
    lr?: number;
    /** New floor of the decay. */
    minLr?: number;
    /** New warmup steps. */
    warmup?: number;
    /**
     * New end of the decay (the step where the floor is reached): a run extended past its old
     * end otherwise continues at the floor; a new end restarts the decay from where the cosine
     * stands at the current step ("warm restart").
     */
    decaySteps?: number;
  };

/**
 * A schedule with the learning-rate overrides of a resumed run applied: `lr` replaces the peak
 * (and scales the floor and the warmup start with it unless `minLr` is given), `warmup` the
 * warmup length (the decay end moves out if it falls before it), `decaySteps` the decay end.
 */
export function overrideSchedule<C extends LoopConfig>(
  config: C,
  o: { lr?: number; minLr?: number; warmup?: number; decaySteps?: number },
): C {
  const s = { ...config.schedule };
  if (o.lr !== undefined) {
    const ratio = s.lr > 0 ? o.lr / s.lr : 0;
    s.minLr = o.minLr ?? (s.lr > 0 ? s.minLr * ratio : o.lr / 5);
    s.initLr = s.lr > 0 ? s.initLr * ratio : 0;
    s.lr = o.lr;
  } else if (o.minLr !== undefined) s.minLr = o.minLr;
  if (o.warmup !== undefined) {
    s.warmup = o.warmup;
    if (s.kind !== "constant") s.decaySteps = Math.max(s.decaySteps, o.warmup);
  }
  if (o.decaySteps !== undefined) {
    if (o.decaySteps < s.warmup) {
      throw new RangeError(
        `decaySteps ${o.decaySteps} must be at least the warmup (${s.warmup} steps)`,
      );
    }
    s.decaySteps = o.decaySteps;
  }
  return { ...config, schedule: s };
}

/** A training run in progress: model, optimizer, step. `T` is the model trained. */
export class Trainer<T extends Trainable = LlamaTrainable, C extends LoopConfig = TrainConfig> {
  /** Optimizer steps completed. */
  step = 0;
  /** Items (tokens, images) trained on. */
  tokens = 0;
  /** Seconds of training in earlier sessions (from the checkpoint). */
  readonly priorSeconds: number;
  readonly history: LogRecord[];
  readonly optimizer: AdamW;

  #lossSlots: Tensor; // (logEvery * gradAccum) losses of the pending steps' micro-batches
  #normSlots: Tensor; // (logEvery) gradient norms of the pending steps
  #pending: {
    step: number;
    lr: number;
    metrics?: Record<string, number>;
    staged?: string[]; // names of the figures staged by the step (UpdateContext.stage)
  }[] = [];
  // Per-step figures staged by the model: (logEvery) slots per name, read with the loss slots.
  #figures = new Map<string, { slots: Tensor; f?: (v: number) => number }>();
  #ready: StepRecord[] = []; // read back early (slots full, a save) and not yet returned by flush()
  // The slots as read with a model's afterUpdate read (UpdateContext.readMany), valid while no
  // later step has written them: `count` pending steps.
  #prefetched: { count: number; slots: HostArray[] } | null = null;
  #inflight: Promise<unknown> | null = null;
  #sessionStart = performance.now();
  #mark = { time: performance.now(), tokens: 0, step: 0 };

  /**
   * A trainer for `model` with `config`'s loop settings: fresh AdamW moments, or `prior` (a
   * checkpoint's step, items, seconds and history; then call {@link loadOptimizer}).
   */
  constructor(
    readonly gpu: Gpu,
    readonly model: T,
    readonly config: C,
    prior: { step: number; tokens: number; seconds: number; history: LogRecord[] } = {
      step: 0,
      tokens: 0,
      seconds: 0,
      history: [],
    },
  ) {
    this.optimizer = new AdamW(gpu, model.params, config.optimizer);
    this.step = prior.step;
    this.tokens = prior.tokens;
    this.priorSeconds = prior.seconds;
    this.history = prior.history;
    this.#lossSlots = gpu.zeros([config.logEvery * config.gradAccum]);
    this.#normSlots = gpu.zeros([config.logEvery]);
    this.#mark = { time: performance.now(), tokens: this.tokens, step: this.step };
  }

  /**
   * A new LLaMA run: the model is initialised from `config.seed` (or loaded from `config.init`,
   * whose config.json must match `config.model`), fresh AdamW moments, the loader at the start.
   */
  static async create(gpu: Gpu, config: TrainConfig): Promise<Trainer<LlamaTrainable>> {
    validateTrainConfig(config);
    const model = await LlamaTrainable.open(gpu, config);
    return new Trainer(gpu, model, config);
  }

  /**
   * Continues a LLaMA run from `path`: a checkpoint folder or a run folder (its latest
   * checkpoint). `overrides` may extend `steps`, change the cadence, the learning rate (see
   * {@link overrideSchedule}) and the dataset's location (the loader refuses a dataset whose
   * content differs).
   */
  static async resume(
    gpu: Gpu,
    path: string,
    overrides: ResumeOverrides = {},
  ): Promise<Trainer<LlamaTrainable>> {
    const dir = await resolveCheckpoint(path);
    const state = await readTrainerState(dir);
    const { lr, minLr, warmup, decaySteps, ...rest } = overrides;
    const config = overrideSchedule(
      { ...state.config, ...stripUndefined(rest) } as TrainConfig,
      { lr, minLr, warmup, decaySteps },
    );
    validateTrainConfig(config);
    if (config.steps < state.step) {
      throw new RangeError(
        `${dir}: the checkpoint is at step ${state.step}, past the requested ${config.steps} steps`,
      );
    }
    const model = await LlamaTrainable.open(gpu, config, { weights: dir, loader: state.loader });
    return await Trainer.fromCheckpoint(gpu, model, config, dir, state);
  }

  /**
   * A trainer continuing the checkpoint in `dir` (whose trainer state is `state`) with `model`,
   * already rebuilt from that checkpoint by its factory: loads the AdamW moments and checks their
   * step.
   */
  static async fromCheckpoint<M extends Trainable, K extends LoopConfig>(
    gpu: Gpu,
    model: M,
    config: K,
    dir: string,
    state: TrainerState<unknown>,
  ): Promise<Trainer<M, K>> {
    const t = new Trainer(gpu, model, config, {
      step: state.step,
      tokens: state.tokens,
      seconds: state.elapsed_s,
      history: state.log_history ?? [],
    });
    try {
      await t.optimizer.load(join(dir, OPTIMIZER_FILE));
      if (t.optimizer.step !== state.step) {
        throw new RangeError(
          `${dir}: ${OPTIMIZER_FILE} is at step ${t.optimizer.step}, ${STATE_FILE} at ${state.step}`,
        );
      }
    } catch (e) {
      t.release();
      throw e;
    }
    return t;
  }

  /** The LLaMA run's training loader (a LLaMA trainer only). */
  get loader(): TokenLoader {
    return (this.model as unknown as LlamaTrainable).loader;
  }
  /** The LLaMA run's dataset (a LLaMA trainer only). */
  get dataset(): TokenDataset {
    return (this.model as unknown as LlamaTrainable).dataset;
  }

  /** Learning rate of the next step. */
  get lr(): number {
    return lrAt(this.config.schedule, this.step);
  }

  /** True when every step of the run is done. */
  get done(): boolean {
    return this.step >= this.config.steps;
  }

  /**
   * Records the forward and backward passes of one step's `gradAccum` micro-batches into the
   * model's gradients (averaged) and returns their (1) loss tensors (the caller releases them).
   * Part of {@link trainStep}; public so gradient accumulation can be checked on its own.
   */
  async accumulateGradients(): Promise<Tensor[]> {
    const K = this.config.gradAccum;
    const losses: Tensor[] = [];
    for (let k = 0; k < K; k++) {
      const { loss, items } = await this.model.forwardBackward({
        step: this.step,
        index: k,
        count: K,
      });
      this.tokens += items;
      losses.push(loss);
    }
    return losses;
  }

  /** Records one optimizer step (see the module doc). Reads nothing back unless the slots are full. */
  async trainStep(): Promise<void> {
    const { gradAccum: K, logEvery } = this.config;
    if (this.#pending.length === logEvery) this.#ready.push(...(await this.#readPending()));
    this.#prefetched = null; // this step writes the slots
    const slot = this.#pending.length;
    const losses = await this.accumulateGradients();
    losses.forEach((l, k) => {
      this.gpu.copy(l, this.#lossSlots, 4, 0, (slot * K + k) * 4);
      l.release();
    });
    const lr = this.lr;
    const { norm } = this.optimizer.update(this.model.grads, lr);
    this.gpu.copy(norm, this.#normSlots, 4, 0, slot * 4);
    norm.release();
    this.step++;
    const count = this.#pending.length + 1; // with this step
    const staged: string[] = [];
    const metrics = await this.model.afterUpdate?.({
      step: this.step,
      lr,
      optimizer: this.optimizer,
      readMany: async (tensors) => {
        const slots = this.#slots();
        const host = await this.gpu.readMany([...tensors, ...slots]);
        this.#prefetched = { count, slots: host.slice(tensors.length) };
        return host.slice(0, tensors.length);
      },
      stage: (name, value, f) => {
        let fig = this.#figures.get(name);
        if (!fig) this.#figures.set(name, fig = { slots: this.gpu.zeros([logEvery]), f });
        this.gpu.copy(value, fig.slots, 4, 0, slot * 4);
        staged.push(name);
        this.#prefetched = null; // a slot written after the read
      },
    });
    this.#pending.push({
      step: this.step,
      lr,
      ...(metrics ? { metrics } : {}),
      ...(staged.length ? { staged } : {}),
    });
    // Keep at most one step queued ahead of the GPU (on Deno the call below already waits for
    // this step: see the module doc).
    this.gpu.submit();
    const done = this.gpu.device.queue.onSubmittedWorkDone();
    if (this.#inflight) await this.#inflight;
    this.#inflight = done;
  }

  async #readPending(): Promise<StepRecord[]> {
    if (!this.#pending.length) return [];
    const K = this.config.gradAccum;
    const pre = this.#prefetched?.count === this.#pending.length ? this.#prefetched : null;
    const [l, n, ...figs] = pre ? pre.slots : await this.gpu.readMany(this.#slots());
    this.#prefetched = null;
    const names = [...this.#figures.keys()];
    const out = this.#pending.map((p, i) => {
      let s = 0;
      for (let k = 0; k < K; k++) s += l[i * K + k];
      const r: StepRecord = { step: p.step, lr: p.lr, loss: s / K, gradNorm: n[i] };
      if (p.staged || p.metrics) {
        const m: Record<string, number> = {};
        for (const name of p.staged ?? []) {
          const v = figs[names.indexOf(name)][i], f = this.#figures.get(name)!.f;
          m[name] = f ? f(v) : v;
        }
        r.metrics = { ...m, ...p.metrics };
      }
      return r;
    });
    this.#pending = [];
    return out;
  }

  /** The slots a read takes: losses, gradient norms, then the staged figures'. */
  #slots(): Tensor[] {
    return [this.#lossSlots, this.#normSlots, ...[...this.#figures.values()].map((f) => f.slots)];
  }

  /** Waits for the recorded steps and returns the records not yet returned, oldest first. */
  async flush(): Promise<StepRecord[]> {
    const out = [...this.#ready, ...(await this.#readPending())];
    this.#ready = [];
    return out;
  }

  /** Runs steps up to the end (or `n` more) and returns their records. */
  async train(n = this.config.steps - this.step): Promise<StepRecord[]> {
    const out: StepRecord[] = [];
    for (let i = 0; i < n && !this.done; i++) {
      await this.trainStep();
      if (this.#pending.length === this.config.logEvery) out.push(...(await this.flush()));
    }
    out.push(...(await this.flush()));
    return out;
  }

  /**
   * The first non-finite figure since the last check, or null when all are finite: every loss
   * and gradient norm not yet checked (read back now; they are still reported later) and the
   * parameters' global norm (one GPU reduction).
   */
  async checkFinite(): Promise<{ what: string; lr: number } | null> {
    const recs = await this.flush();
    this.#ready.push(...recs);
    for (const r of recs) {
      if (!Number.isFinite(r.loss)) {
        return { what: `loss is ${r.loss} at step ${r.step}`, lr: r.lr };
      }
      if (!Number.isFinite(r.gradNorm)) {
        return { what: `gradient norm is ${r.gradNorm} at step ${r.step}`, lr: r.lr };
      }
    }
    const norm = gradNorm(this.gpu, [...this.model.params.values()]);
    const [w] = await this.gpu.readMany([norm]);
    norm.release();
    if (!Number.isFinite(w[0])) {
      return {
        what: `the weights' norm is ${w[0]} at step ${this.step}`,
        lr: lrAt(this.config.schedule, Math.max(0, this.step - 1)),
      };
    }
    return null;
  }

  /** The model's evaluation (null when it has no held-out data). */
  async evaluate(): Promise<EvalOf<T> | null> {
    return (await this.model.evaluate()) as EvalOf<T> | null;
  }

  /** Seconds of training so far, all sessions. */
  elapsedSeconds(): number {
    return this.priorSeconds + (performance.now() - this.#sessionStart) / 1000;
  }

  /** The JSON of `trainer_state.json` for the current step. */
  state(): TrainerState<C> {
    return {
      format: "lvm-trainer-state",
      version: 1,
      ...(this.model.kind === "llama" ? {} : { kind: this.model.kind }),
      step: this.step,
      tokens: this.tokens,
      config: this.config,
      next_lr: this.lr,
      ...(this.model.state() as { loader: TrainerState["loader"]; rng: TrainerState["rng"] }),
      elapsed_s: +this.elapsedSeconds().toFixed(3),
      log_history: this.history.slice(-HISTORY_LIMIT),
      saved_at: new Date().toISOString(),
    };
  }

  /**
   * Saves a checkpoint of the current step into run folder `out` (see checkpoint.ts): model,
   * optimizer, trainer state, then `latest`; keeps the newest `config.keep`. Returns its path.
   * Does not check for divergence (see {@link checkFinite}; {@link run} does).
   */
  async save(out: string): Promise<string> {
    await this.gpu.sync();
    return await commitCheckpoint(out, this.step, this.config.keep, async (dir) => {
      await this.model.saveModel(dir);
      await this.optimizer.save(join(dir, OPTIMIZER_FILE));
      await Deno.writeTextFile(join(dir, STATE_FILE), JSON.stringify(this.state(), null, 2) + "\n");
    });
  }

  /**
   * Trains to `config.steps`, reporting every `logEvery` steps, evaluating every `evalEvery`,
   * saving every `saveEvery` and at the end. When `signal` aborts, stops after the current step and
   * saves. Throws {@link DivergenceError} when a loss, gradient norm or the weights are not finite,
   * before saving them.
   */
  async run(options: RunOptions<EvalOf<T>>): Promise<RunResult<EvalOf<T>>> {
    const c = this.config;
    const { out, signal } = options;
    let checkpoint: string | null = null;
    let lastLoss = NaN;
    let last: StepRecord | null = null;
    let evaluation: EvalOf<T> | null = null;
    let savedStep = -1;
    this.#mark = { time: performance.now(), tokens: this.tokens, step: this.step };
    const sessionStartStep = this.step;
    const wallStart = performance.now();
    let busyStart = wallStart; // moved forward by the time spent validating and saving
    const chart = options.chart
      ? new LossChart(options.chart, this.history, options.chartTitle, options.chartEvalName)
      : null;
    // Time spent validating and saving is left out of throughput and ETA.
    const paused = async <R>(fn: () => Promise<R>): Promise<R> => {
      const t0 = performance.now();
      try {
        return await fn();
      } finally {
        const d = performance.now() - t0;
        this.#mark.time += d;
        busyStart += d;
      }
    };
    const lastGood = async () => checkpoint ?? (out ? await latestOf(out) : null);
    const diverged = async (what: string, lr: number) => {
      const good = await lastGood();
      const peak = c.schedule.lr;
      return new DivergenceError(
        `training diverged: ${what} (lr ${lr.toExponential(3)}, peak ${peak.toExponential(3)}); ` +
          `nothing was saved from this state. ${
            good
              ? `The last good checkpoint is ${good} (latest points at it): resume from it`
              : "No checkpoint was written: start again"
          } with a lower --lr (e.g. ${(peak / 10).toExponential(1)}) or a longer --warmup ` +
          `(--resume takes a new --lr and --warmup)`,
        this.step,
        good,
      );
    };
    const report = async () => {
      const records = await this.flush();
      if (!records.length) return;
      const now = performance.now();
      const secs = (now - this.#mark.time) / 1000;
      last = records[records.length - 1];
      const loss = records.reduce((s, r) => s + r.loss, 0) / records.length;
      const busy = (now - busyStart) / 1000;
      const rate = busy / Math.max(1, this.step - sessionStartStep);
      const entry: LogEntry = {
        step: this.step,
        steps: c.steps,
        loss,
        lr: last.lr,
        gradNorm: last.gradNorm,
        tokens: this.tokens,
        tokensPerSec: (this.tokens - this.#mark.tokens) / Math.max(secs, 1e-9),
        unit: this.model.unit,
        elapsedSec: (now - wallStart) / 1000,
        etaSec: rate * (c.steps - this.step),
        stepsPerSec: (this.step - sessionStartStep) / Math.max(busy, 1e-9),
        records,
      };
      this.#mark = { time: now, tokens: this.tokens, step: this.step };
      lastLoss = loss;
      this.history.push({
        step: this.step,
        loss,
        lr: last.lr,
        grad_norm: last.gradNorm,
        tokens: this.tokens,
      });
      if (this.history.length > HISTORY_LIMIT) {
        this.history.splice(0, this.history.length - HISTORY_LIMIT);
      }
      options.onLog?.(entry);
      const bad = records.find((r) => !Number.isFinite(r.loss) || !Number.isFinite(r.gradNorm));
      if (bad) {
        const what = Number.isFinite(bad.loss)
          ? `gradient norm is ${bad.gradNorm} at step ${bad.step}`
          : `loss is ${bad.loss} at step ${bad.step}`;
        throw await diverged(what, bad.lr);
      }
      await chart?.update();
    };
    const validate = async () => {
      const r = await paused(() => this.evaluate());
      if (!r) return;
      const h = this.history[this.history.length - 1];
      if (h?.step === this.step) h.val_loss = r.loss;
      evaluation = r;
      options.onEval?.({ ...r, step: this.step });
      await chart?.update(true);
    };
    const save = async () => {
      if (!out || savedStep === this.step) return;
      const bad = await this.checkFinite();
      if (bad) throw await diverged(bad.what, bad.lr);
      checkpoint = await paused(() => this.save(out));
      savedStep = this.step;
      options.onSave?.(checkpoint, this.step);
    };
    const finalEval = options.finalEval ?? c.evalEvery > 0;
    while (!this.done && !signal?.aborted) {
      await this.trainStep();
      const s = this.step;
      const first = options.logFirst && s === sessionStartStep + 1;
      if (s % c.logEvery === 0 || this.done || first) await report();
      if ((c.evalEvery > 0 && s % c.evalEvery === 0) || (this.done && finalEval)) {
        await report();
        await validate();
      }
      if (c.saveEvery > 0 && s % c.saveEvery === 0) await save();
    }
    await report();
    await save();
    await chart?.update(true);
    return {
      step: this.step,
      interrupted: !this.done,
      checkpoint,
      loss: lastLoss,
      last,
      eval: evaluation,
    };
  }

  /** Frees the model, the optimizer state and the slots. */
  release(): void {
    this.model.release();
    this.optimizer.release();
    this.#lossSlots.release();
    this.#normSlots.release();
    for (const f of this.#figures.values()) f.slots.release();
    this.#figures.clear();
  }
}

/** The checkpoint `latest` names in run folder `out`, or null. */
async function latestOf(out: string): Promise<string | null> {
  try {
    return await resolveCheckpoint(out);
  } catch {
    return null;
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

export type { LossEvalResult };
