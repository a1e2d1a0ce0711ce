/**
 * Matmul benchmarks: square f32 products, the 100m transformer's Linear shapes (forward and
 * backward), and decode's matrix-vector product with f32 and f16 weights. Shapes are "MxKxN".
 * tools/bench_torch.py has a case with the same name and shape for each, so `--torch` pairs them.
 *
 * Each timed run records `per` products before the one GPU sync the harness adds (the sync costs
 * ~11 ms on lavapipe, which would otherwise swamp the small shapes); flops count all of them, and
 * the harness reports `ms` per product (run time / per). The products' `per` gives a run ~0.2 s or
 * more of work on lavapipe, so the sync is a few percent of it: with 2 per run, 1024^3 read 55 GFLOP/s
 * where 8 per run (the kernel's throughput, as a model's back-to-back products see it) read 62-65
 * (`deno task bench --filter "matmul 1024x1024x1024" --rounds 2`, `per` edited between runs).
 * The notes give one product's napkin math.
 * @module
 */
import { type Gpu, type Tensor } from "@lvm/gpu";
import {
  linear,
  linearBackward,
  matmul,
  matmulTuning,
  type MatmulVariant,
  type PackedWeight,
  packWeight,
} from "@lvm/kernels";
import { randu } from "@lvm/util/testing";
import type { BenchCase } from "./_harness.ts";

const GF = (flops: number) => (flops / 1e9).toFixed(2);

interface Opts {
  /** Products recorded per timed run. */
  per: number;
  /** B is a Linear weight [N, K] (y = x W^T). */
  linear?: boolean;
  /** Weight stored as packed f16. */
  f16?: boolean;
  /** Pack the weight once ({@link packWeight}) as a model would. */
  packed?: boolean;
  /** Force a variant (ladder rows). */
  variant?: MatmulVariant;
  /** Force the tex tile. */
  tile?: [number, number];
  /** matmulTuning.padPitch for this case (default: the library's, on). */
  padPitch?: boolean;
  name?: string;
  suffix?: string;
}

function mmCase(M: number, K: number, N: number, o: Opts): BenchCase {
  let tensors: Tensor[] = [];
  let packed: PackedWeight | null = null;
  const wBytes = K * N * (o.f16 ? 2 : 4);
  const flops = 2 * M * K * N;
  const memBound = M <= 4;
  return {
    name: o.name ?? "matmul",
    shape: `${M}x${K}x${N}${o.suffix ?? ""}`,
    per: o.per,
    flops: flops * o.per,
    bytes: memBound ? wBytes * o.per : undefined,
    note: `2MKN = ${GF(flops)} GFLOP` +
      (memBound ? `, W ${(wBytes / 2 ** 20).toFixed(0)} MiB read once` : ""),
    setup(gpu: Gpu) {
      const x = gpu.upload(randu(M * K, 1), [M, K]);
      const w = gpu.upload(
        randu(K * N, 2, -0.05, 0.05),
        o.linear ? [N, K] : [K, N],
        o.f16 ? "f16" : "f32",
      );
      const out = gpu.empty([M, N]);
      tensors = [x, w, out];
      const b = o.packed ? (packed = packWeight(gpu, w, { transB: !!o.linear })) : w;
      return () => {
        matmulTuning.texTile = o.tile ?? null;
        matmulTuning.padPitch = o.padPitch ?? true;
        for (let i = 0; i < o.per; i++) {
          if (o.linear && !o.variant) linear(gpu, x, b, undefined, out);
          else matmul(gpu, x, b, { transB: o.linear, out, variant: o.variant });
        }
        matmulTuning.texTile = null;
        matmulTuning.padPitch = true;
      };
    },
    teardown() {
      packed?.release();
      tensors.forEach((t) => t.release());
    },
  };
}

function backwardCase(M: number, K: number, N: number, per: number): BenchCase {
  let tensors: Tensor[] = [];
  const flops = 4 * M * K * N;
  return {
    name: "linear_backward",
    shape: `${M}x${K}x${N}`,
    per,
    flops: flops * per,
    note: `dx = dy W and dW = dy^T x: 4MKN = ${GF(flops)} GFLOP`,
    setup(gpu: Gpu) {
      const x = gpu.upload(randu(M * K, 1), [M, K]);
      const w = gpu.upload(randu(N * K, 2, -0.05, 0.05), [N, K]);
      const dy = gpu.upload(randu(M * N, 3), [M, N]);
      const dW = gpu.zeros([N, K]);
      tensors = [x, w, dy, dW];
      return () => {
        for (let i = 0; i < per; i++) {
          linearBackward(gpu, x, w, dy, { dW, accumulate: true }).dx!.release();
        }
      };
    },
    teardown: () => tensors.forEach((t) => t.release()),
  };
}

/** The cases, in the order they print. */
export const benches: BenchCase[] = [
  mmCase(256, 256, 256, { per: 128 }),
  mmCase(512, 512, 512, { per: 32 }),
  mmCase(1024, 1024, 1024, { per: 8 }),
  mmCase(2048, 2048, 2048, { per: 2 }),
  // The ladder at 256^3 (same shape, forced variants), for the record.
  mmCase(256, 256, 256, { per: 1, variant: "naive", name: "matmul[naive]" }),
  mmCase(256, 256, 256, { per: 1, variant: "blocked", name: "matmul[blocked]" }),
  mmCase(256, 256, 256, { per: 1, variant: "tiled", name: "matmul[tiled]" }),
  mmCase(256, 256, 256, { per: 16, variant: "tex", name: "matmul[tex 4x1]", tile: [4, 1] }),
  // Operand textures exactly as wide as the matrix (rows 4 KiB apart, one L1 set): what the tex
  // kernel ran at before the padded pitch; compare with "matmul 1024x1024x1024" of the same run.
  mmCase(1024, 1024, 1024, { per: 8, name: "matmul[unpadded]", padPitch: false }),
  // 100m transformer (hidden 640, FFN 1664), 512 tokens: gate/up and down projections.
  mmCase(512, 640, 1664, { per: 16, linear: true, suffix: " linear" }),
  mmCase(512, 640, 1664, { per: 16, linear: true, packed: true, suffix: " linear packed" }),
  mmCase(512, 1664, 640, { per: 16, linear: true, suffix: " linear" }),
  mmCase(1024, 4096, 1024, { per: 4, linear: true, suffix: " linear" }),
  // A 16-token prefill of the same projections (skinny: the 16x2 tile in small workgroups), and
  // the same products in the 4x1 tile at 64 lanes (what skinny products took before).
  ...[[640, 1664], [1664, 640]].flatMap(([K, N]) => [
    mmCase(16, K, N, { per: 64, linear: true, packed: true, suffix: " linear packed" }),
    mmCase(16, K, N, {
      per: 64,
      linear: true,
      packed: true,
      tile: [4, 1],
      name: "matmul[tex 4x1]",
      suffix: " linear packed",
    }),
  ]),
  backwardCase(512, 640, 1664, 1),
  // Decode: one token through a 4096x4096 weight (memory bound). Packed: the weight as a texture
  // (what a model holds); unpacked: read from the storage buffer each call.
  mmCase(1, 4096, 4096, { per: 8, linear: true, packed: true, suffix: " linear" }),
  mmCase(1, 4096, 4096, { per: 8, linear: true, packed: true, f16: true, suffix: " linear f16" }),
  mmCase(1, 4096, 4096, { per: 2, linear: true, suffix: " linear unpacked" }),
  mmCase(1, 4096, 4096, { per: 2, linear: true, f16: true, suffix: " linear f16 unpacked" }),
];
