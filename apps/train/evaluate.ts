/**
 * `deno task train evaluate`: the held-out evaluation of one or more LVMs (@lvm/pipeline's
 * `evaluateLvm`) from folders: the held-out split's images, the training split's digits (the
 * classifier), a tokenizer and the models; writes one JSON file and, with `--charts`, the
 * in-context chart, the scaling chart (2+ models) and paper-style strips as PNG.
 * @module
 */
import { existsSync } from "node:fs";
import { basename, dirname, join } from "node:path";
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
import type { RgbImage } from "@lvm/image";
import { listImages, loadImage, saveChart, savePng } from "@lvm/image/fs";
import {
  DEFAULT_EVAL_TASKS,
  enlarge,
  EVAL_TASKS,
  evaluateLvm,
  type HeldoutImages,
  inContextChart,
  loadPipeline,
  type ModelEvaluation,
  scalingChart,
  summarizeTask,
} from "@lvm/pipeline/fs";
import { TokenDataset } from "@lvm/sentence";
import { writeFileAtomic } from "@lvm/util/fs";
import { modelFolder } from "./_cli.ts";

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

async function loadAll(paths: string[]): Promise<RgbImage[]> {
  const out: RgbImage[] = [];
  for (const p of paths) out.push(await loadImage(p));
  return out;
}

async function subfolders(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) if (e.isDirectory) names.push(e.name);
  return names.sort().map((n) => join(dir, n));
}

/** MNIST-style class folders `dir/0..9/`, at most `perClass` images each (first in order). */
async function loadDigits(dir: string, perClass = Infinity): Promise<RgbImage[][]> {
  const out: RgbImage[][] = [];
  for (let c = 0; c < 10; c++) {
    const d = join(dir, String(c));
    out.push(existsSync(d) ? await loadAll((await listImages(d)).slice(0, perClass)) : []);
  }
  return out;
}

/** The held-out split's images and the training split's digits, from split.sh's layout. */
export async function loadHeldout(
  heldout: string,
  train: string,
  perClass: number,
): Promise<HeldoutImages> {
  if (!existsSync(heldout)) throw new UsageError(`--heldout ${heldout}: no such folder`);
  const videoDir = join(heldout, "video"), photoDir = join(heldout, "photos");
  const videos: RgbImage[][] = [];
  if (existsSync(videoDir)) {
    for (const v of await subfolders(videoDir)) videos.push(await loadAll(await listImages(v)));
  }
  return {
    digits: await loadDigits(join(heldout, "mnist")),
    videos,
    photos: existsSync(photoDir) ? await loadAll(await listImages(photoDir)) : [],
    trainDigits: existsSync(join(train, "mnist"))
      ? await loadDigits(join(train, "mnist"), perClass)
      : [],
  };
}

/**
 * A tokenizer folder loadable by `loadTokenizer`: `dir` itself when it holds config.json, else (a
 * tokenizer training checkpoint, or its run folder's latest) a temporary folder with the
 * checkpoint's config and a link to its weights. Returns the folder and a clean-up.
 */
export async function tokenizerFolder(dir: string): Promise<[string, () => Promise<void>]> {
  if (existsSync(join(dir, "config.json"))) return [dir, async () => {}];
  let ckpt = dir;
  for (const latest of [join(dir, "latest.json"), join(dir, "checkpoints", "latest.json")]) {
    if (existsSync(latest)) {
      const { checkpoint } = JSON.parse(await Deno.readTextFile(latest));
      ckpt = join(dirname(latest), checkpoint);
    }
  }
  const state = join(ckpt, "state.json");
  if (!existsSync(state) || !existsSync(join(ckpt, "model.safetensors"))) {
    throw new UsageError(
      `--tokenizer ${dir}: holds no config.json and no tokenizer checkpoint (state.json + ` +
        `model.safetensors)`,
    );
  }
  const { config } = JSON.parse(await Deno.readTextFile(state));
  const tmp = await Deno.makeTempDir({ prefix: "lvm-tok-" });
  await Deno.writeTextFile(join(tmp, "config.json"), JSON.stringify(config));
  await Deno.symlink(
    Deno.realPathSync(join(ckpt, "model.safetensors")),
    join(tmp, "model.safetensors"),
  );
  return [tmp, () => Deno.remove(tmp, { recursive: true })];
}

/**
 * The id of the tokenizer whose codes a training checkpoint learned (its run's dataset index),
 * or null when that is not known (not a checkpoint, or the dataset is not where the run saw it).
 */
async function trainingTokenizer(dir: string): Promise<string | null> {
  try {
    const state = JSON.parse(await Deno.readTextFile(join(dir, "trainer_state.json")));
    const index = JSON.parse(await Deno.readTextFile(join(state.config.data, "index.json")));
    return typeof index.tokenizer?.id === "string" ? index.tokenizer.id : null;
  } catch {
    return null;
  }
}

