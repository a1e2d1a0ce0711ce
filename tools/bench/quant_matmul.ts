/**
 * Block-quantized Linear benchmarks (@lvm/kernels' linearQ) beside the f32/f16 `linear` on the same
 * shapes: decode's matrix-vector product through a 4096x4096 weight (one token; memory bound on a
 * GPU, dequantization bound on llvmpipe) and a prefill chunk (512 tokens). Shapes are "MxKxN"
 * (x (M,K), W [N,K]). f16 "packed" is the texture copy a DecodeSession makes of small models;
 * "unpacked" is what a model over 2 GiB (the 7B) runs. `deno task bench --filter linearQ`.
 * @module
 */
import type { Gpu, Tensor } from "@lvm/gpu";
import { linear, linearQ, type PackedWeight, packWeight, QuantWeight } from "@lvm/kernels";
import type { QuantType } from "@lvm/weights";
import { randu } from "@lvm/util/testing";
import type { BenchCase } from "./_harness.ts";

type Weight = "f32" | "f16" | QuantType;

function qCase(M: number, K: number, N: number, w: Weight, per: number, packed = false): BenchCase {
  let tensors: Tensor[] = [];
  let qw: QuantWeight | null = null;
  let pw: PackedWeight | null = null;
  const perWeight = { f32: 4, f16: 2, Q8_0: 34 / 32, Q4_0: 18 / 32 }[w];
  const wBytes = K * N * perWeight;
  const flops = 2 * M * K * N;
  const quant = w === "Q8_0" || w === "Q4_0";
  return {
    name: quant ? "linearQ" : "linearQ[ref]",
    shape: `${M}x${K}x${N} ${w}${packed ? " packed" : quant ? "" : " unpacked"}`,
    per,
    flops: flops * per,
    bytes: M <= 4 ? wBytes * per : undefined,
    note: `W ${(wBytes / 2 ** 20).toFixed(1)} MiB, 2MKN = ${(flops / 1e9).toFixed(2)} GFLOP`,
    setup(gpu: Gpu) {
      const x = gpu.upload(randu(M * K, 1), [M, K]);
      const out = gpu.empty([M, N]);
      const values = randu(N * K, 2, -0.05, 0.05);
      tensors = [x, out];
      let run: () => void;
      if (quant) {
        const W = qw = QuantWeight.fromF32(gpu, w, [N, K], values);
        run = () => linearQ(gpu, x, W, { out });
      } else {
        const W = gpu.upload(values, [N, K], w);
        tensors.push(W);
        const b = packed ? (pw = packWeight(gpu, W, { transB: true })) : W;
        run = () => linear(gpu, x, b, undefined, out);
      }
      return () => {
        for (let i = 0; i < per; i++) run();
      };
    },
    teardown() {
      qw?.release();
      pw?.release();
      tensors.forEach((t) => t.release());
    },
  };
}

/** The cases, in the order they print. */
export const benches: BenchCase[] = [
  // Decode: one token.
  qCase(1, 4096, 4096, "Q4_0", 8),
  qCase(1, 4096, 4096, "Q8_0", 8),
  qCase(1, 4096, 4096, "f16", 8, true),
  qCase(1, 4096, 4096, "f16", 2),
  qCase(1, 4096, 4096, "f32", 8, true),
  // Prefill: 512 tokens through the 7B's attention projection shape.
  qCase(512, 4096, 4096, "Q4_0", 1),
  qCase(512, 4096, 4096, "Q8_0", 1),
  qCase(512, 4096, 4096, "f16", 1, true),
  qCase(512, 4096, 4096, "f32", 1),
];
