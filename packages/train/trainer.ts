/**
 * The training loop. One optimizer step:
 *
 * ```
 * for k in 0..gradAccum-1:                      micro-batch k: B rows of T tokens (packed)
 *   loss_k = forward(batch_k, gradScale 1/K)    dlogits scaled so the gradients average
 *   backward(accumulate: k > 0)                 grads += d(loss_k / K)
 *   copy loss_k into a GPU slot                 (no readback)
 * norm, scale = clipGradNorm(grads, clip)       on the GPU
 * adamw(every param, lr(step), gradScale)       on the GPU, scale read by the kernel
 * copy norm into a GPU slot
 * ```
 * The CPU reads the slots back only every `logEvery` steps (one readMany of two small buffers):
 * each step's loss (mean over its B*T*K tokens) and gradient norm. The CPU records at most one
 * step ahead of the GPU (it waits for step s-1 to finish after recording step s), so memory
 * stays bounded and progress timings are honest.
 *
 * Exact resume: the model (F32), the AdamW moments and step count, the schedule (a function of the
 * step) and the loader position are saved; nothing else is random. A run of N steps and a run of
 * k steps + resume + N-k steps give the same weights bit for bit on the same adapter.
 * @module
 */
import type { Gpu, Tensor } from "@lvm/gpu";
import { TokenDataset, TokenLoader } from "@lvm/sentence";
import { Llama, type LlamaConfig, loadLlama, saveLlama } from "@lvm/transformer";
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
import { tokensPerStep, type TrainConfig, validateTrainConfig } from "./config.ts";
import { evaluateLoss, type LossEvalResult, maskedTargets } from "./evaluate.ts";
import { AdamW } from "./optimizer.ts";
import { lrAt } from "./schedule.ts";

/** One completed step, as read back. */
export interface StepRecord {
  /** Steps completed after this one (1 for the first). */
  step: number;
  /** Mean loss of the step's tokens. */
  loss: number;
  /** Learning rate used. */
  lr: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
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
  /** Tokens trained on so far (all sessions). */
  tokens: number;
  /** Training throughput since the previous report. */
  tokensPerSec: number;
  /** Seconds of this session so far. */
  elapsedSec: number;
  /** Estimated seconds to the last step at this session's rate. */
  etaSec: number;
  /** The steps of this report. */
  records: StepRecord[];
}

/** A validation report. */
export interface EvalEntry extends LossEvalResult {
  step: number;
}

/** Callbacks and stop signal of {@link Trainer.run}. */
export interface RunOptions {
  /** Run folder for checkpoints (null: never save). */
  out: string | null;
  /** Abort to stop after the current step; a checkpoint is saved (when `out` is set). */
  signal?: AbortSignal;
  onLog?(entry: LogEntry): void;
  onEval?(entry: EvalEntry): void;
  onSave?(path: string, step: number): void;
}

/** How {@link Trainer.run} ended. */
export interface RunResult {
  step: number;
  /** True when stopped by the signal before the last step. */
  interrupted: boolean;
  /** The last checkpoint written, if any. */
  checkpoint: string | null;
  /** Last reported mean loss (NaN if none). */
  loss: number;
}

/** The loss became NaN or infinite: training stopped (the last checkpoint is intact). */
export class DivergenceError extends Error {
  override name = "DivergenceError";
}

/** Settings that may change when resuming (the rest are fixed by the checkpoint). */
export type ResumeOverrides = Partial<
  Pick<
    TrainConfig,
    "steps" | "logEvery" | "evalEvery" | "evalBatches" | "saveEvery" | "keep" | "data"
  >
>;

/** A training run in progress: model, optimizer, data position, step. */
export class Trainer {
  /** Optimizer steps completed. */
  step = 0;
  /** Tokens trained on. */
  tokens = 0;
  /** Seconds of training in earlier sessions (from the checkpoint). */
  readonly priorSeconds: number;
  readonly history: LogRecord[];

