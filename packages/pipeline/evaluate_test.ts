import { makeImage, renderChart, type RgbImage } from "@lvm/image";
import { getGpu } from "@lvm/gpu";
import { createTokenizer, initVqganWeights, presetConfig } from "@lvm/tokenizer";
import { Llama, makeConfig } from "@lvm/transformer";
import { assertEquals } from "@lvm/util/testing";
import {
  enlarge,
  evaluateLvm,
  type HeldoutImages,
  inContextChart,
  KnnClassifier,
  paperStrip,
  psnr,
  scalingChart,
} from "./evaluate.ts";
import { LvmPipeline } from "./pipeline.ts";

/** A 28x28 "digit" of class c: a bright bar at a class-dependent place, plus seeded noise. */
function digit(c: number, seed: number): RgbImage {
  const im = makeImage(28, 28);
  let s = seed * 7919 + c * 104729 + 1;
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      s = (s * 1103515245 + 12345) % 2147483648;
      const on = Math.abs(x - (2 + 2.5 * c)) < 2 ? 0.9 : 0;
      const v = on + 0.1 * (s / 2147483648);
      for (let ch = 0; ch < 3; ch++) im.data[ch * 784 + y * 28 + x] = v;
    }
  }
  return im;
}

/** A 40x30 colour frame: a square at x = t. */
function frame(t: number): RgbImage {
  const im = makeImage(40, 30);
  for (let y = 10; y < 20; y++) {
    for (let x = t; x < t + 8 && x < 40; x++) {
      im.data[y * 40 + x] = 1;
      im.data[1200 + y * 40 + x] = 0.5;
    }
  }
  return im;
}

function heldout(): HeldoutImages {
  const byClass = (n: number, off: number) =>
    Array.from({ length: 10 }, (_, c) => Array.from({ length: n }, (_, i) => digit(c, off + i)));
  return {
    digits: byClass(4, 100),
    trainDigits: byClass(3, 0),
    videos: [Array.from({ length: 12 }, (_, t) => frame(2 * t))],
    photos: [frame(3), frame(9)],
  };
}

Deno.test("psnr(), paperStrip(), enlarge(), KnnClassifier", async (t) => {
  await t.step("psnr: equal images 99 dB, a 0.1 offset 20 dB", () => {
    const a = makeImage(4, 3, new Float32Array(36).fill(0.5));
    assertEquals(psnr(a, a), 99);
    const b = makeImage(4, 3, new Float32Array(36).fill(0.6));
    assertEquals(Math.round(psnr(a, b) * 1000) / 1000, 20);
  });
  await t.step(
    "paperStrip: 2-pixel borders, 2-pixel gaps, the generated image framed in red",
    () => {
      const im = makeImage(5, 7, new Float32Array(105).fill(0.5));
      const s = paperStrip([im, im, im], im, im);
      assertEquals([s.width, s.height], [5 * 9 + 4 * 2, 11]);
      const P = s.width * s.height, x0 = 3 * (9 + 2); // the 4th cell's top-left border pixel
      assertEquals([s.data[x0], s.data[P + x0], s.data[2 * P + x0]].map((v) => +v.toFixed(2)), [
        0.9,
        0.1,
        0.1,
      ]);
    },
  );
  await t.step("enlarge: each pixel becomes a k x k block", () => {
    const im = makeImage(2, 1, new Float32Array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]));
    const big = enlarge(im, 3);
    assertEquals([big.width, big.height], [6, 3]);
    assertEquals(Array.from(big.data.subarray(18, 24)).map((v) => +v.toFixed(1)), [
      0.3,
      0.3,
      0.3,
      0.4,
      0.4,
      0.4,
    ]);
  });
  await t.step("k-NN: separable classes are classified right", () => {
    const data = heldout();
    const knn = new KnnClassifier(data.trainDigits, 32, 3);
    assertEquals(knn.size, 30);
    const right = data.digits.flatMap((d, c) => d.map((im) => knn.classify(im) === c));
    assertEquals(right.every((r) => r), true);
  });
});

Deno.test("evaluateLvm() on a random tiny tokenizer and model", async () => {
  const vq = { ...presetConfig("tiny"), numEmbeddings: 64 }; // 32x32 -> 8x8 = 64 codes
  const tokenizer = await createTokenizer(vq, initVqganWeights(vq, 1));
  const config = makeConfig({
    hidden: 32,
    layers: 1,
    heads: 2,
    ffn: 64,
    vocab: 64,
    maxPositions: 256,
  });
  const lvm = new LvmPipeline({
    tokenizer,
    model: Llama.init(await getGpu(), config, { seed: 1 }),
  });
  try {
    const opts = {
      tasks: ["classes", "invert", "rotation", "colorization", "sequence"],
      examples: 2,
      imagesPerSentence: 4,
      stride: 2,
      seed: 3,
      knnK: 3,
    };
    const e = await evaluateLvm(lvm, heldout(), opts);
    assertEquals(Object.keys(e.tasks), opts.tasks);
    assertEquals(e.params > 0, true);
    for (const r of Object.values(e.tasks)) {
      assertEquals(r.examples, 2);
      assertEquals(r.curve.map((p) => p.prompt_images), [1, 2, 3]);
      // A random model is near uniform over the 64-id vocabulary.
      assertEquals(r.perplexity > 20 && r.perplexity < 200, true);
      assertEquals(r.unigram_perplexity >= 1 && r.unigram_perplexity <= 64, true);
    }
    const inv = e.tasks.invert;
    assertEquals(inv.curve.map((p) => p.target), [true, false, true]);
    for (const k of ["model", "copy", "copy_codes", "no_examples", "tokenizer_ceiling"] as const) {
      assertEquals(Number.isFinite(inv.psnr![k]), true);
    }
    assertEquals(e.tasks.sequence.psnr!.copy_is, "last frame");
    assertEquals(e.tasks.sequence.psnr!.no_examples, undefined);
    // The copy through the tokenizer is its own figure (a decoded image), not the plain copy.
    assertEquals(Number.isFinite(e.tasks.sequence.psnr!.copy_codes), true);
    assertEquals(e.tasks.sequence.psnr!.copy_codes !== e.tasks.sequence.psnr!.copy, true);
    const cat = e.tasks.classes.category!;
    assertEquals(cat.accuracy >= 0 && cat.accuracy <= 1 && cat.chance === 0.1, true);
    assertEquals(e.classifier!.heldout_accuracy, 1);
    assertEquals(e.overall.curve.map((p) => p.prompt_images), [1, 3]);
    assertEquals(e.strips.invert.length, 2);
    assertEquals(e.strips.invert[0].width, 5 * 36 + 4 * 2); // 3 prompt, generated, truth
    assertEquals(e.settings.sampling, "greedy");
    assertEquals(e.settings.unigram, "heldout");

    // The same seed draws the same prompts and generates the same images.
    const again = await evaluateLvm(lvm, heldout(), { ...opts, tasks: ["invert"], strips: 0 });
    assertEquals(again.tasks.invert.psnr, inv.psnr);
    assertEquals(again.tasks.invert.perplexity, inv.perplexity);

    // Charts render.
    const chart = renderChart(inContextChart(e));
    assertEquals([chart.width, chart.height], [720, 440]);
    const big = { ...e, params: 2 * e.params };
    renderChart(scalingChart([{ name: "a", evaluation: e }, { name: "b", evaluation: big }]));
  } finally {
    lvm.release();
  }
});
