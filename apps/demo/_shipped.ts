/**
 * The demo on the shipped models (models/README.md): loads `MODELS/tokenizer` and `MODELS/lvm`
 * through @lvm/pipeline, prompts the model with the held-out example images of `MODELS/examples/`
 * (one prompt per task, greedy), and writes under `OUT/`:
 *
 * - `strips/TASK.png`: the paper's layout, the prompt, the generated image framed in red, the truth
 *   (enlarged 3x);
 * - `in_context.png` and `scaling.png`: from the committed `MODELS/metrics.json` (the output of
 *   tools/shipped/evaluate.sh) when it is there; else the in-context chart of these prompts alone
 *   (perplexity of image k+1 given k, one scoring pass per prompt) and no scaling chart;
 * - `report.md` and `report.json`: per task the generated image's PSNR to the truth beside
 *   "copy the last prompt image", and the committed held-out metrics.
 * @module
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { RgbImage } from "@lvm/image";
import { listImages, loadImage, saveChart, savePng } from "@lvm/image/fs";
import {
  type CurvePoint,
  type CurveSource,
  enlarge,
  inContextChart,
  loadPipeline,
  paperStrip,
  psnr,
  scalingChart,
  type ScalingSource,
} from "@lvm/pipeline/fs";
import { imageKey, renderVariant, Variant } from "@lvm/sentence";
import { writeFileAtomic } from "@lvm/util/fs";

/** The shipped models' folder layout (relative to the models folder). */
export const SHIPPED = {
  tokenizer: "tokenizer",
  model: "lvm",
  examples: "examples",
  metrics: "metrics.json",
} as const;

/** Whether `dir` holds the shipped tokenizer and model. */
export function shippedModelsPresent(dir: string): boolean {
  return existsSync(join(dir, SHIPPED.tokenizer, "config.json")) &&
    existsSync(join(dir, SHIPPED.model, "config.json"));
}

/** One demo prompt: its images (the last one is the truth to generate). */
interface DemoTask {
  name: string;
  kind: "classes" | "analogy" | "sequence";
  images: RgbImage[];
}

/** The demo's prompts from the example folders (missing folders are skipped). */
async function demoTasks(dir: string, R: number): Promise<DemoTask[]> {
  const render = (im: RgbImage, v: number = Variant.original) =>
    renderVariant(im, imageKey(0, v), { resolution: R, seed: 0 });
  const load = async (sub: string, prefix = "") => {
    const d = join(dir, sub);
    if (!existsSync(d)) return [];
    const files = (await listImages(d)).filter((p) => p.split("/").at(-1)!.startsWith(prefix));
    return await Promise.all(files.map((p) => loadImage(p)));
  };
  const tasks: DemoTask[] = [];
  for (const c of ["3", "7"]) {
    const imgs = await load("classes", `${c}_`);
    if (imgs.length >= 2) {
      tasks.push({ name: `classes-${c}`, kind: "classes", images: imgs.map((im) => render(im)) });
    }
  }
  const pairs = (imgs: RgbImage[], v: number, targetFirst = false) =>
    imgs.flatMap((im) => targetFirst ? [render(im, v), render(im)] : [render(im), render(im, v)]);
  const digits = await load("analogies");
  if (digits.length >= 1) {
    for (
      const [name, v] of [
        ["invert", Variant.invert],
        ["flip", Variant.flipH],
        ["rotation", Variant.rot90],
        ["zoom", Variant.zoom2],
        ["edges", Variant.edges],
      ] as const
    ) tasks.push({ name, kind: "analogy", images: pairs(digits, v) });
  }
  const colour = await load("colorization");
  if (colour.length >= 1) {
    tasks.push({
      name: "colorization",
      kind: "analogy",
      images: pairs(colour, Variant.gray, true),
    });
  }
  const frames = await load("sequence");
  if (frames.length >= 2) {
    tasks.push({ name: "sequence", kind: "sequence", images: frames.map((im) => render(im)) });
  }
  return tasks;
}

