/**
 * A LLaMA training run as `deno task train model` sets one up and drives it: the model folder a
 * path names, the architecture from a preset (sized to the dataset's vocabulary), a config.json or
 * a saved model, the checks before a new or resumed run, and the run itself with progress lines,
 * the metrics JSONL and the loss chart. A bad setting is a `UsageError` of `@lvm/cli` whose message
 * names the `deno task train` flag (exit 2 in a CLI).
 * @module
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { formatDuration, UsageError } from "@lvm/cli";
import { type SentenceLayout, TokenDataset } from "@lvm/sentence";
import { configFromHf, type LlamaConfig, makeConfig, paramCount, preset } from "@lvm/transformer";
import { readConfig } from "@lvm/transformer/fs";
import { listCheckpoints, readTrainerState, resolveCheckpoint, STATE_FILE } from "./checkpoint.ts";
import { tokensPerStep, type TrainConfig } from "./config.ts";
import { RunLock } from "./lock.ts";
import { MetricsLog } from "./metrics.ts";
import { stopOnSignals } from "./signals.ts";
import type { LogEntry, RunResult, Trainer } from "./trainer.ts";

const ANY_MODEL_FOLDER =
  "a Hugging Face model folder, a checkpoint-STEP folder or a training run folder";

/**
 * The model folder `path` (given as `--flag`) names: itself when it holds config.json (a Hugging
 * Face folder or a checkpoint-STEP folder), else a training run folder's latest checkpoint; a
 * usage error saying `expected` when it is neither.
 */
export async function modelFolder(
  flag: string,
  path: string,
  expected = ANY_MODEL_FOLDER,
): Promise<string> {
  if (existsSync(join(path, "config.json"))) return path;
  try {
    return await resolveCheckpoint(path);
  } catch {
    throw new UsageError(
      `--${flag} ${path}: holds no config.json and no checkpoint (expected ${expected})`,
    );
  }
}

/**
 * The run config of the training checkpoint `dir` (its trainer_state.json: split, row length...),
 * or null when `dir` is not a checkpoint (e.g. a Hugging Face folder).
 */
export async function checkpointConfig(dir: string): Promise<TrainConfig | null> {
  return existsSync(join(dir, STATE_FILE)) ? (await readTrainerState(dir)).config : null;
}

/**
 * A preset sized for the dataset's vocabulary: embedding and head rows for exactly its ids, image
 * codes = its codebook (ids above are reserved, never generated). LVM data (8192 codes + 100
 * reserved) leaves the preset as it is; a small tokenizer's data (e.g. 512 codes) gets a model
 * that does not spend most of its parameters and head FLOPs on ids that never occur.
 */
export function withDataVocab(model: LlamaConfig, layout: SentenceLayout): LlamaConfig {
  if (model.vocab === layout.vocabSize && model.imageCodes === layout.codebookSize) return model;
  return makeConfig({ ...model, vocab: layout.vocabSize, imageCodes: layout.codebookSize });
}

/** Where a new run's architecture comes from: at most one of `preset`, `config`, `init`. */
export interface ModelChoice {
  /** A preset name (default "tiny" when none of the three is given). */
  preset?: string;
  /** Keep the preset's own vocabulary even when the dataset's differs. */
  presetVocab?: boolean;
  /** A Hugging Face LLaMA config.json. */
  config?: string;
  /** A saved model (HF folder, checkpoint or run folder): its config.json and weights. */
  init?: string;
}

/** A resolved architecture and what it came from (see `TrainConfig.preset` / `init`). */
export interface ModelSource {
  model: LlamaConfig;
  preset: string | null;
  init: string | null;
}

/**
 * The architecture of a new run: `init`'s config.json, `config`'s, or a preset's (with the
 * vocabulary of the dataset in `data` unless `presetVocab`).
 */
export async function resolveModelConfig(choice: ModelChoice, data?: string): Promise<ModelSource> {
  const given = (["preset", "config", "init"] as const).filter((k) => choice[k] !== undefined);
  if (given.length > 1) {
    throw new UsageError(
      `give one of --preset, --config, --init; found ${given.map((g) => `--${g}`).join(" and ")}`,
    );
  }
  if (choice.init !== undefined) {
    const dir = await modelFolder(
      "init",
      choice.init,
      "a Hugging Face model folder or a training run folder",
    );
    return { model: await readConfig(dir), preset: null, init: dir };
  }
  if (choice.config !== undefined) {
    const path = choice.config;
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(await Deno.readTextFile(path));
    } catch (e) {
      throw new UsageError(`--config ${path}: cannot read a JSON config (${(e as Error).message})`);
    }
    return { model: configFromHf(json, path), preset: null, init: null };
  }
  const name = choice.preset ?? "tiny";
  let model: LlamaConfig;
  try {
    model = preset(name);
  } catch (e) {
    throw new UsageError(`--preset ${name}: ${(e as Error).message}`);
  }
  if (!choice.presetVocab && data !== undefined) {
    model = withDataVocab(model, (await TokenDataset.open(data)).layout);
  }
  return { model, preset: name, init: null };
}

/** Flags of `train model` a resumed run may change; the others are fixed by the checkpoint. */
export const RESUMABLE_FLAGS: readonly string[] = [
  "out",
  "data",
  "steps",
  "log-every",
  "eval-every",
  "eval-batches",
  "save-every",
  "keep",
  "json-log",
  "resume",
  "quiet",
  "lr",
  "min-lr",
  "warmup",
  "decay-steps",
];

/**
 * The checkpoint `--resume` continues in run folder `out` (`existing`, its latest): a usage error
 * when a flag of `given` is not one of {@link RESUMABLE_FLAGS}, when there is no checkpoint, or
 * when it is already past `steps`.
 */
