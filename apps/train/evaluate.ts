/**
 * `deno task train evaluate`: the held-out evaluation of one or more LVMs (@lvm/pipeline's
 * `evaluateLvm`) from folders: the held-out split's images, the training split's digits (the
 * classifier), a tokenizer and the models; writes one JSON file and, with `--charts`, the
 * in-context chart, the scaling chart (2+ models) and paper-style strips as PNG. The folder side
 * is @lvm/train's (`loadHeldout`, `evaluateModels`).
 * @module
 */
import { dirname, join } from "node:path";
import {
  type Command,
  intFlag,
  parseFlags,
  positiveInt,
  required,
  seedFlag,
  UsageError,
} from "@lvm/cli";
import { getGpu } from "@lvm/gpu";
import { DEFAULT_EVAL_TASKS, EVAL_TASKS, summarizeTask } from "@lvm/pipeline/fs";
import { codeCounts, evaluateModels, loadHeldout, modelFolder } from "@lvm/train";
import { writeFileAtomic } from "@lvm/util/fs";
export type { EvaluationReport } from "@lvm/train";

const USAGE = `usage: deno task train evaluate --model DIR [--model DIR ...] --tokenizer DIR
                               --heldout DIR --json OUT.json [options]

Evaluates models on the held-out split (every metric beside its baseline):
  classes       k held-out digits of one class -> generate the next; share of generated images a
                k-NN classifier (raw pixels, the TRAINING split's digits) puts in the prompt's
                class (chance 10%), beside the classifier's accuracy on real held-out digits and
                on their VQGAN reconstructions
  analogies     x1 f(x1) ... xk f(xk) xq -> generate f(xq): PSNR to the true f(xq), beside "copy
                the query", the same model prompted with xq alone, and the VQGAN ceiling
                (invert, flip, rotation, zoom, edges on digits; colorization on photos + frames)
  sequence      k frames -> the next: PSNR beside "copy the last frame" and the VQGAN ceiling
  perplexity    per task, official (last image given the rest; mean of exp(mean NLL)) beside a
                unigram model's; the in-context curve (image k+1 given k, k = 1..n-1); with 2+
                models the scaling chart (perplexity per task against parameters)
Generation is greedy unless --sample; examples are drawn with --seed.

options:
  --model DIR          Hugging Face folder, checkpoint or run folder (latest); repeat for scaling
  --tokenizer DIR      VQGAN folder (config.json), or a tokenizer training checkpoint or run
                       folder (its config comes from the checkpoint's state.json)
  --heldout DIR        held-out split: mnist/0..9/, video/NAME/ (frames in order), photos/
  --train DIR          training split for the classifier (default: DIR/../train beside --heldout)
  --json FILE          write the results here
  --charts DIR         write in_context.png, scaling.png and strips/ here
  --examples N         held-out prompts per task (default 24)
  --tasks LIST         comma-separated (default ${DEFAULT_EVAL_TASKS.join(",")});
                       also: ${
  Object.keys(EVAL_TASKS).filter((t) => !DEFAULT_EVAL_TASKS.includes(t)).join(",")
}
  --images N           images per sentence, prompt = N-1 (default 8)
  --stride S           frame step of sequence prompts (default 2)
  --seed S             seed of the held-out draw and of sampling (default 0)
  --sample             sample (top-k 50, temperature 1, seed + example index) instead of greedy
  --knn-k K            classifier neighbours (default 5)
  --knn-per-class N    training digits per class for the classifier (default 400)
  --train-data DIR     token dataset of the training data: the unigram baseline's counts
                       (default: the held-out sentences' own codes, an optimistic baseline)
  --strips N           strips per task and model under --charts (default 2; 3x enlarged)
  --score-only         perplexities and curves only (no generation)
  --quiet              no progress lines`;