/** What the demo reports per task. */
interface DemoResult {
  strip: string;
  prompt_images: number;
  /** PSNR (dB) of the generated image to the truth, and of the last prompt image to it. */
  psnr: number;
  copy_psnr: number;
  copy_is: string;
  /** exp(mean NLL) of the truth's codes given the prompt. */
  perplexity: number;
}

/** The committed evaluation (tools/shipped/evaluate.sh's JSON), as far as the demo reads it. */
interface Metrics {
  models: (ScalingSource & CurveSource & {
    label: string;
    tasks: Record<string, {
      perplexity: number;
      unigram_perplexity: number;
      category?: { accuracy: number; chance: number };
      psnr?: {
        model: number;
        copy: number;
        copy_codes?: number;
        no_examples?: number;
        tokenizer_ceiling: number;
      };
    }>;
  })[];
  settings?: unknown;
}

/** Runs the demo on the models in `models`, writing into `out`; returns the report's path. */
export async function runShipped(models: string, out: string): Promise<string> {
  const t0 = performance.now();
  const log = (s: string) => console.error(s);
  const tokDir = join(models, SHIPPED.tokenizer), modelDir = join(models, SHIPPED.model);
  log(`loading ${tokDir} and ${modelDir}`);
  const lvm = await loadPipeline({ model: modelDir, tokenizer: tokDir });
  const results: Record<string, DemoResult> = {};
  const curves: Record<string, { curve: CurvePoint[] }> = {};
  try {
    const R = lvm.tokenizer.resolution;
    const tasks = await demoTasks(join(models, SHIPPED.examples), R);
    if (!tasks.length) throw new Error(`no example images in ${join(models, SHIPPED.examples)}`);
    await Deno.mkdir(join(out, "strips"), { recursive: true });
    for (const t of tasks) {
      const prompt = t.images.slice(0, -1), truth = t.images.at(-1)!;
      const codes = await lvm.encode(t.images);
      const gen = await lvm.decode(await lvm.completeCodes(codes.slice(0, -1), { greedy: true }));
      const strip = join(out, "strips", `${t.name}.png`);
      await savePng(strip, enlarge(paperStrip(prompt, gen[0], truth), 3));
      // One scoring pass: the perplexity of every image given the ones before it.
      const T = codes[0].length;
      const { logprobs } = await lvm.scoreTokens(codes.flatMap((c) => Array.from(c)));
      const curve: CurvePoint[] = [];
      for (let m = 1; m < codes.length; m++) {
        const nll = -logprobs.slice(m * T - 1, (m + 1) * T - 1).reduce((a, b) => a + b, 0) / T;
        const p: CurvePoint = {
          prompt_images: m,
          perplexity: Math.exp(nll),
          unigram_perplexity: NaN,
        };
        if (t.kind === "analogy") p.target = m % 2 === 1;
        curve.push(p);
      }
      curves[t.name] = { curve };
      results[t.name] = {
        strip,
        prompt_images: prompt.length,
        psnr: +psnr(gen[0], truth).toFixed(2),
        copy_psnr: +psnr(prompt.at(-1)!, truth).toFixed(2),
        copy_is: t.kind === "sequence"
          ? "last frame"
          : t.kind === "analogy"
          ? "query"
          : "last digit",
        perplexity: +curve.at(-1)!.perplexity.toFixed(3),
      };
      log(
        `${t.name}: ${prompt.length} prompt images -> generated: PSNR ${
          results[t.name].psnr
        } dB to the truth (copy the ${results[t.name].copy_is}: ${
          results[t.name].copy_psnr
        } dB); perplexity of the truth ${results[t.name].perplexity}`,
      );
    }
  } finally {
    lvm.release();
  }

  // Charts: from the committed evaluation when there is one, else from these prompts.
  const metricsPath = join(models, SHIPPED.metrics);
  const metrics: Metrics | null = existsSync(metricsPath)
    ? JSON.parse(await Deno.readTextFile(metricsPath))
    : null;
  const charts: Record<string, string> = {};
  charts.in_context = join(out, "in_context.png");
  if (metrics?.models.length) {
    const big = metrics.models.reduce((a, b) => b.params > a.params ? b : a);
    await saveChart(
      charts.in_context,
      inContextChart(big, `in-context: ${big.label} (held-out)`),
    );
    if (metrics.models.length > 1) {
      charts.scaling = join(out, "scaling.png");
      await saveChart(
        charts.scaling,
        scalingChart(metrics.models.map((m) => ({ name: m.label, evaluation: m }))),
      );
    }
  } else {
    // Overall: the mean at the prompt sizes every prompt has (analogies: their targets).
    const ks = new Set(Object.values(curves).flatMap((c) => c.curve.map((p) => p.prompt_images)));
    const overall: CurvePoint[] = [];
    for (const k of [...ks].sort((a, b) => a - b)) {
      const at = Object.values(curves).map((c) => c.curve.find((p) => p.prompt_images === k));
      if (at.some((p) => !p || p.target === false)) continue;
      const ps = at.map((p) => p!.perplexity);
      overall.push({
        prompt_images: k,
        perplexity: ps.reduce((a, b) => a + b, 0) / ps.length,
        unigram_perplexity: NaN,
      });
    }
    await saveChart(
      charts.in_context,
      inContextChart({ tasks: curves, overall: { curve: overall } }, "in-context: demo prompts"),
    );
  }

  const seconds = +((performance.now() - t0) / 1000).toFixed(1);
  const report = { models, tasks: results, charts, metrics: metrics ? metricsPath : null, seconds };
  await writeFileAtomic(join(out, "report.json"), JSON.stringify(report, null, 2) + "\n");
  const md = [
    `# LVM demo on the shipped models`,
    ``,
    `Models: \`${tokDir}\` (tokenizer), \`${modelDir}\` (LVM). Greedy generation; ${seconds} s.`,
    ``,
    `| task | prompt images | strip | PSNR generated (dB) | PSNR copy (dB) | perplexity of the truth |`,
    `|---|---|---|---|---|---|`,
    ...Object.entries(results).map(([n, r]) =>
      `| ${n} | ${r.prompt_images} | ${r.strip} | ${r.psnr} | ${r.copy_psnr} (${r.copy_is}) | ${r.perplexity} |`
    ),
    ``,
    `Charts: ${Object.values(charts).join(", ")}.`,
    ``,
  ];
  if (metrics) {
    md.push(`## Held-out metrics (${metricsPath})`, ``);
    for (const m of metrics.models) {
      md.push(`### ${m.label} (${(m.params / 1e6).toFixed(2)}M parameters)`, ``);
      md.push(`| task | perplexity (unigram) | metric (baselines) |`, `|---|---|---|`);
      for (const [n, r] of Object.entries(m.tasks)) {
        const metric = r.category
          ? `${(100 * r.category.accuracy).toFixed(1)}% in class (chance ${
            100 * r.category.chance
          }%)`
          : r.psnr
          ? `${r.psnr.model.toFixed(1)} dB (copy ${r.psnr.copy.toFixed(1)}${
            r.psnr.copy_codes === undefined ? "" : `, copy's codes ${r.psnr.copy_codes.toFixed(1)}`
          }${
            r.psnr.no_examples === undefined ? "" : `, no examples ${r.psnr.no_examples.toFixed(1)}`
          }, VQGAN ceiling ${r.psnr.tokenizer_ceiling.toFixed(1)})`
          : "";
        md.push(
          `| ${n} | ${r.perplexity.toFixed(2)} (${r.unigram_perplexity.toFixed(2)}) | ${metric} |`,
        );
      }
      md.push(``);
    }
  } else {
    md.push(`(No ${metricsPath}: run tools/shipped/evaluate.sh for the held-out metrics.)`, ``);
  }
  await writeFileAtomic(join(out, "report.md"), md.join("\n"));
  return join(out, "report.md");
}