  #lossSlots: Tensor; // (logEvery * gradAccum) losses of the pending steps' micro-batches
  #normSlots: Tensor; // (logEvery) gradient norms of the pending steps
  #pending: { step: number; lr: number }[] = [];
  #ready: StepRecord[] = []; // read back early (slots full) and not yet returned by flush()
  #inflight: Promise<unknown> | null = null;
  #sessionStart = performance.now();
  #mark = { time: performance.now(), tokens: 0, step: 0 };

  private constructor(
    readonly gpu: Gpu,
    readonly config: TrainConfig,
    readonly model: Llama,
    readonly optimizer: AdamW,
    readonly loader: TokenLoader,
    readonly dataset: TokenDataset,
    prior: { step: number; tokens: number; seconds: number; history: LogRecord[] },
  ) {
    this.step = prior.step;
    this.tokens = prior.tokens;
    this.priorSeconds = prior.seconds;
    this.history = prior.history;
    this.#lossSlots = gpu.zeros([config.logEvery * config.gradAccum]);
    this.#normSlots = gpu.zeros([config.logEvery]);
    this.#mark = { time: performance.now(), tokens: this.tokens, step: this.step };
  }

  /**
   * A new run: the model is initialised from `config.seed` (or loaded from `config.init`, whose
   * config.json must match `config.model`), fresh AdamW moments, the loader at the start.
   */
  static async create(gpu: Gpu, config: TrainConfig): Promise<Trainer> {
    validateTrainConfig(config);
    const dataset = await openChecked(config);
    let model: Llama;
    if (config.init) {
      model = await loadLlama(gpu, config.init);
      if (!sameConfig(model.config, config.model)) {
        model.release();
        throw new RangeError(
          `${config.init}: its config.json does not match TrainConfig.model ` +
            `(${JSON.stringify(model.config)} vs ${JSON.stringify(config.model)})`,
        );
      }
    } else {
      model = Llama.init(gpu, config.model, { seed: config.seed });
    }
    const loader = await TokenLoader.open(dataset, loaderOptions(config));
    const optimizer = new AdamW(gpu, model.params, config.optimizer);
    return new Trainer(gpu, config, model, optimizer, loader, dataset, {
      step: 0,
      tokens: 0,
      seconds: 0,
      history: [],
    });
  }

  /**
   * Continues a run from `path`: a checkpoint folder or a run folder (its latest checkpoint).
   * `overrides` may extend `steps` or change the cadence and the dataset's location (the loader
   * refuses a dataset whose content differs).
   */
  static async resume(gpu: Gpu, path: string, overrides: ResumeOverrides = {}): Promise<Trainer> {
    const dir = await resolveCheckpoint(path);
    const state = await readTrainerState(dir);
    const config: TrainConfig = { ...state.config, ...stripUndefined(overrides) };
    validateTrainConfig(config);
    if (config.steps < state.step) {
      throw new RangeError(
        `${dir}: the checkpoint is at step ${state.step}, past the requested ${config.steps} steps`,
      );
    }
    const dataset = await openChecked(config);
    const model = await loadLlama(gpu, dir);
    if (!sameConfig(model.config, config.model)) {
      model.release();
      throw new RangeError(`${dir}: config.json does not match the model in ${STATE_FILE}`);
    }
    const optimizer = new AdamW(gpu, model.params, config.optimizer);
    await optimizer.load(join(dir, OPTIMIZER_FILE));
    if (optimizer.step !== state.step) {
      throw new RangeError(
        `${dir}: ${OPTIMIZER_FILE} is at step ${optimizer.step}, ${STATE_FILE} at ${state.step}`,
      );
    }
    const loader = await TokenLoader.open(dataset, {
      ...loaderOptions(config),
      state: state.loader,
    });
    return new Trainer(gpu, config, model, optimizer, loader, dataset, {
      step: state.step,
      tokens: state.tokens,
      seconds: state.elapsed_s,
      history: state.log_history ?? [],
    });
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
    const { batch: B, seq: T, gradAccum: K } = this.config;
    const losses: Tensor[] = [];
    for (let k = 0; k < K; k++) {
      const b = await this.loader.next();
      if (!b) throw new RangeError(`${this.dataset.dir}: the training split ran out of tokens`);
      const { loss } = this.model.forward(
        { B, T, inputs: b.inputs, targets: maskedTargets(b.targets, b.mask) },
        { train: true, gradScale: 1 / K },
      );
      this.model.backward({ accumulate: k > 0 });
      losses.push(loss!);
    }
    return losses;
  }

