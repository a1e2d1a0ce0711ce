/**
 * Convolutions beside the matmul at the same FLOPs: for each conv shape the VQGAN tokenizer runs
 * (the `tiny` preset's batch of 8 at 32x32, the `lvm` preset's 256x256 levels) one case times, in
 * turn and interleaved, the conv2d forward (bias), the input gradient (dx), the weight gradient with
 * the bias gradient (dw+db), and the llvmpipe-fastest matmul of the equivalent GEMM, M = B*Ho*Wo
 * pixels x K = Cin*KH*KW x N = Cout (M capped so one operand fits a binding: GFLOP/s barely depends
 * on M there). Each part is timed best-of-reps with its own GPU sync, several ops per sync for small
 * shapes. The note prints each part's GFLOP/s and its ratio to the matmul's measured in the same run
 * (issue 11's target: >= 0.8x); --json adds them as fields. The case's own figure is all four parts.
 *
 * Napkin math: a conv does 2 * B * Cin * Cout * KH * KW * Ho * Wo FLOPs, and so does each gradient.
 * Each conv part includes its staging passes (zero-padded input and weights into textures).
 * @module
 */
import type { Gpu, Tensor } from "@lvm/gpu";
import { conv2d, conv2dBackward, type Conv2dOptions, matmul } from "@lvm/kernels";
import { randu } from "@lvm/util/testing";
import type { BenchCase } from "./_harness.ts";

interface Shape {
  /** Preset the shape comes from. */
  preset: "tiny" | "lvm";
  B: number;
  Cin: number;
  Cout: number;
  /** Input side (square). */
  H: number;
  K: 1 | 3;
  /** Stride 2: the downsample (pad bottom/right); up: the decoder's nearest 2x upsample first. */
  kind?: "down" | "up";
}

const SHAPES: Shape[] = [
  { preset: "tiny", B: 8, Cin: 64, Cout: 64, H: 32, K: 3 },
  { preset: "tiny", B: 8, Cin: 64, Cout: 64, H: 32, K: 3, kind: "down" },
  { preset: "tiny", B: 8, Cin: 64, Cout: 64, H: 16, K: 3, kind: "up" },
  { preset: "tiny", B: 8, Cin: 128, Cout: 128, H: 8, K: 3 },
  { preset: "tiny", B: 8, Cin: 128, Cout: 64, H: 16, K: 1 },
  { preset: "lvm", B: 1, Cin: 128, Cout: 128, H: 256, K: 3 },
  { preset: "lvm", B: 1, Cin: 128, Cout: 128, H: 256, K: 3, kind: "down" },
  { preset: "lvm", B: 1, Cin: 256, Cout: 256, H: 64, K: 3 },
  { preset: "lvm", B: 1, Cin: 512, Cout: 512, H: 32, K: 3 },
  { preset: "lvm", B: 1, Cin: 768, Cout: 768, H: 16, K: 3 },
];

const PARTS = ["fwd", "dx", "dw+db", "matmul"] as const;
type Part = typeof PARTS[number];

function convCase(s: Shape): BenchCase {
  const { B, Cin, Cout, H, K } = s;
  const opts: Conv2dOptions = K === 1
    ? {}
    : s.kind === "down"
    ? { stride: 2, pad: [0, 1, 0, 1] }
    : { pad: 1, upsample2x: s.kind === "up" };
  const Hu = s.kind === "up" ? 2 * H : H;
  const Ho = s.kind === "down" ? Hu / 2 : Hu;
  const flops = 2 * B * Cin * Cout * K * K * Ho * Ho;
  // Several ops per sync where one op is small (a sync costs ~11 ms on lavapipe).
  const per = Math.max(1, Math.round(1e9 / flops));
  const Kg = Cin * K * K, Mg = Math.min(B * Ho * Ho, Math.floor(2 ** 24 / Kg));
  const mmFlops = 2 * Mg * Kg * Cout;
  let held: Tensor[] = [];
  const best = new Map<Part, number>();
  const gflops = (p: Part) => (p === "matmul" ? mmFlops : flops) * per / best.get(p)! / 1e6;
  const ratio = (p: Part) => gflops(p) / gflops("matmul");
  const tag = s.kind === "down" ? " s2" : s.kind === "up" ? " up2x" : "";
  return {
    name: `conv2d ${K}x${K} vs matmul`,
    shape: `${s.preset} ${B}x${Cin}->${Cout} ${H}x${H}${tag}`,
    flops: (3 * flops + mmFlops) * per,
    reps: Ho >= 128 ? 2 : 4,
    get note() {
      if (best.size < PARTS.length) return `GEMM ${Mg}x${Kg}x${Cout}`;
      const part = (p: Part) => `${p} ${gflops(p).toFixed(1)} (${ratio(p).toFixed(2)}x)`;
      return `GFLOP/s: ${PARTS.slice(0, 3).map(part).join(", ")}; matmul ${Mg}x${Kg}x${Cout} ${
        gflops("matmul").toFixed(1)
      }`;
    },
    setup(gpu: Gpu) {
      const up = (shape: number[], seed: number, r = 1) => {
        const t = gpu.upload(randu(shape.reduce((a, b) => a * b, 1), seed, -r, r), shape);
        held.push(t);
        return t;
      };
      const x = up([B, Cin, H, H], 1), w = up([Cout, Cin, K, K], 2, 0.05), b = up([Cout], 3);
      const dy = up([B, Cout, Ho, Ho], 4);
      const a = up([Mg, Kg], 5), bm = up([Kg, Cout], 6);
      const release = (g: Record<string, Tensor | null>) =>
        Object.values(g).forEach((t) => t?.release());
      const ops: Record<Part, () => void> = {
        fwd: () => conv2d(gpu, x, w, b, opts).release(),
        dx: () =>
          release({ ...conv2dBackward(gpu, x, w, dy, { ...opts, dw: false, dbias: false }) }),
        "dw+db": () => release({ ...conv2dBackward(gpu, x, w, dy, { ...opts, dx: false }) }),
        matmul: () => matmul(gpu, a, bm).release(),
      };
      best.clear();
      return async () => {
        for (const p of PARTS) {
          const t0 = performance.now();
          for (let i = 0; i < per; i++) ops[p]();
          await gpu.sync();
          best.set(p, Math.min(best.get(p) ?? Infinity, performance.now() - t0));
        }
      };
    },
    teardown() {
      held.forEach((t) => t.release());
      held = [];
    },
    extra: () =>
      Object.fromEntries(
        PARTS.flatMap((p) => [
          [`${p}_gflops`, +gflops(p).toFixed(2)],
          ...(p === "matmul" ? [] : [[`${p}_vs_matmul`, +ratio(p).toFixed(3)]]),
        ]),
      ),
  };
}

/** One case per shape. */
export const benches: BenchCase[] = SHAPES.map(convCase);
