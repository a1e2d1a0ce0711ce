/**
 * The README's main command, `deno task demo`, end to end in its `--quick` form: every stage runs
 * (tokenizer, dataset, model, eval, image completion) and the result strip is a real PNG of the
 * prompt (4 frames) plus the generated frame.
 */
import { loadImage } from "@lvm/image/fs";
import { join } from "node:path";

Deno.test("deno task demo --quick", async () => {
  const out = await Deno.makeTempDir({ prefix: "lvm-demo-" });
  try {
    const main = new URL("../apps/demo/main.ts", import.meta.url).pathname;
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main, "--quick", "--out", out],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(r.stderr);
    if (!r.success) throw new Error(`demo exited ${r.code}:\n${stderr.slice(-3000)}`);
    for (const stage of ["train tokenizer", "train dataset", "train model", "train eval"]) {
      if (!stderr.includes(`== ${stage}: done`)) throw new Error(`stage "${stage}" did not finish`);
    }
    if (!/held-out PSNR [\d.]+ dB/.test(stderr)) throw new Error("no held-out PSNR reported");
    const stdout = new TextDecoder().decode(r.stdout);
    if (
      !/next frame: \d+\/64 generated codes equal the true frame's codes; PSNR [\d.]+ dB/.test(
        stdout,
      )
    ) {
      throw new Error(`no next-frame comparison reported:\n${stdout}`);
    }
    const strip = await loadImage(join(out, "result", "strip.png"));
    const next = await loadImage(join(out, "result", "next-1.png"));
    if (next.width !== 32 || next.height !== 32) {
      throw new Error(`next-1.png is ${next.width}x${next.height}, expected 32x32`);
    }
    // 4 prompt frames + 1 generated, 32 px each, 2 px gaps.
    if (strip.width !== 5 * 32 + 4 * 2 || strip.height !== 32) {
      throw new Error(`strip.png is ${strip.width}x${strip.height}, expected 168x32`);
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

/**
 * `deno task demo --models DIR` on a models folder laid out as models/README.md says (a random
 * tiny tokenizer and LLaMA made here, the committed held-out examples, a two-model metrics.json):
 * one strip per task (7 prompt images, generated, truth), both charts, the report.
 */
Deno.test("deno task demo on shipped models (--models DIR)", async () => {
  const { getGpu } = await import("@lvm/gpu");
  const { initVqganWeights, presetConfig } = await import("@lvm/tokenizer");
  const { saveTokenizer } = await import("@lvm/tokenizer/fs");
  const { Llama, makeConfig } = await import("@lvm/transformer");
  const { saveLlama } = await import("@lvm/transformer/fs");
  const root = await Deno.makeTempDir({ prefix: "lvm-demo-shipped-" });
  try {
    const models = join(root, "models"), out = join(root, "out");
    const vq = { ...presetConfig("tiny"), numEmbeddings: 64 };
    await saveTokenizer(join(models, "tokenizer"), vq, initVqganWeights(vq, 1));
    const config = makeConfig({
      ...{ hidden: 32, layers: 1, heads: 2, ffn: 64 },
      ...{ vocab: 80, imageCodes: 64, maxPositions: 512 },
    });
    const m = Llama.init(await getGpu(), config, { seed: 1 });
    await saveLlama(m, join(models, "lvm"));
    m.release();
    const examples = new URL("../models/examples", import.meta.url).pathname;
    await Deno.symlink(examples, join(models, "examples"));
    const curve = [1, 3, 5, 7].map((k) => ({ prompt_images: k, perplexity: 80 - k }));
    const model = (label: string, params: number, ppl: number) => ({
      label,
      params,
      tasks: { classes: { perplexity: ppl, unigram_perplexity: 60, curve } },
      overall: { perplexity: ppl, unigram_perplexity: 60, curve },
    });
    await Deno.writeTextFile(
      join(models, "metrics.json"),
      JSON.stringify({ models: [model("xs", 1e6, 50), model("s", 3e6, 40)] }),
    );
    const main = new URL("../apps/demo/main.ts", import.meta.url).pathname;
    const t0 = performance.now();
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main, "--models", models, "--out", out],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const secs = (performance.now() - t0) / 1000;
    const stderr = new TextDecoder().decode(r.stderr);
    if (!r.success) throw new Error(`demo exited ${r.code}:\n${stderr.slice(-3000)}`);
    if (stderr.includes("not in")) throw new Error("the demo did not find the models");
    const shipped = join(out, "shipped");
    const tasks = ["classes-3", "classes-7", "invert", "flip", "rotation", "zoom", "edges"];
    for (const t of [...tasks, "colorization", "sequence"]) {
      const strip = await loadImage(join(shipped, "strips", `${t}.png`));
      // 7 prompt images + generated + truth, 36 px cells (2 px borders), 2 px gaps; 3x enlarged.
      if (strip.width !== 3 * (9 * 36 + 8 * 2) || strip.height !== 3 * 36) {
        throw new Error(`${t}.png is ${strip.width}x${strip.height}, expected 1020x108`);
      }
    }
    for (const c of ["in_context.png", "scaling.png"]) await loadImage(join(shipped, c));
    const report = JSON.parse(await Deno.readTextFile(join(shipped, "report.json")));
    if (Object.keys(report.tasks).length !== 9) throw new Error("report.json lacks tasks");
    const md = await Deno.readTextFile(join(shipped, "report.md"));
    if (!md.includes("| sequence | 7 |") || !md.includes("### s (3.00M parameters)")) {
      throw new Error(`report.md:\n${md}`);
    }
    if (secs > 60) throw new Error(`the demo took ${secs.toFixed(1)} s, over 60 s`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("deno task demo --help lists the modes", async () => {
  const main = new URL("../apps/demo/main.ts", import.meta.url).pathname;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", main, "--help"],
    stdout: "piped",
  }).output();
  const text = new TextDecoder().decode(r.stdout);
  for (const f of ["--models", "--quick", "--synthetic", "--train"]) {
    if (!text.includes(f)) throw new Error(`--help does not mention ${f}:\n${text}`);
  }
});