  /** Records one optimizer step (see the module doc). Reads nothing back unless the slots are full. */
  async trainStep(): Promise<void> {
    const { gradAccum: K, logEvery } = this.config;
    if (this.#pending.length === logEvery) this.#ready.push(...(await this.#readPending()));
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
    this.tokens += tokensPerStep(this.config);
    this.#pending.push({ step: this.step, lr });
    // Keep at most one step queued ahead of the GPU.
    this.gpu.submit();
    const done = this.gpu.device.queue.onSubmittedWorkDone();
    if (this.#inflight) await this.#inflight;
    this.#inflight = done;
  }

  async #readPending(): Promise<StepRecord[]> {
    if (!this.#pending.length) return [];
    const K = this.config.gradAccum;
    const [l, n] = await this.gpu.readMany([this.#lossSlots, this.#normSlots]);
    const out = this.#pending.map((p, i) => {
      let s = 0;
      for (let k = 0; k < K; k++) s += l[i * K + k];
      return { step: p.step, lr: p.lr, loss: s / K, gradNorm: n[i] };
    });
    this.#pending = [];
    return out;
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
   * Validation: mean loss and perplexity over packed rows (B, T of the run) of the validation
   * split, at most `config.evalBatches` batches (0 = all). Null when the split is empty.
   */
  async evaluate(maxBatches = this.config.evalBatches): Promise<LossEvalResult | null> {
    const c = this.config;
    return await evaluateLoss(this.model, this.dataset, {
      seq: c.seq,
      batch: c.batch,
      split: "val",
      valFraction: c.valFraction,
      splitSeed: c.splitSeed,
      maxBatches: maxBatches || undefined,
    });
  }

  /** Seconds of training so far, all sessions. */
  elapsedSeconds(): number {
    return this.priorSeconds + (performance.now() - this.#sessionStart) / 1000;
  }

  /** The JSON of `trainer_state.json` for the current step. */
  state(): TrainerState {
    return {
      format: "lvm-trainer-state",
      version: 1,
      step: this.step,
      tokens: this.tokens,
      config: this.config,
      next_lr: this.lr,
      loader: this.loader.state(),
      rng: { seed: this.config.seed, splitSeed: this.config.splitSeed },
      elapsed_s: +this.elapsedSeconds().toFixed(3),
      log_history: this.history.slice(-HISTORY_LIMIT),
      saved_at: new Date().toISOString(),
    };
  }

  /**
   * Saves a checkpoint of the current step into run folder `out` (see checkpoint.ts): model,
   * optimizer, trainer state, then `latest`; keeps the newest `config.keep`. Returns its path.
   */
  async save(out: string): Promise<string> {
    await this.gpu.sync();
    return await commitCheckpoint(out, this.step, this.config.keep, async (dir) => {
      await saveLlama(this.model, dir);
      await this.optimizer.save(join(dir, OPTIMIZER_FILE));
      await Deno.writeTextFile(join(dir, STATE_FILE), JSON.stringify(this.state(), null, 2) + "\n");
    });
  }

  /**
   * Trains to `config.steps`, reporting every `logEvery` steps, validating every `evalEvery`,
   * saving every `saveEvery` and at the end. When `signal` aborts, stops after the current step and
   * saves. Throws {@link DivergenceError} when a reported loss is not finite.
   */
  async run(options: RunOptions): Promise<RunResult> {
    const c = this.config;
    const { out, signal } = options;
    let checkpoint: string | null = null;
    let lastLoss = NaN;
    let savedStep = -1;
    this.#mark = { time: performance.now(), tokens: this.tokens, step: this.step };
    const sessionStartStep = this.step;
    const wallStart = performance.now();
    let busyStart = wallStart; // moved forward by the time spent validating and saving
    // Time spent validating and saving is left out of throughput and ETA.
    const paused = async <T>(fn: () => Promise<T>): Promise<T> => {
      const t0 = performance.now();
      try {
        return await fn();
      } finally {
        const d = performance.now() - t0;
        this.#mark.time += d;
        busyStart += d;
      }
    };
    const report = async () => {
      const records = await this.flush();
      if (!records.length) return;
      const now = performance.now();
      const secs = (now - this.#mark.time) / 1000;
      const last = records[records.length - 1];
      const loss = records.reduce((s, r) => s + r.loss, 0) / records.length;
      const rate = (now - busyStart) / 1000 / Math.max(1, this.step - sessionStartStep);
      const entry: LogEntry = {
        step: this.step,
        steps: c.steps,
        loss,
        lr: last.lr,
        gradNorm: last.gradNorm,
        tokens: this.tokens,
        tokensPerSec: (this.tokens - this.#mark.tokens) / Math.max(secs, 1e-9),
        elapsedSec: (now - wallStart) / 1000,
        etaSec: rate * (c.steps - this.step),
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
      const bad = records.find((r) => !Number.isFinite(r.loss));
      if (bad) {
        throw new DivergenceError(
          `loss is ${bad.loss} at step ${bad.step} (lr ${bad.lr.toExponential(3)}): training ` +
            `diverged; lower --lr or raise --warmup and resume from the last checkpoint`,
        );
      }
    };
    const validate = async () => {
      const r = await paused(() => this.evaluate());
      if (!r) return;
      const h = this.history[this.history.length - 1];
      if (h?.step === this.step) h.val_loss = r.loss;
      options.onEval?.({ ...r, step: this.step });
    };
    const save = async () => {
      if (!out || savedStep === this.step) return;
      checkpoint = await paused(() => this.save(out));
      savedStep = this.step;
      options.onSave?.(checkpoint, this.step);
    };
    while (!this.done && !signal?.aborted) {
      await this.trainStep();
      const s = this.step;
      if (s % c.logEvery === 0 || this.done) await report();
      if (c.evalEvery > 0 && s % c.evalEvery === 0) {
        await report();
        await validate();
      }
      if (c.saveEvery > 0 && s % c.saveEvery === 0) await save();
    }
    await report();
    if (this.done && c.evalEvery > 0 && this.step % c.evalEvery !== 0) await validate();
    await save();
    return { step: this.step, interrupted: !this.done, checkpoint, loss: lastLoss };
  }

  /** Frees the model, the optimizer state and the slots. */
  release(): void {
    this.model.release();
    this.optimizer.release();
    this.#lossSlots.release();
    this.#normSlots.release();
  }
}

function loaderOptions(c: TrainConfig) {
  return {
    rowTokens: c.seq,
    batchRows: c.batch,
    packing: "packed" as const,
    split: "train" as const,
    valFraction: c.valFraction,
    splitSeed: c.splitSeed,
    seed: c.seed,
  };
}

async function openChecked(c: TrainConfig): Promise<TokenDataset> {
  const ds = await TokenDataset.open(c.data);
  if (ds.layout.vocabSize > c.model.vocab) {
    throw new RangeError(
      `${c.data}: the dataset's vocabulary (${ds.layout.vocabSize} ids) does not fit the model's ` +
        `${c.model.vocab}; train a model with vocab >= ${ds.layout.vocabSize}`,
    );
  }
  return ds;
}

/** Field-by-field equality of two model configs (key order aside). */
function sameConfig(a: LlamaConfig, b: LlamaConfig): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]) as Set<keyof LlamaConfig>;
  return [...keys].every((k) => a[k] === b[k]);
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
