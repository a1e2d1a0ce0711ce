/**
 * A VQGAN tokenizer training run as `deno task train tokenizer` sets one up and drives it: the
 * checkpoint to resume (the shared loop's or the previous trainer's) and its run config, the
 * architecture from a preset, a config.json or a tokenizer to fine-tune, the training and held-out
 * images, the trainer, and the run itself with progress lines, the metrics JSONL, the loss chart
 * and, at the end, the tokenizer written beside its checkpoints. A bad setting is a `UsageError`
 * of `@lvm/cli` whose message names the `deno task train tokenizer` flag (exit 2 in a CLI).
 * @module
 */
import { join } from "node:path";
import { UsageError } from "@lvm/cli";
import type { Gpu } from "@lvm/gpu";
import {
  type AdversarialOptions,
  evalImages,
  holdOut,
  HoldOutError,
  type ImageSource,
  parseConfig,
  presetConfig,
  type VqganConfig,
} from "@lvm/tokenizer";
import {
  loadSources,
  readTokenizerDir,
  saveTokenizer,
  type TokenizerFiles,
} from "@lvm/tokenizer/fs";
import { latestCheckpoint, readTrainerState, type TrainerState } from "./checkpoint.ts";
import { RunLock } from "./lock.ts";
import type { EvalOf } from "./trainable.ts";
import { MetricsLog } from "./metrics.ts";
import { stopOnSignals } from "./signals.ts";
import { type RunResult, Trainer } from "./trainer.ts";
import {
  legacyRunConfig,
  type LegacyVqganCheckpoint,
  readLegacyVqganCheckpoint,
  resumeLegacyVqgan,
  type VqganData,
  type VqganRunConfig,
  vqganSchedule,
  VqganTrainable,
} from "./vqgan.ts";

/** A tokenizer checkpoint to continue: the shared loop's (`latest` + `state`) or a legacy one. */
export interface VqganResumePoint {
  latest: string | null;
  state: TrainerState<VqganRunConfig> | null;
  legacy: LegacyVqganCheckpoint | null;
  /** The checkpoint's step. */
  step: number;
}

/** The checkpoint to resume in `ckptDir` (a run's `checkpoints/` folder), or null if none. */
export async function findVqganCheckpoint(ckptDir: string): Promise<VqganResumePoint | null> {
  const latest = await latestCheckpoint(ckptDir);
  // A checkpoint of the trainer before the shared loop (latest.json + ckpt-STEP/) resumes too.
  const legacy = !latest ? await readLegacyVqganCheckpoint(ckptDir) : null;
  if (!latest && !legacy) return null;
  const state = latest ? await readTrainerState<VqganRunConfig>(latest, "vqgan") : null;
  return { latest, state, legacy, step: state?.step ?? legacy!.step };
}

/** What a resumed run may change: the last step, the cadence, the peak lr and the warmup. */
export interface VqganResumeOverrides {
  steps: number;
  saveEvery: number;
  evalEvery: number;
  logEvery: number;
  keep: number;
  lr?: number;
  warmup?: number;
}

/**
 * The run config of a resumed run: the saved one with the new steps and cadence, its schedule's
 * cosine stretched to the new last step (as it always has been), with a new peak (floor lr / 10)
 * and warmup when given.
 */
export function resumedVqganRun(p: VqganResumePoint, o: VqganResumeOverrides): VqganRunConfig {
  const { lr: newLr, warmup: newWarmup, ...cadence } = o;
  const lr = newLr ?? p.state?.config.schedule.lr ?? p.legacy!.options.lr;
  const warmup = newWarmup ?? p.state?.config.schedule.warmup ?? p.legacy!.options.warmup;
  return p.state
    ? { ...p.state.config, ...cadence, schedule: vqganSchedule(lr, warmup, o.steps) }
    : legacyRunConfig(p.legacy!, { ...cadence, lr, warmup });
}

