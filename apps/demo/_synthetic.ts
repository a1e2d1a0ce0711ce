/**
 * The synthetic demo (`deno task demo --quick`, and plain `deno task demo` until the shipped models
 * are in models/): the whole LVM pipeline at laptop scale on built-in data, composed from the
 * packages (the custom pipeline a user would write; the training stages are in _train.ts, the data
 * in _clips.ts):
 *
 * 1. writes synthetic "videos" (_clips.ts): 8 frames of 32x32, a coloured square moving one token
 *    cell to the right per frame;
 * 2. trains a tiny VQGAN on the frames (@lvm/train's Trainer + VqganTrainable; 32x32 -> 8x8 = 64
 *    codes per image, the `tiny` preset with 128 codes);
 * 3. tokenizes the clips into visual sentences of 8 frames (@lvm/sentence's buildDataset);
 * 4. trains a tiny LLaMA on the sentences (@lvm/train's Trainer, next-token prediction);
 * 5. evaluates it: loss, perplexity and the official image perplexity (@lvm/train);
 * 6. prompts it with the first 4 frames of an unseen clip and generates the next frame
 *    (@lvm/pipeline's complete), written as PNG next to a strip of prompt + generated.
 * @module
 */
import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import { hstack } from "@lvm/image";
import { loadImage, savePng } from "@lvm/image/fs";
import { loadPipeline } from "@lvm/pipeline/fs";
import { buildDataset } from "@lvm/sentence";
import { loadTokenizer } from "@lvm/tokenizer/fs";
import { loadLlama } from "@lvm/transformer/fs";
import * as train from "@lvm/train";
import { writeFileAtomic } from "@lvm/util/fs";
import { FRAMES, psnr, writeClips } from "./_clips.ts";
import { trainModel, trainTokenizer } from "./_train.ts";

/** Runs the synthetic demo into `out` (`q`: a few steps of each stage, a smoke test). */
export async function runSynthetic(out: string, q: boolean): Promise<void> {
  const tokDir = join(out, "tokenizer"),
    dataDir = join(out, "dataset"),
    runDir = join(out, "model");
  const log = (s: string) => console.error(s);
  /** Runs one stage between `== title` lines; a failure names the stage and exits 1. */
  async function stage<T>(title: string, run: () => Promise<T>): Promise<T> {
    log(`\n== ${title}`);
    const t0 = performance.now();
    try {
      const r = await run();
      log(`== ${title}: done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      return r;
    } catch (e) {
      log(`demo: "${title}" failed: ${e instanceof Error ? e.message : e}`);
      Deno.exit(1);
    }
  }

  const CLIPS = q ? 12 : 96;
  const { clips, heldout } = await writeClips(join(out, "frames"), CLIPS);
  log(
    `wrote ${CLIPS} training clips + 1 held-out clip of ${FRAMES} frames to ${join(out, "frames")}`,
  );
  const gpu = await getGpu();

  await stage("train tokenizer", () => trainTokenizer(gpu, clips, heldout, tokDir, q));
  await stage("train dataset", async () => {
    const tokenizer = await loadTokenizer(tokDir);
    const r = await buildDataset({
      kind: "sequence",
      inputs: clips,
      outDir: dataDir,
      tokenizer,
      imagesPerSentence: FRAMES,
      overwrite: true,
    }).finally(() => tokenizer.release());
    const c = r.index!.counts;
    log(`wrote ${dataDir}: ${c.sentences} sentences, ${c.images} images, ${c.tokens} tokens`);
  });
  const ckpt = await stage("train model", () => trainModel(gpu, dataDir, runDir, q));
  await stage("train eval", async () => {
    const model = await loadLlama(gpu, ckpt);
    try {
      const split = { split: "all", valFraction: 0.1 } as const;
      const loss = await train.evaluateLoss(model, dataDir, { ...split, seq: FRAMES * 64 });
      const image = await train.evaluateImagePerplexity(model, dataDir, split);
      console.log(
        `loss ${loss!.loss.toFixed(4)} · perplexity ${loss!.perplexity.toFixed(3)} over ${
          loss!.tokens
        } tokens; ` +
          `image_perplexity ${
            image?.image_perplexity.toFixed(3)
          } over ${image?.examples} sentences`,
      );
    } finally {
      model.release();
    }
  });
  const result = join(out, "result");
  const lvm = await loadPipeline({ model: ckpt, tokenizer: tokDir });
  const made = await stage("infer complete", async () => {
    const prompt = await Promise.all(
      [0, 1, 2, 3].map((f) => loadImage(join(heldout, `frame${f}.png`))),
    );
    const r = await lvm.complete(prompt, { greedy: true });
    await Deno.mkdir(result, { recursive: true });
    await savePng(join(result, "next-1.png"), r.images[0]);
    await savePng(join(result, "strip.png"), hstack([...prompt, ...r.images], 2));
    await writeFileAtomic(
      join(result, "codes.json"),
      JSON.stringify({ tokens: [[...r.codes[0]]] }) + "\n",
    );
    return r;
  });

  // How close the generated frame is to the true next frame: in codes (the model's own accuracy) and
  // in pixels, beside what the tokenizer alone reaches on that frame (the ceiling of any model here).
  const truth = await loadImage(join(heldout, "frame4.png"));
  const [trueCodes] = await lvm.encode([truth]);
  const [rebuilt] = await lvm.decode([trueCodes]);
  lvm.release();
  const codes = made.codes[0], same = codes.filter((id, i) => id === trueCodes[i]).length;
  console.log(
    `\nnext frame: ${same}/${codes.length} generated codes equal the true frame's codes; PSNR ${
      psnr(made.images[0], truth).toFixed(1)
    } dB to the true frame (the tokenizer's own reconstruction of it: ${
      psnr(rebuilt, truth).toFixed(1)
    } dB)`,
  );
  console.log(`demo finished: prompt + generated frame in ${join(result, "strip.png")}`);
  console.log(`the true next frame is ${join(heldout, "frame4.png")}`);
}
