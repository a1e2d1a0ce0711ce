/**
 * `deno task train model`: trains an LVM transformer on a token-shard dataset with @lvm/train
 * (AdamW, warmup + cosine, gradient accumulation, global-norm clipping, all on the GPU), writing
 * checkpoints in Hugging Face layout and a loss chart; `--resume` continues a run exactly; Ctrl-C
 * or SIGTERM saves and exits; one run per --out at a time.
 * @module
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import {
  configFromHf,
  type LlamaConfig,
  makeConfig,
  paramCount,
  preset,
  PRESETS,
} from "@lvm/transformer";
import { readConfig } from "@lvm/transformer/fs";
import {
  clearRun,
  latestCheckpoint,
  listCheckpoints,
  type LogEntry,
  makeTrainConfig,
  MetricsLog,
  readTrainerState,
  resolveCheckpoint,
  type ResumeOverrides,
  RunLock,
  stopOnSignals,
  tokensPerStep,
  type TrainConfig,
  Trainer,
} from "@lvm/train";
import { type SentenceLayout, TokenDataset } from "@lvm/sentence";
import {
  type Command,
  enumFlag,
  floatFlag,
  formatDuration,
  intFlag,
  parseFlags,
  UsageError,
} from "@lvm/cli";

const USAGE = `usage: deno task train model --data DIR --out DIR --steps N [options]
       deno task train model --out DIR --resume [--steps N] [--lr X]

Trains a LLaMA decoder on visual sentences (packed rows of --seq tokens, loss on every token,
positions restarting at 0 in every row) with the official recipe: AdamW (b1 0.9, b2 0.95, eps 1e-8,
weight decay 0.1), global-norm clip 1.0, linear warmup then cosine decay to --min-lr, gradient
accumulation. Checkpoints go to OUT/checkpoint-STEP/ (config.json + model.safetensors, loadable by
\`deno task infer\` and transformers, plus optimizer.safetensors and trainer_state.json) and
OUT/latest names the newest; OUT/loss.png charts the training and validation loss. Ctrl-C
(or SIGTERM) finishes the current step, saves a checkpoint and exits (130; 143 after SIGTERM).
A checkpoint is never written from a diverged state: before each save the losses, gradient norms
and weights must be finite, else the run stops (exit 1) naming the last good checkpoint. One run
at a time per --out: OUT/train.lock names the process holding it (a dead one's lock is taken over);
a second run is refused (exit 1).

model (one of; default --preset tiny):
  --preset NAME         ${Object.keys(PRESETS).join(", ")}; the vocabulary is the dataset's
                        (its codes + reserved ids: 8292 for LVM data, as the presets)
  --preset-vocab        keep the preset's own vocabulary (8292) even when the dataset's differs
  --config FILE         a Hugging Face LLaMA config.json
  --init DIR            start from a saved model (HF folder, checkpoint or run folder): its
                        config.json and weights

data and batch:
  --data DIR            token-shard dataset (\`deno task train dataset\`)
  --batch B             rows per micro-batch (default 1)
  --seq T               tokens per row (default min(4096, the model's positions))
  --grad-accum K        micro-batches per optimizer step (default 1); tokens/step = B*T*K
  --val-fraction F      sentences held out for validation (default 0.01)
  --split-seed S        seed of the train/validation split (default 0)

optimization:
  --steps N             optimizer steps (required for a new run)
  --lr X                peak learning rate (default 1.5e-4, official)
  --min-lr X            floor of the decay (default lr/5: official 1.5e-4 -> 3e-5)
  --warmup N            linear warmup steps from 0 (default min(8000, steps/10))
  --schedule KIND       cosine (default) | linear | constant
  --weight-decay X      default 0.1          --decay all|matrices   which params decay (all)
  --beta1 X, --beta2 X  default 0.9, 0.95    --eps X                default 1e-8
  --clip X              global-norm clip (default 1.0; 0 = off)
  --seed N              weight init and data order (default 0)

cadence and files:
  --out DIR             run folder (required)
  --log-every N         steps per progress line (default 10); the loss is read back only then
  --eval-every N        steps between validation passes (default 500; 0 = never)
  --eval-batches N      batches per validation pass (default 8; 0 = the whole split)
  --save-every N        steps between checkpoints (default 500; 0 = only at the end)
  --keep N              checkpoints kept (default 3)
  --json-log FILE       also append one JSON object per progress/eval/save line to FILE
  --resume              continue the run in --out from its latest checkpoint (only --steps,
                        the cadence flags, --data, --json-log and the learning rate may change:
                        --lr X sets a new peak (the floor keeps its ratio unless --min-lr),
                        --warmup N a new warmup; e.g. after a divergence)
  --overwrite           delete --out's checkpoints and start over
  --quiet               no progress lines`;

const OPTIONS = {
  data: { type: "string" },
  out: { type: "string" },
  preset: { type: "string" },
  "preset-vocab": { type: "boolean" },
  config: { type: "string" },
  init: { type: "string" },
  batch: { type: "string" },
  seq: { type: "string" },
  "grad-accum": { type: "string" },
  "val-fraction": { type: "string" },
  "split-seed": { type: "string" },
  steps: { type: "string" },
  lr: { type: "string" },
  "min-lr": { type: "string" },
  warmup: { type: "string" },
  schedule: { type: "string" },
  "weight-decay": { type: "string" },
  decay: { type: "string" },
  beta1: { type: "string" },
  beta2: { type: "string" },
  eps: { type: "string" },
  clip: { type: "string" },
  seed: { type: "string" },
  "log-every": { type: "string" },
  "eval-every": { type: "string" },
  "eval-batches": { type: "string" },
  "save-every": { type: "string" },
  keep: { type: "string" },
  "json-log": { type: "string" },
  resume: { type: "boolean" },
  overwrite: { type: "boolean" },
  quiet: { type: "boolean" },
} as const;

/** Flags a resumed run may change; every other training flag is fixed by the checkpoint. */
const RESUMABLE = new Set([
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
]);

