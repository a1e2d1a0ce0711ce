/**
 * Held-out evaluation of an LVM on the paper's three kinds of prompt, each metric beside its
 * baseline (file-free: the caller loads the images; `deno task train evaluate` does it from folders):
 *
 * | task | prompt (images) | metric | baselines |
 * |---|---|---|---|
 * | classes | k digits of one class -> generate 1 | share of generated images a k-NN pixel classifier puts in the prompt's class | chance 10%; the classifier on real held-out digits and on their VQGAN reconstructions |
 * | analogy f | x1 f(x1) ... xk f(xk) xq -> generate f(xq) | PSNR (dB) to the true f(xq) | copy the query (and its codes, decoded); the same model prompted with xq alone; the VQGAN's own reconstruction of f(xq) (ceiling) |
 * | sequence | k frames -> generate the next | PSNR to the true next frame | copy the last frame; the same copy through the tokenizer (the last frame's codes, decoded); the VQGAN ceiling |
 *
 * For every task also: the official held-out perplexity (mean over examples of exp(mean NLL of the
 * last image's codes)) beside a unigram model's, and the in-context curve: the perplexity of image
 * k+1 given the k before it, k = 1..n-1, from one causal pass over each held-out sentence (for an
 * analogy, odd k ends on a query x, whose next image is its target f(x); even k ends on a target,
 * whose next image is a new, unpredictable x; both are reported, the chart draws the targets).
 *
 * Every held-out sentence is drawn with a seeded generator from the held-out images and rendered
 * exactly as the dataset builders render training sentences (@lvm/sentence's `renderVariant`:
 * squash-resize to the tokenizer's side, then the transform). Generation is greedy by default
 * (`sampling: { greedy: false, topK, seed }` samples instead, seeded per example).
 *
 * @example
 * ```ts ignore
 * import { evaluateLvm, inContextChart, loadPipeline } from "@lvm/pipeline/fs";
 * import { saveChart } from "@lvm/image/fs";
 * const lvm = await loadPipeline({ model: "models/lvm", tokenizer: "models/tokenizer" });
 * const e = await evaluateLvm(lvm, heldout, { examples: 24, seed: 0 }); // heldout: HeldoutImages
 * console.log(e.tasks.classes.category?.accuracy, e.tasks.invert.psnr);
 * await saveChart("in_context.png", inContextChart(e));
 * lvm.release();
 * ```
 * @module
 */
import {
  CHART_COLORS,
  type ChartOptions,
  type ChartSeries,
  hstack,
  makeImage,
  resize,
  type RgbImage,
} from "@lvm/image";
import { imageKey, renderVariant, Variant } from "@lvm/sentence";
import { paramCount } from "@lvm/transformer";
import { permutation, randInt, rng } from "@lvm/util";
import type { LvmPipeline, SamplingChoice } from "./pipeline.ts";

// ---------------------------------------------------------------------------------- tasks

/** Where a task's images come from. */
export type TaskDomain = "digits" | "photos" | "video";

/** One evaluation task. */
export interface EvalTask {
  /** Name in reports ("classes", "invert", "photo-flip", "sequence", ...). */
  name: string;
  kind: "classes" | "analogy" | "sequence";
  domain: TaskDomain;
  /** analogy: the transform's variants (one drawn per example, as the builders draw per sentence). */
  variants?: number[];
  /** analogy: [f(x), x] pairs (colorization: the gray image is the input). */
  targetFirst?: boolean;
}

const V = Variant;
const analogy = (name: string, domain: TaskDomain, variants: number[], inputIsDerived = false) => ({
  name,
  kind: "analogy" as const,
  domain,
  variants,
  targetFirst: inputIsDerived,
});

