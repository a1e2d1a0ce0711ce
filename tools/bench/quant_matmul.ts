/**
 * Block-quantized Linear benchmarks (@lvm/kernels' linearQ) beside the f32/f16 `linear` on the same
 * shapes: decode's matrix-vector product through a 4096x4096 weight (one token; memory bound on a
 * GPU, dequantization bound on llvmpipe) and a prefill chunk (512 tokens). Shapes are "MxKxN"
 * (x (M,K), W [N,K]). f16 "packed" is the texture copy a DecodeSession makes of small models;
 * "unpacked" is what a model over 2 GiB (the 7B) runs. `deno task bench --filter linearQ`.
 *
 * `linearQ[ratio]` (`--filter quant`): decode's GEMV through each of the 7B's matrix shapes, Q4_0,
 * Q8_0 and the unpacked f16 `linear`, each over distinct copies of the weight (~100 MB of each type,
 * so the weights stream from memory as in a model, not from cache), timed round after round in
 * turn. Each is timed twice: wall clock, and the process's CPU time (user + system, every thread:
 * llvmpipe's workers too), which a busy machine disturbs far less (beside a training run at nice
 * -10 this process got 6-20% of the 2 cores, and wall times moved 10x between rounds). The note
 * gives each one's median CPU ms per GEMV and the median (min-max) over the rounds (warm-up
 * excluded) of the f16/Q4_0 and f16/Q8_0 ratios, CPU then wall. The line's ms is one whole round.
 *
 * "Q4_0" is a weight made with `quantizeX` (gemvInt: x quantized to 8 bits, integer dot products),
 * "Q4_0 gemv" the exact product. Measured (`--filter "linearQ[ratio]" --reps 9`, texture layout
 * with each group of 8 rows side by side, CPU time, median (min-max); machine load ~3 on 2 cores):
 *   1x4096x4096   CPU ms Q4_0 2.28, Q4_0 gemv 3.01, Q8_0 3.88, f16 11.55;
 *                 f16/Q4_0 5.14 (4.78-5.52), f16/Q4_0 gemv 3.83 (3.64-4.00), f16/Q8_0 2.99 (2.80-3.05)
 *   1x4096x11008  CPU ms Q4_0 5.65, Q4_0 gemv 7.60, Q8_0 8.42, f16 30.27;
 *                 f16/Q4_0 5.47 (4.99-5.77), f16/Q4_0 gemv 3.97 (3.93-4.54), f16/Q8_0 3.60 (3.24-3.86)
 *   1x11008x4096  CPU ms Q4_0 6.41, Q4_0 gemv 8.04, Q8_0 9.04, f16 34.28;
 *                 f16/Q4_0 5.68 (4.67-7.73), f16/Q4_0 gemv 4.10 (3.82-6.24), f16/Q8_0 3.72 (3.40-4.19)
 * Before, rows one after the other in the textures (load 5-6): f16/Q4_0 4.16 / 4.35 / 2.66,
 * f16/Q4_0 gemv 3.37 / 3.43 / 2.27, f16/Q8_0 2.49 / 2.62 / 1.50; and before that (a scale picked
 * by a computed index, Q4_0 at 16 rows): f16/Q4_0 gemv 2.84 / 2.67 / 2.36, f16/Q8_0 2.02 / 2.31 /
 * 1.91. The storage layout in the same process at 4096x4096 (7 rounds, before): Q4_0 4.56 vs 4.54
 * CPU ms (texture), Q8_0 6.46 vs 5.65.
 * @module
 */
import type { Gpu, Tensor } from "@lvm/gpu";
import { linear, linearQ, type PackedWeight, packWeight, QuantWeight } from "@lvm/kernels";
import process from "node:process";
import { quantize, type QuantType } from "@lvm/weights";
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

/** Median of a list. */
function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** What {@link ratioCase} times: Q4_0 with quantizeX (gemvInt) and exact (gemv), Q8_0, f16. */
const KINDS = ["Q4_0", "Q4_0 gemv", "Q8_0", "f16"] as const;
type Kind = (typeof KINDS)[number];

