/**
 * `deno task train eval`: a model's mean loss and perplexity on a dataset split (packed rows, as in
 * training), and the official LVM score when the sentences are made of images: the mean over
 * sentences of exp(mean NLL of the last image's tokens given the images before it). A model whose
 * weights are not finite is an error (exit 1) naming it.
 * @module
 */
import {
  type Command,
  enumFlag,
  floatFlag,
  intFlag,
  parseFlags,
  positiveInt,
  required,
} from "@lvm/cli";
import { getGpu } from "@lvm/gpu";
import { assertFiniteScores } from "@lvm/pipeline";
import { TokenDataset } from "@lvm/sentence";
import { loadLlama } from "@lvm/transformer/fs";
import { checkpointConfig, evaluateImagePerplexity, evaluateLoss, modelFolder } from "@lvm/train";

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
    const v = parseFlags({ args, options: OPTIONS }).values;
    const dir = await modelFolder("model", required("model", v.model, "DIR"));
    const data = required("data", v.data, "DIR");
    const split = enumFlag("split", v.split, ["val", "train", "all"], "val");
    // The run's split and row length, when the model is a training checkpoint.
    const run = await checkpointConfig(dir);
    const valFraction = floatFlag("val-fraction", v["val-fraction"], run?.valFraction ?? 0.01, {
      min: 0,
    });
    const splitSeed = intFlag("split-seed", v["split-seed"], run?.splitSeed ?? 0);
    const batch = positiveInt("batch", v.batch, 1);
    const maxBatches = positiveInt("max-batches", v["max-batches"], undefined);
    const maxExamples = positiveInt("max-examples", v["max-examples"], undefined);
    const log = (s: string) => v.json || console.error(s);

    const gpu = await getGpu();
    const ds = await TokenDataset.open(data);
    const model = await loadLlama(gpu, dir);
    try {
      const P = model.config.maxPositions;
      const seq = intFlag("seq", v.seq, run?.seq ?? Math.min(4096, P), { min: 1, max: P });
      log(
        `[eval] ${dir} on ${data} (${split} split, val fraction ${valFraction}) on ${gpu.describe()}`,
      );
      const t0 = performance.now();
      const splitOpts = { split, valFraction, splitSeed };
      const loss = await evaluateLoss(model, ds, { ...splitOpts, seq, batch, maxBatches });
      if (!loss) {
        throw new RangeError(
          `the ${split} split of ${data} holds no sentence (val fraction ${valFraction} of ` +
            `${ds.sentences} sentences); use --split all or a larger --val-fraction`,
        );
      }
      const image = v["no-image"]
        ? null
        : await evaluateImagePerplexity(model, ds, { ...splitOpts, maxExamples });
      await assertFiniteScores(model, dir, [loss.loss, image?.image_nll ?? 0], "scores");
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