/** Where a new tokenizer's architecture comes from: at most one of the three. */
export interface VqganChoice {
  /** A preset name (default "tiny"). */
  preset?: string;
  /** An open-muse config.json. */
  config?: string;
  /** A tokenizer folder to fine-tune: its config and weights. */
  init?: string;
}

/** The architecture of a new run and, with `init`, the tokenizer's files (its weights). */
export async function resolveVqganConfig(
  choice: VqganChoice,
): Promise<{ config: VqganConfig; init: TokenizerFiles | null }> {
  if (choice.preset && choice.config) throw new UsageError("give --preset or --config, not both");
  if (choice.init && (choice.preset || choice.config)) {
    throw new UsageError(
      `--init ${choice.init} takes the architecture from its config.json: give no --${
        choice.preset ? "preset" : "config"
      }`,
    );
  }
  if (choice.init) {
    const init = await readTokenizerDir(choice.init);
    return { config: init.config, init };
  }
  if (choice.config) {
    const json = JSON.parse(await Deno.readTextFile(choice.config));
    return { config: parseConfig(json, choice.config), init: null };
  }
  try {
    return { config: presetConfig(choice.preset ?? "tiny"), init: null };
  } catch (e) {
    throw new UsageError(`--preset: ${(e as Error).message}`);
  }
}

/** Where the training and held-out images come from, and how they are read. */
export interface VqganImageOptions {
  images: string[];
  /** Held-out sources; when absent, every `holdout`-th source of `images` (0: none). */
  evalImages?: string[];
  holdout: number;
  maxSide: number;
  maxFrames: number;
}

/** What identifies the training data (a resumed run must see the same sources). */
export function sourceKey(sources: ImageSource[]): string[] {
  return sources.map((s) => `${s.name}:${s.frames.length}`);
}

/**
 * The training and held-out sources (a usage error when `holdout` leaves nothing to train on);
 * `log` is told how many of each and how long they took to load.
 */