/** Image-code counts of a token dataset (ids below `codebook`). */
async function datasetCounts(dir: string): Promise<Float64Array> {
  const ds = await TokenDataset.open(dir);
  const counts = new Float64Array(ds.layout.codebookSize);
  for await (const s of ds.sentencesIter()) {
    for (const id of s) if (id < counts.length) counts[id]++;
  }
  return counts;
}

/** The JSON written by the command (strips are PNG files, not in it). */
export interface EvaluationReport {
  version: 1;
  created: string;
  heldout: string;
  tokenizer: string;
  models: ({ model: string; label: string } & Omit<ModelEvaluation, "strips">)[];
  charts: { in_context?: string; scaling?: string; strips: string[] };
}

/** The `evaluate` subcommand. */
export const evaluateCommand: Command = {
  summary: "held-out metrics beside baselines, in-context and scaling charts (JSON + PNG)",
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const v = parseFlags({ args, options: OPTIONS }).values;
    const modelArgs = (v.model ?? []).flatMap((m) => m.split(",")).filter((m) => m);
    if (!modelArgs.length) throw new UsageError("--model DIR is required");
    const tokArg = required("tokenizer", v.tokenizer, "DIR");
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
    const models: [string, string][] = [];
    for (const m of modelArgs) models.push([m, await modelFolder("model", m)]);

    const t0 = performance.now();
    const data = await loadHeldout(heldout, train, perClass);
    const digits = data.digits.reduce((s, d) => s + d.length, 0);
    log(
      `[evaluate] held-out ${heldout}: ${digits} digits, ${data.videos.length} videos (${
        data.videos.map((f) => f.length).join("+")
      } frames), ${data.photos.length} photos; classifier memory ${train}: ${
        data.trainDigits.reduce((s, d) => s + d.length, 0)
      } digits (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
    );
    const unigram = v["train-data"]
      ? { unigramCounts: await datasetCounts(v["train-data"]), unigramSource: v["train-data"] }
      : {};
    const gpu = await getGpu();
    const [tokDir, cleanTok] = await tokenizerFolder(tokArg);
    const report: EvaluationReport = {
      version: 1,
      created: new Date().toISOString(),
      heldout,
      tokenizer: tokArg,
      models: [],
      charts: { strips: [] },
    };
    const evaluations: { name: string; evaluation: ModelEvaluation }[] = [];
    try {
      for (const [i, [given, dir]] of models.entries()) {
        const label = basename(given.replace(/\/+$/, "")) || `model-${i}`;
        log(`[evaluate] ${dir} with tokenizer ${tokArg} on ${gpu.describe()}`);
        const lvm = await loadPipeline({ model: dir, tokenizer: tokDir, gpu });
        const trainedWith = await trainingTokenizer(dir);
        if (trainedWith && trainedWith !== lvm.tokenizer.id) {
          console.error(
            `[evaluate] warning: ${dir} was trained on codes of tokenizer ${trainedWith}, but ` +
              `${tokArg} is ${lvm.tokenizer.id}: its scores will be meaningless`,
          );
        }
        let e: ModelEvaluation;
        try {
          e = await evaluateLvm(lvm, data, { ...options, ...unigram, onProgress: log });
        } finally {
          lvm.release();
        }
        evaluations.push({ name: label, evaluation: e });
        const { strips, ...rest } = e;
        report.models.push({ model: dir, label, ...rest });
        console.log(`${label} (${(e.params / 1e6).toFixed(2)}M parameters, ${e.seconds} s):`);
        for (const [name, r] of Object.entries(e.tasks)) console.log(`  ${summarizeTask(name, r)}`);
        console.log(
          `  overall: perplexity ${e.overall.perplexity.toFixed(2)} (unigram ${
            e.overall.unigram_perplexity.toFixed(2)
          })`,
        );
        if (v.charts) {
          for (const [task, imgs] of Object.entries(strips)) {
            for (const [j, im] of imgs.entries()) {
              const p = join(v.charts, "strips", label, `${task}-${j}.png`);
              await Deno.mkdir(dirname(p), { recursive: true });
              await savePng(p, enlarge(im, 3));
              report.charts.strips.push(p);
            }
          }
        }
      }
      if (v.charts) {
        await Deno.mkdir(v.charts, { recursive: true });
        // The in-context chart of the largest model.
        const big = evaluations.reduce((a, b) => b.evaluation.params > a.evaluation.params ? b : a);
        const p = join(v.charts, "in_context.png");
        await saveChart(p, inContextChart(big.evaluation, `in-context: ${big.name}`));
        report.charts.in_context = p;
        if (evaluations.length > 1) {
          const s = join(v.charts, "scaling.png");
          await saveChart(s, scalingChart(evaluations));
          report.charts.scaling = s;
        }
      }
    } finally {
      await cleanTok();
    }
    await Deno.mkdir(dirname(jsonOut), { recursive: true });
    await writeFileAtomic(jsonOut, JSON.stringify(report, null, 2) + "\n");
    console.log(`wrote ${jsonOut}${v.charts ? ` and charts in ${v.charts}` : ""}`);
    return 0;
  },
};
