/**
 * VQGAN tokenizer kernels of @lvm/kernels at the open-muse VQGAN's sizes (256x256 input, channels
 * 128/256/256/512/768, 16x16x64 latents, 8192 codes): conv2d 3x3 at the heaviest layers (forward,
 * the downsample, and one backward), GroupNorm(32)+SiLU, nearest upsample and the codebook search.
 * Conv napkin math: 2 * Cin * Cout * KH * KW * Ho * Wo FLOPs; the whole VQGAN is ~0.6 TFLOP per image
 * encoded and decoded, most of it in the 3x3 convs at 256x256 and 128x128.
 * @module
 */
import {
  conv2d,
  conv2dBackward,
  conv2dTuning,
  Conv2dWeightCache,
  groupNorm,
  groupNormBackward,
  upsampleNearest2x,
  vqNearest,
} from "@lvm/kernels";
import { type Gpu, type Tensor } from "@lvm/gpu";
import { randu } from "@lvm/util/testing";
import type { BenchCase } from "./_harness.ts";

let held: Tensor[] = [];
const keep = <T extends Tensor>(t: T): T => (held.push(t), t);
const teardown = () => {
  held.forEach((t) => t.release());
  held = [];
};
const rand = (gpu: Gpu, shape: number[], seed: number, lo = -1, hi = 1) =>
  keep(gpu.upload(randu(shape.reduce((a, b) => a * b, 1), seed, lo, hi), shape));
const release = (r: Tensor | null | (Tensor | null)[] | Record<string, Tensor | null>) => {
  const ts = r instanceof Array ? r : r && "buffer" in r ? [r as Tensor] : Object.values(r ?? {});
  ts.forEach((t) => t?.release());
};

/**
 * A 3x3 conv case: B=1, Cin -> Cout at HxW (stride 2 = the downsample's asymmetric padding);
 * `cached`: the staged (or Winograd-transformed) weights kept across calls, as a loaded tokenizer
 * keeps them.
 */
function convCase(Cin: number, Cout: number, H: number, stride = 1, cached = false): BenchCase {
  const Ho = stride === 1 ? H : H / 2;
  const opts = stride === 1 ? { pad: 1 } : { stride: 2, pad: [0, 1, 0, 1] as const };
  let weights: Conv2dWeightCache | undefined, freeWeights = () => {};
  return {
    name: (stride === 1 ? "conv2d 3x3" : "conv2d 3x3 s2") + (cached ? " cached" : ""),
    shape: `${Cin}->${Cout} ${H}x${H}`,
    flops: 2 * Cin * Cout * 9 * Ho * Ho,
    note: (stride === 1 ? "B=1, pad 1, bias" : "B=1, pad (0,1,0,1), bias") +
      (cached ? ", weights cached (Conv2dWeightCache)" : ""),
    reps: H >= 128 ? 2 : 4,
    setup: (gpu) => {
      const x = rand(gpu, [1, Cin, H, H], 1);
      const w = rand(gpu, [Cout, Cin, 3, 3], 2, -0.05, 0.05);
      const b = rand(gpu, [Cout], 3);
      weights = cached ? new Conv2dWeightCache() : undefined;
      freeWeights = () => weights?.release(gpu);
      return () => conv2d(gpu, x, w, b, { ...opts, weights }).release();
    },
    teardown: () => {
      teardown();
      freeWeights();
      weights = undefined;
    },
  };
}