/** Decode GEMV x (1,K) -> (1,N): each of {@link KINDS} in one process, rounds in turn. */
function ratioCase(K: number, N: number, reps = 7): BenchCase {
  const held: { release(): void }[] = [];
  const times = Object.fromEntries(KINDS.map((k) => [k, [] as number[]])) as Record<Kind, number[]>;
  const cpu = Object.fromEntries(KINDS.map((k) => [k, [] as number[]])) as Record<Kind, number[]>;
  let rounds = 0;
  const perWeight = { Q4_0: 18 / 32, "Q4_0 gemv": 18 / 32, Q8_0: 34 / 32, f16: 2 };
  const copies = (k: Kind) => Math.max(2, Math.ceil(100e6 / (K * N * perWeight[k])));
  return {
    name: "linearQ[ratio]",
    shape: `1x${K}x${N} quant vs f16`,
    reps,
    setup(gpu: Gpu) {
      const values = randu(N * K, 2, -0.05, 0.05);
      const x = gpu.upload(randu(K, 1), [1, K]);
      const out = gpu.empty([1, N]);
      held.push(x, out);
      const runs = {} as Record<Kind, () => void>;
      for (const k of KINDS) {
        if (k === "f16") {
          const Ws = Array.from({ length: copies(k) }, () => gpu.upload(values, [N, K], "f16"));
          held.push(...Ws);
          runs[k] = () => Ws.forEach((W) => linear(gpu, x, W, undefined, out));
        } else {
          const type = k === "Q8_0" ? "Q8_0" : "Q4_0";
          const quantizeX = k === "Q4_0";
          const bytes = quantize(type, values);
          const Ws = Array.from(
            { length: copies(k) },
            () => QuantWeight.fromBlocks(gpu, type, [N, K], bytes, { quantizeX }),
          );
          held.push(...Ws);
          runs[k] = () => Ws.forEach((W) => linearQ(gpu, x, W, { out }));
        }
      }
      return async () => {
        for (const k of KINDS) {
          const t0 = performance.now(), c0 = process.cpuUsage();
          runs[k]();
          await gpu.sync();
          const c = process.cpuUsage(c0);
          if (rounds > 0) { // not the warm-up
            times[k].push((performance.now() - t0) / copies(k));
            cpu[k].push((c.user + c.system) / 1e3 / copies(k));
          }
        }
        rounds++;
      };
    },
    teardown() {
      held.forEach((h) => h.release());
      held.length = 0;
    },
    extra() {
      const r = (t: typeof times, k: Kind) => t.f16.map((f, i) => f / t[k][i]);
      const range = (a: number[]) =>
        `${median(a).toFixed(2)} (${Math.min(...a).toFixed(2)}-${Math.max(...a).toFixed(2)})`;
      const ms = KINDS.map((k) => `${k} ${median(cpu[k]).toFixed(2)}`).join(", ");
      const ratios = (["Q4_0", "Q4_0 gemv", "Q8_0"] as const).map((k) =>
        `f16/${k} cpu ${range(r(cpu, k))} wall ${range(r(times, k))}`
      ).join("; ");
      return {
        q4_ms: +median(times.Q4_0).toFixed(3),
        q4_gemv_ms: +median(times["Q4_0 gemv"]).toFixed(3),
        q8_ms: +median(times.Q8_0).toFixed(3),
        f16_ms: +median(times.f16).toFixed(3),
        q4_cpu_ms: +median(cpu.Q4_0).toFixed(3),
        q4_gemv_cpu_ms: +median(cpu["Q4_0 gemv"]).toFixed(3),
        q8_cpu_ms: +median(cpu.Q8_0).toFixed(3),
        f16_cpu_ms: +median(cpu.f16).toFixed(3),
        f16_over_q4: +median(r(times, "Q4_0")).toFixed(3),
        f16_over_q8: +median(r(times, "Q8_0")).toFixed(3),
        f16_over_q4_cpu: +median(r(cpu, "Q4_0")).toFixed(3),
        f16_over_q4_gemv_cpu: +median(r(cpu, "Q4_0 gemv")).toFixed(3),
        f16_over_q8_cpu: +median(r(cpu, "Q8_0")).toFixed(3),
        rounds: times.f16.length,
        note: `CPU ms per GEMV ${ms}; ${ratios}; ${times.f16.length} rounds`,
      };
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
  // Decode through the 7B's shapes (attention, gate/up, down), quantized vs f16 in one process.
  ratioCase(4096, 4096),
  ratioCase(4096, 11008),
  ratioCase(11008, 4096),
];
