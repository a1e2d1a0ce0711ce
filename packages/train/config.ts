/**
 * The configuration of a training run: model, data, batch shape, optimizer, schedule and cadence.
 * JSON-serializable; saved in every checkpoint's `trainer_state.json` so a resumed run uses exactly
 * the same settings.
 *
 * Token accounting per optimizer step: `gradAccum` micro-batches of `batch` rows of `seq` tokens,
 * i.e. batch * seq * gradAccum tokens, every one of them a target (packed rows, loss on every token;
 * official 7B: 32 x 4096 x 4 = 524,288 tokens per step).
 * @module
 */
import { type LlamaConfig, validateConfig } from "@lvm/transformer";
import { type AdamWConfig, makeAdamWConfig } from "./optimizer.ts";
import { type LrSchedule, makeSchedule, type ScheduleKind, validateSchedule } from "./schedule.ts";

/** Everything that defines a training run. */
export interface TrainConfig {
  /** Token-shard dataset folder (as written by `train dataset`). */
  data: string;
  /** The model's architecture. */
  model: LlamaConfig;
  /** Preset the architecture came from (records only), or null. */
  preset: string | null;
  /** Hugging Face model folder whose weights the run started from, or null for a fresh init. */
  init: string | null;
  /** Seed of the weight init and of the data order. */
  seed: number;
  /** B: rows per micro-batch. */
  batch: number;
  /** T: tokens per row (positions restart at 0 in every row). */
  seq: number;
  /** Micro-batches whose gradients are averaged into one optimizer step. */
  gradAccum: number;
  /** Optimizer steps of the run. */
  steps: number;
  schedule: LrSchedule;
  optimizer: AdamWConfig;
  /** Fraction of sentences held out as the validation split (stable hash split). */
  valFraction: number;
  /** Seed of the train/validation split. */
  splitSeed: number;
  /** Steps between progress lines (the only loss readback). */
  logEvery: number;
  /** Steps between validation passes (0 = never). */
  evalEvery: number;
  /** Batches per validation pass (0 = the whole split). */
  evalBatches: number;
  /** Steps between checkpoints (0 = only at the end and on interrupt). */
  saveEvery: number;
  /** Checkpoints kept in the run folder (the oldest are deleted). */
  keep: number;
}

/** Fields a caller gives to {@link makeTrainConfig}; the rest get defaults. */
export interface TrainConfigInput {
  data: string;
  model: LlamaConfig;
  preset?: string | null;
  init?: string | null;
  seed?: number;
  batch?: number;
  seq?: number;
  gradAccum?: number;
  steps: number;
  /** Peak learning rate (default 1.5e-4, the official 7B value). */
  lr?: number;
  /** Floor of the decay (default lr / 5, the official 1.5e-4 -> 3e-5). */
  minLr?: number;
  /** Warmup steps (default min(8000, steps / 10), the official 8000 on long runs). */
  warmup?: number;
  /** Schedule shape after warmup (default "cosine", the official). */
  scheduleKind?: ScheduleKind;
  /** Where the decay reaches minLr (default: steps). */
  decaySteps?: number;
  optimizer?: Partial<AdamWConfig>;
  valFraction?: number;
  splitSeed?: number;
  logEvery?: number;
  evalEvery?: number;
  evalBatches?: number;
  saveEvery?: number;
  keep?: number;
}

/**
 * A checked config with defaults: batch 1, seq min(4096, maxPositions), gradAccum 1, seed 0, the
 * official optimizer and schedule, valFraction 0.01 (the loader's default), logEvery 10, evalEvery
 * 500, evalBatches 8, saveEvery 500, keep 3.
 */
export function makeTrainConfig(input: TrainConfigInput): TrainConfig {
  validateConfig(input.model);
  const steps = input.steps;
  const lr = input.lr ?? 1.5e-4;
  const warmup = input.warmup ??
    Math.min(8000, Math.floor((Number.isInteger(steps) ? steps : 0) / 10));
  const kind = input.scheduleKind ?? "cosine";
  const config: TrainConfig = {
    data: input.data,
    model: { ...input.model },
    preset: input.preset ?? null,
    init: input.init ?? null,
    seed: input.seed ?? 0,
    batch: input.batch ?? 1,
    seq: input.seq ?? Math.min(4096, input.model.maxPositions),
    gradAccum: input.gradAccum ?? 1,
    steps,
    schedule: makeSchedule({
      kind,
      lr,
      minLr: input.minLr ?? lr / 5,
      warmup,
      decaySteps: input.decaySteps ?? Math.max(steps, warmup),
    }),
    optimizer: makeAdamWConfig(input.optimizer),
    valFraction: input.valFraction ?? 0.01,
    splitSeed: input.splitSeed ?? 0,
    logEvery: input.logEvery ?? 10,
    evalEvery: input.evalEvery ?? 500,
    evalBatches: input.evalBatches ?? 8,
    saveEvery: input.saveEvery ?? 500,
    keep: input.keep ?? 3,
  };
  validateTrainConfig(config);
  return config;
}

/** Throws a RangeError naming the first invalid field of `c`. */
export function validateTrainConfig(c: TrainConfig): void {
  if (typeof c.data !== "string" || !c.data) {
    throw new RangeError(`TrainConfig.data must name a dataset folder, found ${c.data}`);
  }
  validateConfig(c.model);
  const counts: [keyof TrainConfig, number][] = [
    ["batch", 1],
    ["seq", 1],
    ["gradAccum", 1],
    ["steps", 1],
    ["logEvery", 1],
    ["evalEvery", 0],
    ["evalBatches", 0],
    ["saveEvery", 0],
    ["keep", 1],
  ];
  for (const [k, min] of counts) {
    const v = c[k];
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
      throw new RangeError(`TrainConfig.${k} must be an integer >= ${min}, found ${v}`);
    }
  }
  if (!Number.isInteger(c.seed) || !Number.isInteger(c.splitSeed)) {
    throw new RangeError(
      `TrainConfig seeds must be integers, found seed ${c.seed}, splitSeed ${c.splitSeed}`,
    );
  }
  if (c.seq > c.model.maxPositions) {
    throw new RangeError(
      `TrainConfig.seq (${c.seq}) exceeds the model's ${c.model.maxPositions} positions`,
    );
  }
  if (!(c.valFraction >= 0 && c.valFraction < 1)) {
    throw new RangeError(`TrainConfig.valFraction must be in [0, 1), found ${c.valFraction}`);
  }
  validateSchedule(c.schedule);
  makeAdamWConfig(c.optimizer);
}

/** Tokens consumed (and trained on) by one optimizer step. */
export function tokensPerStep(c: TrainConfig): number {
  return c.batch * c.seq * c.gradAccum;
}