/** Tokenizer kernels. */
export const benches: BenchCase[] = [
  convCase(128, 128, 256),
  convCase(256, 256, 128),
  convCase(512, 512, 32),
  convCase(768, 768, 16),
  convCase(768, 768, 16, 1, true),
  convCase(128, 128, 256, 2),
  {
    name: "conv2d 3x3 backward",
    shape: "256->256 32x32",
    flops: 2 * 2 * 256 * 256 * 9 * 32 * 32,
    note: "dx + dW + dbias, B=1 (2x the forward's FLOPs)",
    setup: (gpu) => {
      const x = rand(gpu, [1, 256, 32, 32], 4);
      const w = rand(gpu, [256, 256, 3, 3], 5, -0.05, 0.05);
      const dy = rand(gpu, [1, 256, 32, 32], 6);
      return () =>
        release(conv2dBackward(gpu, x, w, dy, { pad: 1 }) as unknown as Record<string, Tensor>);
    },
    teardown,
  },
  {
    // The same backward as implicit GEMMs (conv2dTuning.gemmBackward: the gpu kind's default):
    // tiled stages in workgroup memory; slow on lavapipe, where barriers are emulated.
    name: "conv2d 3x3 backward gemm",
    shape: "256->256 32x32",
    flops: 2 * 2 * 256 * 256 * 9 * 32 * 32,
    note: "dx + dW (split-K) + dbias as implicit GEMMs, B=1",
    reps: 2,
    setup: (gpu) => {
      const x = rand(gpu, [1, 256, 32, 32], 4);
      const w = rand(gpu, [256, 256, 3, 3], 5, -0.05, 0.05);
      const dy = rand(gpu, [1, 256, 32, 32], 6);
      return () => {
        conv2dTuning.gemmBackward = true;
        try {
          release(conv2dBackward(gpu, x, w, dy, { pad: 1 }) as unknown as Record<string, Tensor>);
        } finally {
          conv2dTuning.gemmBackward = null;
        }
      };
    },
    teardown,
  },
  {
    name: "groupnorm+silu",
    shape: "1x128x256x256",
    bytes: 3 * 4 * 128 * 256 * 256,
    note: "32 groups; stats pass reads x (one-pass Welford), apply pass reads x and writes y",
    setup: (gpu) => {
      const x = rand(gpu, [1, 128, 256, 256], 7);
      const g = rand(gpu, [128], 8), b = rand(gpu, [128], 9);
      return () =>
        release(
          groupNorm(gpu, x, g, b, 32, 1e-6, { silu: true }) as unknown as Record<string, Tensor>,
        );
    },
    teardown,
  },
  {
    name: "groupnorm+silu bwd",
    shape: "1x128x256x256",
    bytes: 4 * 128 * 256 * 256 * 5,
    note: "sums pass reads x, dy; dx pass reads x, dy, writes dx",
    reps: 3,
    setup: (gpu) => {
      const x = rand(gpu, [1, 128, 256, 256], 10);
      const dy = rand(gpu, [1, 128, 256, 256], 11);
      const g = rand(gpu, [128], 12), b = rand(gpu, [128], 13);
      const f = groupNorm(gpu, x, g, b, 32, 1e-6, { silu: true });
      keep(f.y), keep(f.mean), keep(f.rstd);
      return () =>
        release(
          groupNormBackward(gpu, x, g, f.mean, f.rstd, dy, {
            silu: true,
            beta: b,
          }) as unknown as Record<
            string,
            Tensor
          >,
        );
    },
    teardown,
  },
  {
    name: "upsample nearest 2x",
    shape: "1x256x128x128",
    bytes: 4 * 256 * 128 * 128 * 5,
    note: "reads 4 MiElem, writes 16",
    setup: (gpu) => {
      const x = rand(gpu, [1, 256, 128, 128], 14);
      return () => upsampleNearest2x(gpu, x).release();
    },
    teardown,
  },
  {
    name: "vqNearest",
    shape: "256x64 vs 8192",
    flops: 2 * 256 * 8192 * 64,
    items: 256,
    unit: "tokens",
    note: "one image's 16x16 latents against the codebook",
    setup: (gpu) => {
      const z = rand(gpu, [256, 64], 15);
      const cb = rand(gpu, [8192, 64], 16);
      return () => release(vqNearest(gpu, z, cb) as unknown as Record<string, Tensor>);
    },
    teardown,
  },
];