/** Every task {@link evaluateLvm} knows, by name. */
export const EVAL_TASKS: Readonly<Record<string, EvalTask>> = Object.freeze({
  classes: { name: "classes", kind: "classes", domain: "digits" },
  invert: analogy("invert", "digits", [V.invert]),
  flip: analogy("flip", "digits", [V.flipH, V.flipV]),
  rotation: analogy("rotation", "digits", [V.rot90, V.rot180, V.rot270]),
  zoom: analogy("zoom", "digits", [V.zoom2]),
  edges: analogy("edges", "digits", [V.edges]),
  colorization: analogy("colorization", "photos", [V.gray], true),
  "photo-invert": analogy("photo-invert", "photos", [V.invert]),
  "photo-flip": analogy("photo-flip", "photos", [V.flipH, V.flipV]),
  "photo-rotation": analogy("photo-rotation", "photos", [V.rot90, V.rot180, V.rot270]),
  "photo-zoom": analogy("photo-zoom", "photos", [V.zoom2]),
  "photo-edges": analogy("photo-edges", "photos", [V.edges]),
  sequence: { name: "sequence", kind: "sequence", domain: "video" },
});

/** The tasks evaluated by default: the list. */
export const DEFAULT_EVAL_TASKS: readonly string[] = [
  "classes",
  "invert",
  "flip",
  "rotation",
  "zoom",
  "edges",
  "colorization",
  "sequence",
];

// ---------------------------------------------------------------------------------- data

/** The images an evaluation draws from (native sizes; rendered to the tokenizer's side here). */
export interface HeldoutImages {
  /** Held-out digits by class (index = class). */
  digits: RgbImage[][];
  /** Held-out frames of each video, in order. */
  videos: RgbImage[][];
  /** Held-out photos (colour analogies also draw from every 2nd held-out video frame). */
  photos: RgbImage[];
  /** Training-split digits by class: the k-NN classifier's memory (never the held-out ones). */
  trainDigits: RgbImage[][];
}

/** Options of {@link evaluateLvm}. */
export interface EvaluateOptions {
  /** Task names (default {@link DEFAULT_EVAL_TASKS}). */
  tasks?: readonly string[];
  /** Held-out sentences (= prompts) per task (default 24). */
  examples?: number;
  /** Images per sentence (default 8: a prompt of 7, as the training sentences of 8). */
  imagesPerSentence?: number;
  /** Frame step of sequence sentences (default 2, as the shipped training data). */
  stride?: number;
  /** Seed of the held-out draw and of sampling (default 0). */
  seed?: number;
  /** How generated codes are chosen (default greedy). */
  sampling?: SamplingChoice;
  /** Neighbours of the classifier (default 5). */
  knnK?: number;
  /**
   * Image-code counts of the training data for the unigram baseline (length >= codebook size);
   * default: counts over this evaluation's held-out sentences (an optimistic baseline).
   */
  unigramCounts?: ArrayLike<number>;
  /** What {@link unigramCounts} are, for the report (default "heldout"). */
  unigramSource?: string;
  /** Strips kept per task for the report (default 2). */
  strips?: number;
  /** Skip generation (perplexities and curves only, e.g. for a scaling sweep). */
  scoreOnly?: boolean;
  /** Progress: a line of text. */
  onProgress?: (line: string) => void;
}

/** A point of an in-context curve. */
export interface CurvePoint {
  /** Images in the prompt. */
  prompt_images: number;
  /** Mean over examples of exp(mean NLL of image prompt_images+1). */
  perplexity: number;
  /** The unigram model's, on the same images. */
  unigram_perplexity: number;
  /** analogy: whether the scored image is a target f(x) (odd prompt sizes). */
  target?: boolean;
}