export async function loadVqganImages(
  o: VqganImageOptions,
  log: (line: string) => void = () => {},
): Promise<{ train: ImageSource[]; held: ImageSource[] }> {
  const t0 = performance.now();
  const { maxSide, maxFrames, holdout } = o;
  const all = await loadSources(o.images, { maxSide, maxFrames });
  let train: ImageSource[], held: ImageSource[];
  if (o.evalImages?.length) {
    train = all;
    held = await loadSources(o.evalImages, { maxSide, maxFrames });
  } else {
    try {
      ({ train, held } = holdOut(all, holdout));
    } catch (e) {
      if (!(e instanceof HoldOutError)) throw e;
      throw new UsageError(
        `--holdout ${holdout}: ${e.message}; use --holdout 0 (no evaluation), a K of 2 or more, or --eval-images`,
      );
    }
  }
  const frames = (ss: ImageSource[]) => ss.reduce((a, s) => a + s.frames.length, 0);
  log(
    `data: ${train.length} training sources (${frames(train)} images), ${held.length} held out (${
      frames(held)
    } images), loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
  return { train, held };
}

/**
 * A usage error when the run being resumed (`resume`) was trained on other sources than `train`;
 * then records `train`'s key in `run.sources`.
 */
export function checkSources(
  run: VqganRunConfig,
  resume: VqganResumePoint | null,
  train: ImageSource[],
): void {
  const saved = resume?.state ? run.sources : resume?.legacy?.sources;
  if (saved && JSON.stringify(saved) !== JSON.stringify(sourceKey(train))) {
    throw new UsageError(
      "--resume: the training sources differ from the checkpoint's (give the same --images, --eval-images and --holdout)",
    );
  }
  run.sources = sourceKey(train);
}

/** What {@link trainVqganRun} trains: the run, its images, and where its weights come from. */
export interface VqganRunSetup {
  run: VqganRunConfig;
  /** Training and held-out sources ({@link loadVqganImages}). */
  train: ImageSource[];
  held: ImageSource[];
  /** The checkpoint continued ({@link findVqganCheckpoint}), if any. */
  resume: VqganResumePoint | null;
  /** The tokenizer fine-tuned ({@link resolveVqganConfig}) when not resuming, if any. */
  init: TokenizerFiles | null;
}

/**
 * The trainer of `run`: continuing `resume` (the previous trainer's format too), else a new one
 * from `init`'s weights or random ones; `log` is told which checkpoint it continues.
 */
async function openVqganTrainer(
  gpu: Gpu,
  { run, train, held, resume, init }: VqganRunSetup,
  log: (line: string) => void,
): Promise<Trainer<VqganTrainable, VqganRunConfig>> {
  const data: VqganData = { train, eval: evalImages(held) };
  if (resume?.legacy) {
    const trainer = await resumeLegacyVqgan(gpu, resume.legacy, run, data);
    log(
      `resumed from ${resume.legacy.path} (written by the previous tokenizer trainer; new ` +
        `checkpoints go beside it as checkpoint-STEP/) at step ${trainer.step}`,
    );
    return trainer;
  }
  const state = resume?.state;
  const model = await VqganTrainable.open(gpu, run, data, {
    checkpoint: resume?.latest ?? undefined,
    state: state ? { rng: state.rng as number, usage: state.usage as number[] } : undefined,
    weights: init?.weights,
  });
  if (!state) return new Trainer(gpu, model, run);
  const trainer = await Trainer.fromCheckpoint(gpu, model, run, resume!.latest!, state);
  log(`resumed from ${resume!.latest} at step ${trainer.step}`);
  return trainer;
}

/** `h`h`mm`m, `m`m`ss`s or `s`s; "?" when not finite. */
function fmtTime(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h
    ? `${h}h${String(m).padStart(2, "0")}m`
    : m
    ? `${m}m${String(sec).padStart(2, "0")}s`
    : `${sec}s`;
}

/** The progress line of a step (the format the tokenizer trainer has always printed). */
function progressLine(
  e: { step: number; steps: number; stepsPerSec: number; etaSec: number },
  r: { loss: number; lr: number; metrics?: Record<string, number> },
  K: number,
  adversarial: AdversarialOptions | null,
): string {
  const m = r.metrics ?? {};
  return `step ${e.step}/${e.steps}  loss ${r.loss.toFixed(5)}  rec ${m.rec.toFixed(5)}  vq ${
    m.vq.toFixed(5)
  }  psnr ${m.psnr.toFixed(2)} dB  codes ${m.codes_used}/${K}${
    m.restarted ? ` (${m.restarted} restarted)` : ""
  }${
    adversarial && e.step >= adversarial.start
      ? `  d ${m.d_loss.toFixed(4)} g_adv ${m.g_adv.toFixed(4)}`
      : ""
  }  lr ${r.lr.toExponential(2)}  ${e.stepsPerSec.toFixed(2)} steps/s  eta ${fmtTime(e.etaSec)}`;
}

/** Options of {@link trainVqganRun}. */
export interface VqganRunOptions {
  /** The metrics JSONL (one object per progress, eval and save), if any. */
  jsonLog?: string;
  /** Progress lines. */
  log(line: string): void;
  /** Signal notices (always shown). */
  warn(line: string): void;
}

/** How {@link trainVqganRun} ended: the exit code, and the JSON summary of a finished run. */
export interface VqganRunEnd {
  result: RunResult<EvalOf<VqganTrainable>>;
  /** 0, or the signal's code (130 SIGINT, 143 SIGTERM) when interrupted. */
  exitCode: number;
  /** The `--json` summary (null when interrupted). */
  summary: Record<string, unknown> | null;
}

/**
 * Holding the lock of output folder `out`, opens the trainer of `setup` and trains to the end (or
 * a signal: the step finishes and a checkpoint is saved in `out/checkpoints`), then writes the
 * tokenizer to `out` and reports the held-out PSNR; releases the trainer and the lock.
 */
export function trainVqganRun(
  gpu: Gpu,
  out: string,
  setup: VqganRunSetup,
  options: VqganRunOptions,
): Promise<VqganRunEnd> {
  return RunLock.hold(out, "train tokenizer", async (lock) => {
    const trainer = await openVqganTrainer(gpu, setup, options.log);
    setup.init = null; // the host copy is no longer needed
    return await train(trainer, out, setup.held.length, options, lock);
  });
}

async function train(
  trainer: Trainer<VqganTrainable, VqganRunConfig>,
  out: string,
  heldSources: number,
  { jsonLog, log, warn }: VqganRunOptions,
  lock: RunLock,
): Promise<VqganRunEnd> {
  const { gpu, model } = trainer;
  const config = model.model.config, run = trainer.config;
  const K = config.numEmbeddings;
  const grid = model.model.geometry.grid;
  log(
    `model: ${config.resolution}x${config.resolution} -> ${grid}x${grid} tokens, ${K} codes; ${gpu.describe()}`,
  );
  const metrics = new MetricsLog(jsonLog ?? null);
  const stop = stopOnSignals(warn, () => lock.releaseSync());
  const tStart = performance.now();
  let result;
  try {
    result = await trainer.run({
      out: join(out, "checkpoints"),
      signal: stop.signal,
      logFirst: true,
      finalEval: true,
      chart: join(out, "loss.png"),
      chartTitle: `tokenizer loss (${config.resolution}px, ${K} codes)`,
      chartEvalName: "held-out MSE",
      onLog(e) {
        const r = e.records[e.records.length - 1];
        log(progressLine(e, r, K, run.adversarial));
        metrics.write({
          type: "train",
          step: e.step,
          steps: e.steps,
          loss: r.loss,
          lr: r.lr,
          grad_norm: r.gradNorm,
          images: e.tokens,
          images_per_s: e.tokensPerSec,
          elapsed_s: e.elapsedSec,
          eta_s: e.etaSec,
          ...r.metrics,
        });
      },
      onEval(e) {
        if (e.step !== run.steps) {
          log(`eval step ${e.step}: held-out PSNR ${e.psnr.toFixed(2)} dB (${e.images} images)`);
        }
        metrics.write({
          type: "eval",
          step: e.step,
          val_loss: e.loss,
          psnr: e.psnr,
          images: e.images,
        });
      },
      onSave(path, step) {
        metrics.write({ type: "save", step, path });
      },
    });
  } catch (e) {
    stop.dispose();
    trainer.release();
    throw e;
  }
  stop.dispose();
  if (result.interrupted) {
    trainer.release();
    return { result, exitCode: stop.exitCode() || 130, summary: null };
  }
  try {
    const e = result.eval;
    const final = await model.model.readWeights();
    const meta: Record<string, string> = { steps: String(trainer.step) };
    if (e) meta.eval_psnr = e.psnr.toFixed(3);
    await saveTokenizer(out, config, final, meta);
    const secs = (performance.now() - tStart) / 1000;
    if (e) {
      log(
        `held-out PSNR ${
          e.psnr.toFixed(2)
        } dB (mean over ${e.images} images from ${heldSources} sources never used in training; MSE ${
          e.mse.toExponential(3)
        })`,
      );
    } else log("no held-out images (--holdout 0 and no --eval-images): no PSNR to report");
    log(
      `wrote ${join(out, "config.json")} and ${
        join(out, "model.safetensors")
      } (${trainer.step} steps, ${fmtTime(secs)})`,
    );
    const last = result.last;
    const summary = {
      out,
      steps: trainer.step,
      loss: last?.loss ?? null,
      train_psnr: last?.metrics?.psnr ?? null,
      eval_psnr: e?.psnr ?? null,
      eval_images: e?.images ?? 0,
      codes_used: last?.metrics?.codes_used ?? null,
      seconds: +secs.toFixed(1),
    };
    return { result, exitCode: 0, summary };
  } finally {
    trainer.release();
  }
}