/** A number flag >= 0 (learning rates, betas, decay, clip), or undefined when not given. */
function nonNegative(flag: string, value: string | undefined): number | undefined {
  return floatFlag(flag, value, undefined, { min: 0 });
}

/** The progress line of a log entry. */
export function formatLog(e: LogEntry): string {
  return `[train] step ${e.step}/${e.steps} · loss ${e.loss.toFixed(4)} · lr ${
    e.lr.toExponential(2)
  } · grad norm ${e.gradNorm.toFixed(3)} · ${
    Math.round(e.tokensPerSec).toLocaleString("en-US")
  } tokens/s · elapsed ${formatDuration(e.elapsedSec)} · ETA ${formatDuration(e.etaSec)}`;
}

/** A model folder: an HF folder (config.json), else a checkpoint or run folder's latest. */
async function modelDir(dir: string): Promise<string> {
  if (existsSync(join(dir, "config.json"))) return dir;
  try {
    return await resolveCheckpoint(dir);
  } catch {
    throw new UsageError(
      `--init ${dir}: holds no config.json and no checkpoint (expected a Hugging Face model folder ` +
        `or a training run folder)`,
    );
  }
}

async function architecture(
  v: Record<string, string | boolean | undefined>,
  data?: string,
): Promise<{ model: LlamaConfig; preset: string | null; init: string | null }> {
  const given = ["preset", "config", "init"].filter((k) => v[k] !== undefined);
  if (given.length > 1) {
    throw new UsageError(
      `give one of --preset, --config, --init; found ${given.map((g) => `--${g}`).join(" and ")}`,
    );
  }
  if (v.init !== undefined) {
    const dir = await modelDir(v.init as string);
    return { model: await readConfig(dir), preset: null, init: dir };
  }
  if (v.config !== undefined) {
    const path = v.config as string;
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(await Deno.readTextFile(path));
    } catch (e) {
      throw new UsageError(`--config ${path}: cannot read a JSON config (${(e as Error).message})`);
    }
    return { model: configFromHf(json, path), preset: null, init: null };
  }
  const name = (v.preset as string | undefined) ?? "tiny";
  let model: LlamaConfig;
  try {
    model = preset(name);
  } catch (e) {
    throw new UsageError(`--preset ${name}: ${(e as Error).message}`);
  }
  if (!v["preset-vocab"] && data !== undefined) {
    model = withDataVocab(model, await dataLayout(data));
  }
  return { model, preset: name, init: null };
}