/** One task's results. */
export interface TaskResult {
  kind: EvalTask["kind"];
  domain: TaskDomain;
  examples: number;
  /** Official held-out perplexity: the last image given the n-1 before it. */
  perplexity: number;
  unigram_perplexity: number;
  /** Perplexity over every code of images 2..n (exp of the mean NLL per code), and the unigram's. */
  token_perplexity: number;
  unigram_token_perplexity: number;
  curve: CurvePoint[];
  /** classes: the generated image's class accuracy. */
  category?: { accuracy: number; chance: number; generated: number };
  /** analogy / sequence: mean PSNR (dB) of the generated image to the truth, and baselines. */
  psnr?: {
    model: number;
    /** analogy: the query itself; sequence: the last frame. */
    copy: number;
    copy_is: "query" | "last frame";
    /**
     * The same copy made through the tokenizer (the copied image's own codes, decoded): what a
     * model over these codes gets by repeating them, the fair copy baseline when the plain copy
     * beats the VQGAN ceiling (consecutive video frames).
     */
    copy_codes: number;
    /** analogy: the same model prompted with the query alone. */
    no_examples?: number;
    /** The VQGAN's reconstruction of the truth: the best any model over these codes can do. */
    tokenizer_ceiling: number;
  };
  seconds: number;
}

/** What {@link evaluateLvm} returns for one model. */
export interface ModelEvaluation {
  params: number;
  tasks: Record<string, TaskResult>;
  /** Mean over tasks of each task's official perplexity, and of the unigram's. */
  overall: { perplexity: number; unigram_perplexity: number; curve: CurvePoint[] };
  classifier?: ClassifierReport;
  settings: {
    examples: number;
    images_per_sentence: number;
    stride: number;
    seed: number;
    sampling: string;
    unigram: string;
  };
  /** Per task, up to `strips` paper-style strips (prompt, generated framed in red, truth). */
  strips: Record<string, RgbImage[]>;
  seconds: number;
}

/** The k-NN classifier's own accuracy (the ceiling of the category metric). */
export interface ClassifierReport {
  k: number;
  train_images: number;
  /** On real held-out digits (rendered at the tokenizer's side). */
  heldout_accuracy: number;
  /** On the VQGAN reconstructions of the same digits. */
  reconstructed_accuracy: number;
  heldout_images: number;
}

// ---------------------------------------------------------------------------------- helpers

/** PSNR in dB of `a` against `b` (same size, pixels in [0, 1]); 99 dB when equal. */
export function psnr(a: RgbImage, b: RgbImage): number {
  if (a.width !== b.width || a.height !== b.height) {
    throw new RangeError(`psnr: ${a.width}x${a.height} vs ${b.width}x${b.height}`);
  }
  let se = 0;
  for (let i = 0; i < a.data.length; i++) se += (a.data[i] - b.data[i]) ** 2;
  return se === 0 ? 99 : Math.min(99, 10 * Math.log10(a.data.length / se));
}

/** The image with a `width`-pixel border of colour `rgb` around it. */
export function framed(img: RgbImage, rgb: readonly [number, number, number], width = 2): RgbImage {
  const W = img.width + 2 * width,
    H = img.height + 2 * width,
    P = W * H,
    p = img.width * img.height;
  const out = makeImage(W, H);
  for (let c = 0; c < 3; c++) out.data.fill(rgb[c], c * P, (c + 1) * P);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < img.height; y++) {
      const s = c * p + y * img.width;
      out.data.set(img.data.subarray(s, s + img.width), c * P + (y + width) * W + width);
    }
  }
  return out;
}

/**
 * The paper's figure layout: the prompt images, the generated image framed in red, then the truth
 * (every image given a 2-pixel border, white for the others, so they line up).
 */
export function paperStrip(prompt: RgbImage[], generated: RgbImage, truth?: RgbImage): RgbImage {
  const white = (im: RgbImage) => framed(im, [1, 1, 1]);
  const parts = [...prompt.map(white), framed(generated, [0.9, 0.1, 0.1])];
  if (truth) parts.push(white(truth));
  return hstack(parts, 2);
}

