/**
 * What training needs from the VQGAN: the batch-size check against the adapter's storage-binding
 * limit, and that no per-batch tensor of a training step exceeds its estimate. (The training loop's
 * tests — loss falls, exact resume, dead-code restarts, fine-tuning — moved with the loop to
 * @lvm/train's vqgan_test.ts.)
 */
import { assert, assertStrictEquals, assertThrows } from "@lvm/util/testing";
import { Rng } from "@lvm/util";
import { getGpu } from "./_deps.ts";
import { presetConfig, VQGAN_PRESETS, type VqganConfig } from "./config.ts";
import { sampleBatch } from "./data.ts";
import {
  activationBytesPerImage,
  checkBatchFits,
  initVqganWeights,
  maxBatchFor,
  Vqgan,
} from "./model.ts";
import { releaseLoss, vqganLossAndGrads } from "./train.ts";
import { syntheticSources as sources, TINY_CONFIG as CONFIG } from "./testing.ts";

Deno.test("batch size against the storage-binding limit", async (t) => {
  const MiB = 2 ** 20;
  await t.step("lvm preset: the estimate, the largest batch, the error", () => {
    const lvm = presetConfig("lvm");
    // Level 0 of the decoder: its upsample conv reads 256 channels at 256x256 (+ padding slack).
    assertStrictEquals(activationBytesPerImage(lvm), 256 * 260 * 264 * 4);
    assertStrictEquals(maxBatchFor(lvm, 128 * MiB), 1); // the WebGPU default binding limit (lavapipe's)
    assertStrictEquals(maxBatchFor(lvm, 2 ** 31 - 1), 30);
    assertStrictEquals(maxBatchFor(lvm, 64 * MiB), 0);
    checkBatchFits(lvm, 1, 128 * MiB);
    assertThrows(
      () => checkBatchFits(lvm, 16, 128 * MiB, "--batch"),
      RangeError,
      /^--batch 16: at most 1 image of 256x256 per step fit this adapter \(its largest tensor takes 67\.0 MiB per image; one storage binding holds at most 128\.0 MiB\); use --batch 1 or less$/,
    );
    assertThrows(
      () => checkBatchFits(lvm, 1, 64 * MiB),
      Error,
      /at most 0 images of 256x256 per step fit/,
    );
  });
  // The estimate is only useful if no per-batch tensor of a real step is larger: record every
  // allocation of a training step (forward, backward, losses) of configs whose widest tensors sit at
  // different levels, and compare those that grow with the batch: (B,C,H,W) activations and their
  // gradients, (B*h*w, E) latent rows. (A conv's split weight-gradient partials, (slices, weight
  // size), do not grow with the batch; the largest, lvm's 768x768 3x3 conv, is one 21 MiB slice.)
  const cases: [string, VqganConfig][] = [
    ["tiny", presetConfig("tiny")],
    ["[1,2,1] x 32", {
      ...VQGAN_PRESETS.tiny,
      resolution: 32,
      hiddenChannels: 32,
      channelMult: [1, 2, 1],
    }],
    ["[2,1] x 16", { ...CONFIG, channelMult: [2, 1] }],
  ];
  for (const [label, config] of cases) {
    await t.step(
      `${label}: every per-batch tensor of a training step fits B x the estimate`,
      async () => {
        const gpu = await getGpu();
        const B = 2, R = config.resolution;
        const model = Vqgan.fromWeights(gpu, config, initVqganWeights(config, 1));
        const x = gpu.upload(sampleBatch(sources(), B, R, new Rng(1)), [B, 3, R, R]);
        const G = R / 2 ** (config.channelMult.length - 1);
        let largest = 0, seen = 0;
        const empty = gpu.empty;
        gpu.empty = (shape, dtype) => {
          const t = empty.call(gpu, shape, dtype);
          if (
            (shape.length === 4 && shape[0] === B) || (shape.length === 2 && shape[0] === B * G * G)
          ) {
            largest = Math.max(largest, t.size * (dtype === "f16" ? 2 : 4));
            seen++;
          }
          return t;
        };
        try {
          releaseLoss(vqganLossAndGrads(model, x));
          await gpu.sync();
        } finally {
          gpu.empty = empty;
        }
        const bound = B * activationBytesPerImage(config);
        assert(seen > 50, `${seen} per-batch tensors recorded`);
        assert(
          largest > 0 && largest <= bound,
          `${label}: largest tensor ${largest} B > bound ${bound} B`,
        );
        assert(
          largest > bound / 4,
          `${label}: the bound ${bound} B is loose (largest ${largest} B)`,
        );
        x.release();
        model.release();
      },
    );
  }
});