export async function checkResume(
  out: string,
  existing: string | null,
  steps: number | undefined,
  given: readonly string[],
): Promise<string> {
  const fixed = given.filter((k) => !RESUMABLE_FLAGS.includes(k));
  if (fixed.length) {
    throw new UsageError(
      `--resume continues a run with its saved settings; ${
        fixed.map((f) => `--${f}`).join(", ")
      } cannot change (allowed: ${RESUMABLE_FLAGS.map((f) => `--${f}`).join(" ")})`,
    );
  }
  if (!existing) {
    throw new UsageError(
      `--resume: ${out} holds no checkpoint to continue; run without --resume to start`,
    );
  }
  const state = await readTrainerState(existing);
  if (steps !== undefined && steps < state.step) {
    throw new UsageError(`--steps ${steps}: the checkpoint is already at step ${state.step}`);
  }
  return existing;
}

/** A usage error when run folder `out` already holds checkpoints and `overwrite` is not set. */
export async function checkNewRun(
  out: string,
  existing: string | null,
  overwrite: boolean,
): Promise<void> {
  if (!existing || overwrite) return;
  const all = await listCheckpoints(out);
  throw new UsageError(
    `${out} already holds ${all.map((c) => c.path.split(/[\\/]/).pop()).join(", ")}; ` +
      `pass --resume to continue that run or --overwrite to start over`,
  );
}

/** The progress line of a log entry. */
export function formatLogEntry(e: LogEntry): string {
  return `[train] step ${e.step}/${e.steps} · loss ${e.loss.toFixed(4)} · lr ${
    e.lr.toExponential(2)
  } · grad norm ${e.gradNorm.toFixed(3)} · ${
    Math.round(e.tokensPerSec).toLocaleString("en-US")
  } tokens/s · elapsed ${formatDuration(e.elapsedSec)} · ETA ${formatDuration(e.etaSec)}`;
}

/** Options of {@link trainLlamaRun}. */
export interface LlamaRunOptions {
  /** The metrics JSONL (one object per progress, eval and save), if any. */
  jsonLog?: string;
  /** Progress lines (the run's description, steps, evaluations, saves). */
  say(line: string): void;
  /** Signal notices (always shown). */
  warn(line: string): void;
}

/** How {@link trainLlamaRun} ended. */
export interface LlamaRunEnd {
  result: RunResult;
  /** Tokens trained on, all sessions. */
  tokens: number;
  /** 0, or the signal's code (130 SIGINT, 143 SIGTERM) when interrupted. */
  exitCode: number;
}

/**
 * Holding the lock of run folder `out` (`command` names the holder), opens the trainer (`open`:
 * a new run or a resumed one) and trains to the end (or a signal: the step finishes and a
 * checkpoint is saved) with progress lines, the metrics log and the loss chart; releases the
 * trainer and the lock.
 */
export function trainLlamaRun(
  out: string,
  command: string,
  open: () => Promise<Trainer>,
  options: LlamaRunOptions,
): Promise<LlamaRunEnd> {
  return RunLock.hold(out, command, async (lock) => await train(await open(), out, options, lock));
}

async function train(
  trainer: Trainer,
  out: string,
  { jsonLog, say, warn }: LlamaRunOptions,
  lock: RunLock,
): Promise<LlamaRunEnd> {
  const c = trainer.config;
  const ds = trainer.dataset;
  say(
    `[train] model ${c.preset ?? (c.init ? `from ${c.init}` : "custom")} (${
      (paramCount(c.model) / 1e6).toFixed(2)
    }M params, vocab ${c.model.vocab} of which ${c.model.imageCodes} image codes) on ${trainer.gpu.describe()}`,
  );
  say(
    `[train] data ${ds.dir}: ${ds.sentences} sentences, ${ds.index.counts.tokens} tokens ` +
      `(val fraction ${c.valFraction}) · B${c.batch} x T${c.seq} x accum ${c.gradAccum} = ` +
      `${tokensPerStep(c)} tokens/step · steps ${trainer.step}->${c.steps} · lr ${
        c.schedule.lr.toExponential(2)
      } (${c.schedule.kind}, warmup ${c.schedule.warmup}, floor ${
        c.schedule.minLr.toExponential(2)
      })`,
  );
  const metrics = new MetricsLog(jsonLog ?? null);
  const json = (o: Record<string, unknown>) => metrics.write(o);
  const stop = stopOnSignals(warn, () => lock.releaseSync());
  let result;
  try {
    result = await trainer.run({
      out,
      signal: stop.signal,
      chart: join(out, "loss.png"),
      chartTitle: `model loss (${c.preset ?? "custom"})`,
      onLog(e) {
        say(formatLogEntry(e));
        json({
          type: "train",
          step: e.step,
          steps: e.steps,
          loss: e.loss,
          lr: e.lr,
          grad_norm: e.gradNorm,
          tokens: e.tokens,
          tokens_per_s: e.tokensPerSec,
          elapsed_s: e.elapsedSec,
          eta_s: e.etaSec,
          losses: e.records.map((r) => r.loss),
        });
      },
      onEval(e) {
        say(
          `[train] eval step ${e.step} · val loss ${e.loss.toFixed(4)} · val perplexity ${
            e.perplexity.toFixed(2)
          } (${e.tokens} tokens)`,
        );
        json({
          type: "eval",
          step: e.step,
          val_loss: e.loss,
          val_perplexity: e.perplexity,
          tokens: e.tokens,
        });
      },
      onSave(path, step) {
        say(`[train] saved ${path}`);
        json({ type: "save", step, path });
      },
    });
  } finally {
    stop.dispose();
    trainer.release();
  }
  const exitCode = result.interrupted ? stop.exitCode() || 130 : 0;
  return { result, tokens: trainer.tokens, exitCode };
}