/** The image enlarged `k` times by pixel repetition (nearest neighbour), for figures. */
export function enlarge(img: RgbImage, k: number): RgbImage {
  if (!Number.isInteger(k) || k < 1) throw new RangeError(`enlarge: k must be >= 1, found ${k}`);
  if (k === 1) return img;
  const W = img.width * k, H = img.height * k, out = makeImage(W, H);
  const p = img.width * img.height, P = W * H;
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        out.data[c * P + y * W + x] =
          img.data[c * p + Math.floor(y / k) * img.width + Math.floor(x / k)];
      }
    }
  }
  return out;
}

/** Gray pixels of an image squash-resized to side R (the classifier's features). */
function grayFeatures(img: RgbImage, R: number): Float32Array {
  const im = img.width === R && img.height === R ? img : resize(img, R, R);
  const P = R * R, d = im.data, out = new Float32Array(P);
  for (let i = 0; i < P; i++) out[i] = 0.2989 * d[i] + 0.587 * d[P + i] + 0.114 * d[2 * P + i];
  return out;
}

/**
 * k-nearest-neighbours on raw gray pixels (squared L2 at side R), majority vote (ties: the class
 * of the nearest among the tied). A deliberately simple, honest judge of what a digit looks like.
 */
export class KnnClassifier {
  readonly #features: Float32Array[] = [];
  readonly #labels: number[] = [];
  constructor(byClass: RgbImage[][], readonly resolution: number, readonly k = 5) {
    byClass.forEach((imgs, c) => {
      for (const im of imgs) {
        this.#features.push(grayFeatures(im, resolution));
        this.#labels.push(c);
      }
    });
    if (!this.#labels.length) throw new RangeError("KnnClassifier: no training images");
  }
  /** Training images held. */
  get size(): number {
    return this.#labels.length;
  }
  /** The predicted class of an image. */
  classify(img: RgbImage): number {
    const f = grayFeatures(img, this.resolution), k = Math.min(this.k, this.#labels.length);
    const best: [number, number][] = []; // (distance, label), ascending, at most k
    for (let j = 0; j < this.#features.length; j++) {
      const g = this.#features[j];
      let d = 0;
      for (let i = 0; i < f.length; i++) d += (f[i] - g[i]) ** 2;
      if (best.length < k || d < best[best.length - 1][0]) {
        let p = best.length < k ? best.length : k - 1;
        if (best.length < k) best.push([d, this.#labels[j]]);
        while (p > 0 && best[p - 1][0] > d) {
          best[p] = best[p - 1];
          p--;
        }
        best[p] = [d, this.#labels[j]];
      }
    }
    const votes = new Map<number, number>();
    for (const [, l] of best) votes.set(l, (votes.get(l) ?? 0) + 1);
    const top = Math.max(...votes.values());
    return best.find(([, l]) => votes.get(l) === top)![1];
  }
}

// ---------------------------------------------------------------------------------- sentences

/** A held-out sentence: its images rendered at the tokenizer's side (the last one is the target). */
interface Sentence {
  images: RgbImage[];
  /** classes: the class. */
  label?: number;
}

function pick<T>(r: () => number, items: readonly T[], n: number): T[] {
  if (items.length < n) throw new RangeError(`need ${n} distinct images, found ${items.length}`);
  const p = permutation(items.length, r);
  return [...p.subarray(0, n)].map((i) => items[i]);
}

/** Draws `count` held-out sentences of a task, rendered as the dataset builders render them. */
function drawSentences(
  task: EvalTask,
  data: HeldoutImages,
  o: { count: number; n: number; stride: number; seed: number; R: number },
): Sentence[] {
  const render = (img: RgbImage, variant: number) =>
    renderVariant(img, imageKey(0, variant), { resolution: o.R, seed: o.seed });
  const out: Sentence[] = [];
  const salt = [...task.name].reduce((s, ch) => (s * 31 + ch.charCodeAt(0)) >>> 0, 7);
  for (let e = 0; e < o.count; e++) {
    const r = rng(o.seed, salt, e);
    if (task.kind === "classes") {
      const classes = data.digits.map((d, c) => [c, d.length] as const).filter(([, n]) => n >= o.n);
      if (!classes.length) throw new RangeError(`classes: no class has ${o.n} held-out digits`);
      const c = classes[e % classes.length][0];
      out.push({
        images: pick(r, data.digits[c], o.n).map((im) => render(im, V.original)),
        label: c,
      });
    } else if (task.kind === "sequence") {
      const span = (o.n - 1) * o.stride + 1;
      const windows: [number, number][] = [];
      data.videos.forEach((f, v) => {
        for (let s = 0; s + span <= f.length; s++) windows.push([v, s]);
      });
      if (!windows.length) {
        throw new RangeError(`sequence: no held-out video has ${span} frames (stride ${o.stride})`);
      }
      // Spread over the windows (every video), in a seeded order.
      const order = permutation(windows.length, rng(o.seed, salt));
      const [v, s] = windows[order[e % windows.length]];
      const images = [];
      for (let i = 0; i < o.n; i++) {
        images.push(render(data.videos[v][s + i * o.stride], V.original));
      }
      out.push({ images });
    } else {
      const pool = task.domain === "digits"
        ? data.digits.flat()
        : [...data.photos, ...data.videos.flatMap((f) => f.filter((_, i) => i % 2 === 0))];
      const vs = task.variants!, variant = vs[randInt(r, vs.length)];
      const images: RgbImage[] = [];
      for (const im of pick(r, pool, o.n / 2)) {
        const a = render(im, V.original), t = render(im, variant);
        images.push(...(task.targetFirst ? [t, a] : [a, t]));
      }
      out.push({ images });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------- scoring

/** Per image 1..n-1: mean NLL of its codes (model) from one causal pass, and the unigram's. */
async function imageNlls(
  lvm: LvmPipeline,
  codes: Int32Array[],
  unigramLogp: Float64Array,
): Promise<{ model: number[]; unigram: number[] }> {
  const T = codes[0].length, ids = codes.flatMap((c) => Array.from(c));
  const { logprobs } = await lvm.scoreTokens(ids); // logprobs[j] = log p(ids[j+1] | ids[..j])
  const model: number[] = [], unigram: number[] = [];
  for (let m = 1; m < codes.length; m++) {
    let s = 0, u = 0;
    for (let t = 0; t < T; t++) {
      s -= logprobs[m * T + t - 1];
      u -= unigramLogp[codes[m][t]];
    }
    model.push(s / T);
    unigram.push(u / T);
  }
  return { model, unigram };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const meanExp = (xs: number[]) => mean(xs.map(Math.exp));

function samplingLabel(s: SamplingChoice): string {
  return s.greedy ?? true
    ? "greedy"
    : `top-k ${s.topK ?? 50}, temperature ${s.temperature ?? 1}, seed ${s.seed ?? 0} + example`;
}

/**
 * Evaluates one pipeline (tokenizer + model) on held-out images: per task the official perplexity
 * and its in-context curve beside a unigram model's, and the generation metrics beside their
 * baselines (see the module doc). Deterministic for a seed.
 */
export async function evaluateLvm(
  lvm: LvmPipeline,
  data: HeldoutImages,
  options: EvaluateOptions = {},
): Promise<ModelEvaluation> {
  const t0 = performance.now();
  const names = options.tasks ?? DEFAULT_EVAL_TASKS;
  const count = options.examples ?? 24, n = options.imagesPerSentence ?? 8;
  const stride = options.stride ?? 2, seed = options.seed ?? 0, keep = options.strips ?? 2;
  const sampling: SamplingChoice = { greedy: true, ...options.sampling };
  const say = options.onProgress ?? (() => {});
  if (!Number.isInteger(n) || n < 2 || n % 2) {
    throw new RangeError(`evaluateLvm: imagesPerSentence must be even and >= 2, found ${n}`);
  }
  const tasks = names.map((name) => {
    const t = EVAL_TASKS[name];
    if (!t) {
      throw new RangeError(
        `unknown task "${name}", expected some of ${Object.keys(EVAL_TASKS).join(", ")}`,
      );
    }
    return t;
  });
  const tok = lvm.tokenizer, R = tok.resolution, codebook = tok.codebookSize;
  const nPos = n * tok.tokensPerImage;
  if (nPos > lvm.model.config.maxPositions) {
    throw new RangeError(
      `${n} images of ${tok.tokensPerImage} codes exceed the model's ${lvm.model.config.maxPositions} positions`,
    );
  }

  // 1. Held-out sentences and their codes.
  const sentences = new Map<string, { s: Sentence[]; codes: Int32Array[][] }>();
  for (const t of tasks) {
    const s = drawSentences(t, data, { count, n, stride, seed, R });
    const codes: Int32Array[][] = [];
    for (const x of s) codes.push(await lvm.encode(x.images));
    sentences.set(t.name, { s, codes });
  }

  // 2. The unigram model: training counts when given, else the held-out codes' (add-one).
  const counts = new Float64Array(codebook).fill(1);
  if (options.unigramCounts) {
    for (let i = 0; i < codebook; i++) counts[i] += options.unigramCounts[i] ?? 0;
  } else {
    for (const { codes } of sentences.values()) {
      for (const c of codes.flat()) for (const id of c) counts[id]++;
    }
  }
  const total = counts.reduce((a, b) => a + b, 0);
  const unigramLogp = counts.map((c) => Math.log(c / total));

  // 3. The classifier, and its accuracy on real and on reconstructed held-out digits.
  let knn: KnnClassifier | null = null, classifier: ClassifierReport | undefined;
  if (tasks.some((t) => t.kind === "classes") && !options.scoreOnly) {
    knn = new KnnClassifier(data.trainDigits, R, options.knnK ?? 5);
    const probe: [RgbImage, number][] = [];
    data.digits.forEach((d, c) =>
      d.slice(0, 20).forEach((im) => probe.push([renderVariant(im, 0, { resolution: R, seed }), c]))
    );
    const rebuilt = await tok.decode(await tok.encode(probe.map(([im]) => im)));
    const acc = (imgs: RgbImage[]) =>
      imgs.filter((im, i) => knn!.classify(im) === probe[i][1]).length / imgs.length;
    classifier = {
      k: knn.k,
      train_images: knn.size,
      heldout_accuracy: acc(probe.map(([im]) => im)),
      reconstructed_accuracy: acc(rebuilt),
      heldout_images: probe.length,
    };
    say(
      `[evaluate] classifier: ${knn.k}-NN on ${knn.size} training digits: ${
        (100 * classifier.heldout_accuracy).toFixed(1)
      }% on ${probe.length} held-out digits, ${
        (100 * classifier.reconstructed_accuracy).toFixed(1)
      }% on their VQGAN reconstructions`,
    );
  }

  // 4. Per task: scores, then generation.
  const results: Record<string, TaskResult> = {};
  const strips: Record<string, RgbImage[]> = {};
  for (const t of tasks) {
    const t1 = performance.now();
    const { s, codes } = sentences.get(t.name)!;
    const nll: number[][] = [], uni: number[][] = [];
    for (const c of codes) {
      const r = await imageNlls(lvm, c, unigramLogp);
      nll.push(r.model);
      uni.push(r.unigram);
    }
    const curve: CurvePoint[] = [];
    for (let k = 1; k < n; k++) {
      const p: CurvePoint = {
        prompt_images: k,
        perplexity: meanExp(nll.map((x) => x[k - 1])),
        unigram_perplexity: meanExp(uni.map((x) => x[k - 1])),
      };
      if (t.kind === "analogy") p.target = k % 2 === 1;
      curve.push(p);
    }
    const result: TaskResult = {
      kind: t.kind,
      domain: t.domain,
      examples: s.length,
      perplexity: curve[n - 2].perplexity,
      unigram_perplexity: curve[n - 2].unigram_perplexity,
      token_perplexity: Math.exp(mean(nll.flat())),
      unigram_token_perplexity: Math.exp(mean(uni.flat())),
      curve,
      seconds: 0,
    };
    if (!options.scoreOnly) {
      const kept: RgbImage[] = [];
      let right = 0;
      const ps: number[] = [], copy: number[] = [], copyCodes: number[] = [];
      const alone: number[] = [], ceil: number[] = [];
      for (const [e, x] of s.entries()) {
        const samp = { ...sampling, seed: (sampling.seed ?? seed) + e };
        const prompt = codes[e].slice(0, n - 1), truth = x.images[n - 1];
        const [gen] = await lvm.decode(await lvm.completeCodes(prompt, samp));
        const [rebuilt] = await lvm.decode([codes[e][n - 1]]);
        ceil.push(psnr(rebuilt, truth));
        if (t.kind === "classes") {
          if (knn!.classify(gen) === x.label) right++;
        } else {
          ps.push(psnr(gen, truth));
          copy.push(psnr(x.images[n - 2], truth));
          const [copied] = await lvm.decode([codes[e][n - 2]]);
          copyCodes.push(psnr(copied, truth));
          if (t.kind === "analogy") {
            const [solo] = await lvm.decode(await lvm.completeCodes([codes[e][n - 2]], samp));
            alone.push(psnr(solo, truth));
          }
        }
        if (kept.length < keep) kept.push(paperStrip(x.images.slice(0, n - 1), gen, truth));
        say(`[evaluate] ${t.name}: generated ${e + 1}/${s.length}`);
      }
      strips[t.name] = kept;
      if (t.kind === "classes") {
        result.category = { accuracy: right / s.length, chance: 1 / 10, generated: s.length };
      } else {
        result.psnr = {
          model: mean(ps),
          copy: mean(copy),
          copy_is: t.kind === "analogy" ? "query" : "last frame",
          copy_codes: mean(copyCodes),
          ...(t.kind === "analogy" ? { no_examples: mean(alone) } : {}),
          tokenizer_ceiling: mean(ceil),
        };
      }
    }
    result.seconds = +((performance.now() - t1) / 1000).toFixed(1);
    results[t.name] = result;
    say(`[evaluate] ${summarizeTask(t.name, result)} (${result.seconds} s)`);
  }

  // 5. Overall: mean over tasks; the curve at the prompt sizes every task has a target at.
  const all = Object.values(results);
  const overallCurve: CurvePoint[] = [];
  for (let k = 1; k < n; k++) {
    if (all.some((r) => r.kind === "analogy") && k % 2 === 0) continue;
    overallCurve.push({
      prompt_images: k,
      perplexity: mean(all.map((r) => r.curve[k - 1].perplexity)),
      unigram_perplexity: mean(all.map((r) => r.curve[k - 1].unigram_perplexity)),
    });
  }
  return {
    params: paramCount(lvm.model.config),
    tasks: results,
    overall: {
      perplexity: mean(all.map((r) => r.perplexity)),
      unigram_perplexity: mean(all.map((r) => r.unigram_perplexity)),
      curve: overallCurve,
    },
    classifier,
    settings: {
      examples: count,
      images_per_sentence: n,
      stride,
      seed,
      sampling: samplingLabel(sampling),
      unigram: options.unigramCounts ? options.unigramSource ?? "given counts" : "heldout",
    },
    strips,
    seconds: +((performance.now() - t0) / 1000).toFixed(1),
  };
}

/** One line per task: the metric beside its baselines. */
export function summarizeTask(name: string, r: TaskResult): string {
  const f = (x: number | undefined, d = 2) => x === undefined ? "n/a" : x.toFixed(d);
  let s = `perplexity ${f(r.perplexity)} (unigram ${f(r.unigram_perplexity)})`;
  if (r.category) {
    s += `; generated images in the prompt's class ${(100 * r.category.accuracy).toFixed(1)}% ` +
      `(chance ${(100 * r.category.chance).toFixed(0)}%)`;
  }
  if (r.psnr) {
    s += `; PSNR ${f(r.psnr.model, 1)} dB (copy ${r.psnr.copy_is} ${f(r.psnr.copy, 1)}` +
      (r.psnr.copy_codes === undefined ? "" : `, its codes ${f(r.psnr.copy_codes, 1)}`) +
      (r.psnr.no_examples === undefined ? "" : `, no examples ${f(r.psnr.no_examples, 1)}`) +
      `, VQGAN ceiling ${f(r.psnr.tokenizer_ceiling, 1)})`;
  }
  return `${name}: ${s}`;
}

// ---------------------------------------------------------------------------------- charts

/** What the in-context chart reads of an evaluation (the JSON report keeps it). */
export interface CurveSource {
  tasks: Record<string, { curve: CurvePoint[] }>;
  overall: { curve: CurvePoint[] };
}

/** What the scaling chart reads of each model's evaluation (the JSON report keeps it). */
export interface ScalingSource {
  params: number;
  tasks: Record<string, { perplexity: number }>;
  overall: { perplexity: number };
}

/** Ten distinct line colours (matplotlib's tab10), so eight tasks and the overall line differ. */

/** Log y only when the values span more than a factor of 10 (else the ticks are too sparse). */
function wideRange(series: ChartSeries[]): boolean {
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter((y) => y > 0);
  return ys.length > 0 && Math.max(...ys) / Math.min(...ys) > 10;
}

/**
 * The in-context chart of one model: per task, held-out perplexity of the next image against the
 * number of prompt images (analogies: target points only), and the overall mean.
 */
export function inContextChart(
  e: CurveSource,
  title = "in-context: held-out perplexity",
): ChartOptions {
  const series: ChartSeries[] = Object.entries(e.tasks).map(([name, r], i) => ({
    name,
    points: r.curve.filter((p) => p.target !== false).map((p) => [p.prompt_images, p.perplexity]),
    color: CHART_COLORS[i % CHART_COLORS.length],
    markers: true,
  }));
  series.push({
    name: "overall",
    points: e.overall.curve.map((p) => [p.prompt_images, p.perplexity]),
    color: [0, 0, 0],
    markers: true,
  });
  return {
    series,
    title,
    xLabel: "prompt images",
    yLabel: "perplexity",
    logY: wideRange(series),
    width: 720,
    height: 440,
  };
}

/** The scaling chart: per task, held-out perplexity against parameter count (millions). */
export function scalingChart(
  models: { name: string; evaluation: ScalingSource }[],
): ChartOptions {
  const sorted = [...models].sort((a, b) => a.evaluation.params - b.evaluation.params);
  const names = Object.keys(sorted[0]?.evaluation.tasks ?? {});
  const series: ChartSeries[] = names.map((name, i) => ({
    name,
    points: sorted.map((
      m,
    ) => [m.evaluation.params / 1e6, m.evaluation.tasks[name]?.perplexity ?? NaN]),
    color: CHART_COLORS[i % CHART_COLORS.length],
    markers: true,
  }));
  series.push({
    name: "overall",
    points: sorted.map((m) => [m.evaluation.params / 1e6, m.evaluation.overall.perplexity]),
    color: [0, 0, 0],
    markers: true,
  });
  return {
    series,
    title: "scaling: held-out perplexity",
    xLabel: "parameters (millions)",
    yLabel: "perplexity",
    logY: wideRange(series),
    width: 720,
    height: 440,
  };
}