const OPTIONS = {
  model: { type: "string", multiple: true },
  tokenizer: { type: "string" },
  heldout: { type: "string" },
  train: { type: "string" },
  json: { type: "string" },
  charts: { type: "string" },
  examples: { type: "string" },
  tasks: { type: "string" },
  images: { type: "string" },
  stride: { type: "string" },
  seed: { type: "string" },
  sample: { type: "boolean" },
  "knn-k": { type: "string" },
  "knn-per-class": { type: "string" },
  "train-data": { type: "string" },
  strips: { type: "string" },
  "score-only": { type: "boolean" },
  quiet: { type: "boolean" },
} as const;

/** The `evaluate` subcommand. */
export const evaluateCommand: Command = {
  summary: "held-out metrics beside baselines, in-context and scaling charts (JSON + PNG)",
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const v = parseFlags({ args, options: OPTIONS }).values;
    const modelArgs = (v.model ?? []).flatMap((m) => m.split(",")).filter((m) => m);
    if (!modelArgs.length) throw new UsageError("--model DIR is required");
    const tokenizer = required("tokenizer", v.tokenizer, "DIR");
    const heldout = required("heldout", v.heldout, "DIR");
    const jsonOut = required("json", v.json, "FILE");
    const train = v.train ?? join(dirname(heldout.replace(/\/+$/, "")), "train");
    const tasks = (v.tasks ?? DEFAULT_EVAL_TASKS.join(",")).split(",").filter((t) => t);
    for (const t of tasks) {
      if (!EVAL_TASKS[t]) {
        throw new UsageError(
          `--tasks: unknown task "${t}", expected some of ${Object.keys(EVAL_TASKS).join(",")}`,
        );
      }
    }
    const options = {
      tasks,
      examples: positiveInt("examples", v.examples, 24),
      imagesPerSentence: intFlag("images", v.images, 8, { min: 2 }),
      stride: positiveInt("stride", v.stride, 2),
      seed: seedFlag("seed", v.seed, 0),
      sampling: v.sample ? { greedy: false, topK: 50, temperature: 1 } : { greedy: true },
      knnK: positiveInt("knn-k", v["knn-k"], 5),
      strips: intFlag("strips", v.strips, 2, { min: 0 }),
      scoreOnly: v["score-only"] ?? false,
    };
    if (options.imagesPerSentence % 2) {
      throw new UsageError(`--images ${options.imagesPerSentence}: expected an even number`);
    }
    const perClass = positiveInt("knn-per-class", v["knn-per-class"], 400);
    const log = (s: string) => v.quiet || console.error(s);
    const models: { given: string; dir: string }[] = [];
    for (const m of modelArgs) models.push({ given: m, dir: await modelFolder("model", m) });

    const t0 = performance.now();
    const data = await loadHeldout(heldout, train, perClass);
    const count = (dd: unknown[][]) => dd.reduce((s, d) => s + d.length, 0);
    log(
      `[evaluate] held-out ${heldout}: ${
        count(data.digits)
      } digits, ${data.videos.length} videos (${
        data.videos.map((f) => f.length).join("+")
      } frames), ${data.photos.length} photos; classifier memory ${train}: ${
        count(data.trainDigits)
      } digits (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
    const unigram = v["train-data"]
      ? { unigramCounts: await codeCounts(v["train-data"]), unigramSource: v["train-data"] }
      : {};
    const report = await evaluateModels({
      ...options,
      ...unigram,
      models,
      tokenizer,
      heldout,
      data,
      gpu: await getGpu(),
      charts: v.charts,
      log,
      warn: (s) => console.error(s),
      onModel(label, e) {
        console.log(`${label} (${(e.params / 1e6).toFixed(2)}M parameters, ${e.seconds} s):`);
        for (const [name, r] of Object.entries(e.tasks)) console.log(`  ${summarizeTask(name, r)}`);
        console.log(
          `  overall: perplexity ${e.overall.perplexity.toFixed(2)} (unigram ${
            e.overall.unigram_perplexity.toFixed(2)
          })`,
        );
      },
    });
    await Deno.mkdir(dirname(jsonOut), { recursive: true });
    await writeFileAtomic(jsonOut, JSON.stringify(report, null, 2) + "\n");
    console.log(`wrote ${jsonOut}${v.charts ? ` and charts in ${v.charts}` : ""}`);
    return 0;
  },
};
