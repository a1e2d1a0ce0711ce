import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import { makeImage } from "@lvm/image";
import { loadImage, savePng } from "@lvm/image/fs";
import { initVqganWeights, presetConfig } from "@lvm/tokenizer";
import { saveTokenizer } from "@lvm/tokenizer/fs";
import { Llama, makeConfig } from "@lvm/transformer";
import { saveLlama } from "@lvm/transformer/fs";
import { assertEquals } from "@lvm/util/testing";
import { main } from "./main.ts";
import type { EvaluationReport } from "./evaluate.ts";

/** A 28x28 gray "digit" of class c (a bar whose place depends on c). */
function digit(c: number, i: number) {
  const im = makeImage(28, 28);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const v = Math.abs(x - (2 + 2.5 * c)) < 2 ? 0.9 : 0.05 * ((x * 7 + y * 3 + i) % 5);
      for (let ch = 0; ch < 3; ch++) im.data[ch * 784 + y * 28 + x] = v;
    }
  }
  return im;
}

/** split.sh's layout with a few images: mnist/C, video/NAME, photos, for heldout and train. */
async function writeSplit(root: string): Promise<void> {
  for (const [split, n] of [["heldout", 4], ["train", 3]] as const) {
    for (let c = 0; c < 10; c++) {
      for (let i = 0; i < n; i++) {
        await Deno.mkdir(join(root, split, "mnist", String(c)), { recursive: true });
        await savePng(join(root, split, "mnist", String(c), `${i}.png`), digit(c, i));
      }
    }
  }
  await Deno.mkdir(join(root, "heldout", "video", "clip"), { recursive: true });
  await Deno.mkdir(join(root, "heldout", "photos"), { recursive: true });
  for (let t = 0; t < 8; t++) {
    const im = makeImage(40, 30);
    for (let y = 10; y < 20; y++) for (let x = 3 * t; x < 3 * t + 8; x++) im.data[y * 40 + x] = 1;
    await savePng(join(root, "heldout", "video", "clip", `${String(t).padStart(3, "0")}.png`), im);
    if (t < 2) await savePng(join(root, "heldout", "photos", `p${t}.png`), im);
  }
}

/** A random `tiny` tokenizer (64 codes) and two random models of different sizes. */
async function writeModels(root: string): Promise<void> {
  const vq = { ...presetConfig("tiny"), numEmbeddings: 64 };
  await saveTokenizer(join(root, "tok"), vq, initVqganWeights(vq, 1));
  for (const [name, hidden] of [["small", 16], ["big", 32]] as const) {
    const config = makeConfig({
      hidden,
      layers: 1,
      heads: 2,
      ffn: 2 * hidden,
      vocab: 80,
      imageCodes: 64,
      maxPositions: 256,
    });
    const m = Llama.init(await getGpu(), config, { seed: 1 });
    await saveLlama(m, join(root, name));
    m.release();
  }
}

Deno.test("deno task train evaluate", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "lvm-evaluate-" });
  try {
    await writeSplit(join(root, "data"));
    await writeModels(root);
    await t.step("two models: JSON, in-context and scaling charts, strips", async () => {
      const json = join(root, "out", "metrics.json"), charts = join(root, "out", "charts");
      const code = await main([
        "evaluate",
        ...["--model", join(root, "small"), "--model", join(root, "big")],
        ...["--tokenizer", join(root, "tok"), "--heldout", join(root, "data", "heldout")],
        ...["--json", json, "--charts", charts, "--examples", "1", "--images", "4"],
        ...["--tasks", "classes,flip,colorization,sequence", "--strips", "1", "--quiet"],
      ]);
      assertEquals(code, 0);
      const r: EvaluationReport = JSON.parse(await Deno.readTextFile(json));
      assertEquals(r.models.map((m) => m.label), ["small", "big"]);
      assertEquals(r.models[0].params < r.models[1].params, true);
      assertEquals(Object.keys(r.models[1].tasks), ["classes", "flip", "colorization", "sequence"]);
      assertEquals(r.models[0].classifier!.train_images, 30);
      assertEquals(r.models[0].tasks.classes.curve.length, 3);
      assertEquals(typeof r.models[0].tasks.flip.psnr!.no_examples, "number");
      for (const f of ["in_context.png", "scaling.png", "strips/big/flip-0.png"]) {
        const im = await loadImage(join(charts, f));
        assertEquals(im.width > 0, true);
      }
      assertEquals(r.charts.strips.length, 8);
    });
    await t.step("--model is required (exit 2, a usage error)", async () => {
      const code = await main(["evaluate", "--tokenizer", "x", "--heldout", "y", "--json", "z"]);
      assertEquals(code, 2);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