/** The layout of the dataset in `dir` (its index only; the trainer validates the rest). */
async function dataLayout(dir: string): Promise<SentenceLayout> {
  const ds = await TokenDataset.open(dir);
  return ds.layout;
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

/** The `model` subcommand. */
export const model: Command = {
  summary: "train the transformer on a token dataset (AdamW, warmup+cosine, resumable)",
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const parsed = parseFlags({ args, options: OPTIONS, allowPositionals: false });
    const v = parsed.values as Record<string, string | boolean | undefined>;
    const str = (k: string) => v[k] as string | undefined;
    const out = str("out");
    if (!out) throw new UsageError("--out DIR is required (the run folder)");
    const int = (flag: string, min: number) =>
      str(flag) === undefined ? undefined : intFlag(flag, str(flag), 0, { min });
    const cadence: ResumeOverrides = {
      steps: int("steps", 1),
      logEvery: int("log-every", 1),
      evalEvery: int("eval-every", 0),
      evalBatches: int("eval-batches", 0),
      saveEvery: int("save-every", 0),
      keep: int("keep", 1),
    };
    const existing = await latestCheckpoint(out);
    const gpu = await getGpu();
    let trainer: Trainer;
    let lock: RunLock | null = null;
    const quiet = !!v.quiet;
    const say = (s: string) => quiet || console.error(s);

    if (v.resume) {
      const fixed = Object.keys(v).filter((k) => v[k] !== undefined && !RESUMABLE.has(k));
      if (fixed.length) {
        throw new UsageError(
          `--resume continues a run with its saved settings; ${
            fixed.map((f) => `--${f}`).join(", ")
          } cannot change (allowed: ${[...RESUMABLE].map((f) => `--${f}`).join(" ")})`,
        );
      }
      if (!existing) {
        throw new UsageError(
          `--resume: ${out} holds no checkpoint to continue; run without --resume to start`,
        );
      }
      const state = await readTrainerState(existing);
      if (cadence.steps !== undefined && cadence.steps < state.step) {
        throw new UsageError(
          `--steps ${cadence.steps}: the checkpoint is already at step ${state.step}`,
        );
      }
      lock = await RunLock.acquire(out, "train model --resume");
      try {
        trainer = await Trainer.resume(gpu, existing, {
          ...cadence,
          data: str("data"),
          lr: nonNegative("lr", str("lr")),
          minLr: nonNegative("min-lr", str("min-lr")),
          warmup: int("warmup", 0),
        });
      } catch (e) {
        await lock.release();
        throw e;
      }
      say(`[train] resumed ${existing} at step ${trainer.step} (${trainer.tokens} tokens trained)`);
    } else {
      if (existing && !v.overwrite) {
        const all = await listCheckpoints(out);
        throw new UsageError(
          `${out} already holds ${all.map((c) => c.path.split(/[\\/]/).pop()).join(", ")}; ` +
            `pass --resume to continue that run or --overwrite to start over`,
        );
      }
      const data = str("data");
      if (!data) throw new UsageError("--data DIR is required (a token-shard dataset)");
      if (cadence.steps === undefined) throw new UsageError("--steps N is required");
      const arch = await architecture(v, data);
      const lr = nonNegative("lr", str("lr"));
      let config: TrainConfig;
      try {
        config = makeTrainConfig({
          data,
          model: arch.model,
          preset: arch.preset,
          init: arch.init,
          seed: int("seed", -(2 ** 31)),
          batch: int("batch", 1),
          seq: int("seq", 1),
          gradAccum: int("grad-accum", 1),
          steps: cadence.steps,
          lr,
          minLr: nonNegative("min-lr", str("min-lr")),
          warmup: int("warmup", 0),
          scheduleKind: enumFlag(
            "schedule",
            str("schedule"),
            ["cosine", "linear", "constant"],
            undefined,
          ),
          optimizer: {
            weightDecay: nonNegative("weight-decay", str("weight-decay")),
            decay: enumFlag("decay", str("decay"), ["all", "matrices"], undefined),
            beta1: nonNegative("beta1", str("beta1")),
            beta2: nonNegative("beta2", str("beta2")),
            eps: nonNegative("eps", str("eps")),
            clip: nonNegative("clip", str("clip")),
          },
          valFraction: nonNegative("val-fraction", str("val-fraction")),
          splitSeed: int("split-seed", -(2 ** 31)),
          logEvery: cadence.logEvery,
          evalEvery: cadence.evalEvery,
          evalBatches: cadence.evalBatches,
          saveEvery: cadence.saveEvery,
          keep: cadence.keep,
        });
      } catch (e) {
        if (e instanceof RangeError) throw new UsageError(e.message);
        throw e;
      }
      lock = await RunLock.acquire(out, "train model");
      try {
        if (existing) await clearRun(out);
        trainer = await Trainer.create(gpu, config);
      } catch (e) {
        await lock.release();
        throw e;
      }
    }
    try {
      return await train(trainer, out, str("json-log"), say, lock);
    } finally {
      await lock.release();
    }
  },
};

/** Trains to the end (or a signal) with progress lines, the metrics log and the loss chart. */
async function train(
  trainer: Trainer,
  out: string,
  jsonPath: string | undefined,
  say: (s: string) => void,
  lock: RunLock,
): Promise<number> {
  const gpu = trainer.gpu;
  const c = trainer.config;
  const ds = trainer.dataset;
  say(
    `[train] model ${c.preset ?? (c.init ? `from ${c.init}` : "custom")} (${
      (paramCount(c.model) / 1e6).toFixed(2)
    }M params, vocab ${c.model.vocab} of which ${c.model.imageCodes} image codes) on ${gpu.describe()}`,
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

  const metrics = new MetricsLog(jsonPath ?? null);
  const json = (o: Record<string, unknown>) => metrics.write(o);
  const stop = stopOnSignals((m) => console.error(`[train] ${m}`), () => lock.releaseSync());
  let result;
  try {
    result = await trainer.run({
      out,
      signal: stop.signal,
      chart: join(out, "loss.png"),
      chartTitle: `model loss (${c.preset ?? "custom"})`,
      onLog(e) {
        say(formatLog(e));
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
  if (result.interrupted) {
    console.error(
      `[train] interrupted at step ${result.step}; checkpoint ${result.checkpoint}; continue with ` +
        `the same --out and --resume`,
    );
    return stop.exitCode() || 130;
  }
  console.log(
    `trained ${result.step} steps (${trainer.tokens} tokens), last loss ${
      result.loss.toFixed(4)
    }; model: ${result.checkpoint}`,
  );
  return 0;
}
