/**
 * The models that ship in `models/` (models/README.md): they load through the pipeline API, they
 * are the trained ones (held-out prompts score far below a uniform guess over the codes, which a
 * random or truncated model cannot), one short greedy generation from a held-out prompt is a valid
 * image, and `infer complete` runs on a user's own image of another size (resized).
 */
import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import { resize, type RgbImage } from "@lvm/image";
import { listImages, loadImage, savePng } from "@lvm/image/fs";
import { loadPipeline } from "@lvm/pipeline/fs";
import { runApp } from "@lvm/cli/testing";
import { assert, assertEquals } from "@lvm/util/testing";

const MODELS = new URL("../models/", import.meta.url).pathname;
const TOKENIZER = join(MODELS, "tokenizer"), LVM = join(MODELS, "lvm");

async function examples(sub: string, prefix = ""): Promise<RgbImage[]> {
  const files = (await listImages(join(MODELS, "examples", sub)))
    .filter((f) => f.split(/[\\/]/).pop()!.startsWith(prefix));
  return await Promise.all(files.map((f) => loadImage(f)));
}

Deno.test("the shipped models", async (t) => {
  const lvm = await loadPipeline({ model: LVM, tokenizer: TOKENIZER, gpu: await getGpu() });
  const R = lvm.tokenizer.config.resolution;
  const T = lvm.tokenizer.tokensPerImage;
  const digits = (await examples("classes", "3_")).map((im) => resize(im, R, R));
  const frames = (await examples("sequence")).map((im) => resize(im, R, R));

  await t.step("load: a LLaMA over the tokenizer's codes", () => {
    assertEquals([R, T], [32, 64]);
    assertEquals(lvm.model.config.imageCodes, lvm.tokenizer.config.numEmbeddings);
    assert(lvm.model.config.vocab >= lvm.model.config.imageCodes);
  });

  await t.step("trained: held-out prompts score far below a uniform guess", async () => {
    const uniform = lvm.tokenizer.config.numEmbeddings; // 512
    const s = await lvm.score([digits.slice(0, 8), frames.slice(0, 8)]);
    for (const [i, e] of s.examples.entries()) {
      // Measured (models/README.md): ~55 on held-out class prompts, ~50-210 per task group.
      assert(e.perplexity < uniform / 2, `example ${i}: image perplexity ${e.perplexity}`);
    }
  });

  await t.step("one short greedy generation from a held-out prompt", async () => {
    const r = await lvm.complete(digits.slice(0, 7), { greedy: true });
    assertEquals(r.codes.length, 1);
    assertEquals(r.codes[0].length, T);
    assert(r.codes[0].every((c) => c >= 0 && c < lvm.tokenizer.config.numEmbeddings));
    assertEquals([r.images[0].width, r.images[0].height], [R, R]);
  });
  lvm.release();

  await t.step("infer complete on a user's own 48x40 images (resized)", async () => {
    const dir = await Deno.makeTempDir({ prefix: "lvm-shipped-" });
    try {
      const prompt: string[] = [];
      for (const [i, im] of frames.slice(0, 3).entries()) {
        prompt.push(join(dir, `frame${i}.png`));
        await savePng(prompt[i], resize(im, 48, 40));
      }
      const out = join(dir, "out");
      const r = await runApp(
        "infer",
        "complete",
        "--model",
        LVM,
        "--tokenizer",
        TOKENIZER,
        "--out",
        out,
        "--greedy",
        ...prompt,
      );
      assertEquals(r.code, 0, r.stderr.slice(-2000));
      const next = await loadImage(join(out, "next-1.png"));
      assertEquals([next.width, next.height], [R, R]);
      const codes = JSON.parse(await Deno.readTextFile(join(out, "codes.json")));
      assertEquals(codes.tokens.at(-1).length, T);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
});
