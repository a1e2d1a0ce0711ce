/**
 * `deno task train eval`: a model's mean loss and perplexity on a dataset split (packed rows, as in
 * training), and the official LVM score when the sentences are made of images: the mean over
 * sentences of exp(mean NLL of the last image's tokens given the images before it).
 * @module
 */
import { parseArgs } from "node:util";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import { TokenDataset } from "@lvm/sentence";
import { loadLlama } from "@lvm/transformer";
import {
  evaluateImagePerplexity,
  evaluateLoss,
  readTrainerState,
  resolveCheckpoint,
  STATE_FILE,
} from "@lvm/train";
import { type Command, intOption, UsageError } from "./_cli.ts";
import { floatOption } from "./model.ts";

const USAGE = `usage: deno task train eval --model DIR --data DIR [options]

Scores a model on a token-shard dataset split:
  loss, perplexity   mean next-token cross-entropy over packed rows of --seq tokens (every token
                     scored, positions restarting each row, as in training) and exp(loss)
  image_perplexity   the official LVM evaluation, for sentences of 2+ images: each sentence is one
                     example, its last image's tokens (256 for the VQGAN) are scored given the
                     rest; the score is the mean over examples of exp(mean NLL)

options:
  --model DIR         Hugging Face model folder, a training checkpoint, or a run folder (latest)
  --data DIR          token-shard dataset
  --split S           val (default) | train | all
  --val-fraction F    the split's validation fraction (default: the run's, from
                      trainer_state.json when the model is a checkpoint; else 0.01)
  --split-seed S      the split's seed (default: the run's, else 0)
  --seq T             tokens per packed row (default: the run's, else min(4096, positions))
  --batch B           rows per forward pass (default 1)
  --max-batches N     at most N batches for the loss (default: the whole split)
  --max-examples N    at most N sentences for image_perplexity (default: the whole split)
  --no-image          skip image_perplexity
  --json              print one JSON object: {"loss","perplexity","tokens",
                      "image_perplexity",...}`;

const OPTIONS = {
  model: { type: "string" },
  data: { type: "string" },
  split: { type: "string" },
  "val-fraction": { type: "string" },
  "split-seed": { type: "string" },
  seq: { type: "string" },
  batch: { type: "string" },
  "max-batches": { type: "string" },
  "max-examples": { type: "string" },
  "no-image": { type: "boolean" },
  json: { type: "boolean" },
} as const;

/** The `eval` subcommand. */
export const evalCommand: Command = {
  summary: "loss, perplexity and the official image perplexity of a model on a dataset split",
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    let parsed;
    try {
      parsed = parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false });
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const v = parsed.values;
    if (!v.model) throw new UsageError("--model DIR is required");
    if (!v.data) throw new UsageError("--data DIR is required");
    const split = v.split ?? "val";
    if (split !== "val" && split !== "train" && split !== "all") {
      throw new UsageError(`--split ${split}: expected val, train or all`);
    }
    let dir = v.model;
    if (!existsSync(join(dir, "config.json"))) {
      try {
        dir = await resolveCheckpoint(dir);
      } catch {
        throw new UsageError(
          `--model ${v.model}: holds no config.json and no checkpoint (expected a Hugging Face ` +
            `model folder, a checkpoint-STEP folder or a training run folder)`,
        );
      }
    }
    // The run's split and row length, when the model is a training checkpoint.
    const run = existsSync(join(dir, STATE_FILE)) ? (await readTrainerState(dir)).config : null;
    const valFraction = floatOption(
      "val-fraction",
      v["val-fraction"],
      run?.valFraction ?? 0.01,
      { min: 0 },
    )!;
    const splitSeed = intOption("split-seed", v["split-seed"], run?.splitSeed ?? 0);
    const batch = intOption("batch", v.batch, 1, { min: 1 });
    const maxBatches = v["max-batches"] === undefined
      ? undefined
      : intOption("max-batches", v["max-batches"], 0, { min: 1 });
    const maxExamples = v["max-examples"] === undefined
      ? undefined
      : intOption("max-examples", v["max-examples"], 0, { min: 1 });
    const log = (s: string) => v.json || console.error(s);

    const gpu = await getGpu();
    const ds = await TokenDataset.open(v.data);
    const model = await loadLlama(gpu, dir);
    try {
      const seq = intOption("seq", v.seq, run?.seq ?? Math.min(4096, model.config.maxPositions), {
        min: 1,
        max: model.config.maxPositions,
      });
      log(
        `[eval] ${dir} on ${v.data} (${split} split, val fraction ${valFraction}) on ${gpu.describe()}`,
      );
      const t0 = performance.now();
      const splitOpts = { split: split as "val" | "train" | "all", valFraction, splitSeed };
      const loss = await evaluateLoss(model, ds, { ...splitOpts, seq, batch, maxBatches });
      if (!loss) {
        throw new RangeError(
          `the ${split} split of ${v.data} holds no sentence (val fraction ${valFraction} of ` +
            `${ds.sentences} sentences); use --split all or a larger --val-fraction`,
        );
      }
      const image = v["no-image"]
        ? null
        : await evaluateImagePerplexity(model, ds, { ...splitOpts, maxExamples });
      const secs = (performance.now() - t0) / 1000;
      if (v.json) {
        console.log(JSON.stringify({
          loss: loss.loss,
          perplexity: loss.perplexity,
          tokens: loss.tokens,
          image_perplexity: image?.image_perplexity ?? null,
          image_nll: image?.image_nll ?? null,
          examples: image?.examples ?? 0,
          image_tokens: image?.image_tokens ?? null,
          skipped: image?.skipped ?? 0,
          split,
          seq,
          seconds: +secs.toFixed(3),
        }));
        return 0;
      }
      console.log(
        `loss ${loss.loss.toFixed(4)} · perplexity ${
          loss.perplexity.toFixed(3)
        } over ${loss.tokens} ` +
          `tokens (${loss.batches} batches of ${batch} x ${seq})`,
      );
      if (image) {
        console.log(
          `image_perplexity ${
            image.image_perplexity.toFixed(3)
          } over ${image.examples} sentences ` +
            `(last image's ${image.image_tokens} tokens given the rest; exp(mean NLL) ${
              Math.exp(image.image_nll).toFixed(3)
            }${
              image.skipped ? `; ${image.skipped} sentences skipped: < 2 images or too long` : ""
            })`,
        );
      } else if (!v["no-image"]) {
        console.log("image_perplexity: n/a (no sentence of 2+ whole images in the split)");
      }
      log(`[eval] ${secs.toFixed(1)} s`);
      return 0;
    } finally {
      model.release();
    }
  },
};
