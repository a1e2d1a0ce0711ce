/**
 * The held-out evaluation of trained models from folders, as `deno task train evaluate` runs it:
 * @lvm/pipeline's `evaluateLvm` on each model, with the held-out split's images (split.sh's layout),
 * the training split's digits (the classifier), a tokenizer folder or tokenizer training checkpoint,
 * the unigram baseline's counts from a token dataset, and a warning when a training checkpoint
 * learned the codes of another tokenizer; writes strips and charts as PNG and returns the report
 * the command writes as JSON. A bad folder is a `UsageError` of `@lvm/cli` naming the flag.
 * @module
 */
import { existsSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { UsageError } from "@lvm/cli";
import type { Gpu } from "@lvm/gpu";
import type { RgbImage } from "@lvm/image";
import { listImages, loadImage, saveChart, savePng } from "@lvm/image/fs";
import {
  enlarge,
  evaluateLvm,
  type EvaluateOptions,
  type HeldoutImages,
  inContextChart,
  loadPipeline,
  type ModelEvaluation,
  scalingChart,
} from "@lvm/pipeline/fs";
import { TokenDataset } from "@lvm/sentence";
import { STATE_FILE } from "./checkpoint.ts";

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

/**
 * The held-out split's images (`heldout/mnist/0..9/`, `heldout/video/NAME/` with frames in order,
 * `heldout/photos/`) and the training split's digits (`train/mnist/0..9/`, at most `perClass` per
 * class), from split.sh's layout; a usage error (`--heldout`) when `heldout` does not exist.
 */
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
 * checkpoint's config and a link to its weights. Returns the folder and a clean-up; a usage error
 * (`--tokenizer`) when `dir` is neither.
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
export async function trainingTokenizer(dir: string): Promise<string | null> {
  try {
    const state = JSON.parse(await Deno.readTextFile(join(dir, STATE_FILE)));
    const index = JSON.parse(await Deno.readTextFile(join(state.config.data, "index.json")));
    return typeof index.tokenizer?.id === "string" ? index.tokenizer.id : null;
  } catch {
    return null;
  }
}

/** Image-code counts of the token dataset in `dir` (ids below its codebook size). */
export async function codeCounts(dir: string): Promise<Float64Array> {
  const ds = await TokenDataset.open(dir);
  const counts = new Float64Array(ds.layout.codebookSize);
  for await (const s of ds.sentencesIter()) {
    for (const id of s) if (id < counts.length) counts[id]++;
  }
  return counts;
}

/** The JSON `deno task train evaluate` writes (strips are PNG files, not in it). */
export interface EvaluationReport {
  version: 1;
  created: string;
  heldout: string;
  tokenizer: string;
  models: ({ model: string; label: string } & Omit<ModelEvaluation, "strips">)[];
  charts: { in_context?: string; scaling?: string; strips: string[] };
}

/** Options of {@link evaluateModels}. */
export interface EvaluateModelsOptions extends Omit<EvaluateOptions, "onProgress"> {
  /** The models: each as given (its label is the folder's name) and its resolved folder. */
  models: { given: string; dir: string }[];
  /** A tokenizer folder, or a tokenizer training checkpoint or run folder. */
  tokenizer: string;
  /** The held-out folder (for the report) and its images ({@link loadHeldout}). */
  heldout: string;
  data: HeldoutImages;
  gpu: Gpu;
  /** Where in_context.png, scaling.png (2+ models) and strips/LABEL/TASK-I.png go, if anywhere. */
  charts?: string;
  /** Progress lines. */
  log(line: string): void;
  /** Warnings (always shown): a model trained on the codes of another tokenizer. */
  warn(line: string): void;
  /** Called with each model's evaluation as it finishes (before its strips are written). */
  onModel?(label: string, e: ModelEvaluation): void;
}

/**
 * Evaluates every model with `evaluateLvm`, writes the strips and charts under `charts`, and
 * returns the report (the temporary tokenizer folder of a checkpoint is removed at the end).
 */
export async function evaluateModels(o: EvaluateModelsOptions): Promise<EvaluationReport> {
  const { models, tokenizer, heldout, data, gpu, charts, log, warn, onModel, ...options } = o;
  const [tokDir, cleanTok] = await tokenizerFolder(tokenizer);
  const report: EvaluationReport = {
    version: 1,
    created: new Date().toISOString(),
    heldout,
    tokenizer,
    models: [],
    charts: { strips: [] },
  };
  const evaluations: { name: string; evaluation: ModelEvaluation }[] = [];
  try {
    for (const [i, { given, dir }] of models.entries()) {
      const label = basename(given.replace(/\/+$/, "")) || `model-${i}`;
      log(`[evaluate] ${dir} with tokenizer ${tokenizer} on ${gpu.describe()}`);
      const lvm = await loadPipeline({ model: dir, tokenizer: tokDir, gpu });
      const trainedWith = await trainingTokenizer(dir);
      if (trainedWith && trainedWith !== lvm.tokenizer.id) {
        warn(
          `[evaluate] warning: ${dir} was trained on codes of tokenizer ${trainedWith}, but ` +
            `${tokenizer} is ${lvm.tokenizer.id}: its scores will be meaningless`,
        );
      }
      let e: ModelEvaluation;
      try {
        e = await evaluateLvm(lvm, data, { ...options, onProgress: log });
      } finally {
        lvm.release();
      }
      evaluations.push({ name: label, evaluation: e });
      const { strips, ...rest } = e;
      report.models.push({ model: dir, label, ...rest });
      onModel?.(label, e);
      if (charts) {
        for (const [task, imgs] of Object.entries(strips)) {
          for (const [j, im] of imgs.entries()) {
            const p = join(charts, "strips", label, `${task}-${j}.png`);
            await Deno.mkdir(dirname(p), { recursive: true });
            await savePng(p, enlarge(im, 3));
            report.charts.strips.push(p);
          }
        }
      }
    }
    if (charts) {
      await Deno.mkdir(charts, { recursive: true });
      // The in-context chart of the largest model.
      const big = evaluations.reduce((a, b) => b.evaluation.params > a.evaluation.params ? b : a);
      const p = join(charts, "in_context.png");
      await saveChart(p, inContextChart(big.evaluation, `in-context: ${big.name}`));
      report.charts.in_context = p;
      if (evaluations.length > 1) {
        const s = join(charts, "scaling.png");
        await saveChart(s, scalingChart(evaluations));
        report.charts.scaling = s;
      }
    }
  } finally {
    await cleanTok();
  }
  return report;
}
