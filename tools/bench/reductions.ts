/**
 * Reductions, softmax, fused cross-entropy, AdamW and the global gradient norm: all memory bound,
 * so GB/s with the bytes each kernel must move (f32). 4096 x 8292 f32 logits are 136 MB, over the
 * 128 MiB binding limit, so they are two chunks of 2048 rows (as a trainer would hold them).
 * The default variant on llvmpipe is "tex" (inputs read through texture copies); "softmax (rows)"
 * and "softmax (wg)" show the buffer-reading variants for comparison.
 * @module
 */
import {
  adamw,
  crossEntropy,
  gradNorm,
  type RowVariant,
  softmax,
  softmaxBackward,
  sum,
  sumRows,
} from "@lvm/kernels";
import { type Gpu, type Tensor } from "@lvm/gpu";
import type { BenchCase } from "./_harness.ts";

const R = 4096, V = 8292, HALF = R / 2;
const N_ADAM = 16 * 1024 * 1024;

let held: Tensor[] = [];
const keep = <T extends Tensor>(t: T) => (held.push(t), t);
const teardown = () => {
  held.forEach((t) => t.release());
  held = [];
};

/** Deterministic values without a big host-side RNG loop. */
function filled(gpu: Gpu, shape: number[], f: (i: number) => number): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = f(i);
  return keep(gpu.upload(a, shape));
}

const logit = (i: number) => Math.sin(i * 0.7) * 4;

function softmaxCase(variant?: RowVariant): BenchCase {
  return {
    name: variant ? `softmax (${variant})` : "softmax",
    shape: `${R}x${V}`,
    bytes: 3 * 4 * R * V,
    reps: 3,
    note: "online max/sum pass + write pass: 2 reads + 1 write, as 2 chunks of 2048 rows",
    setup: (gpu) => {
      const xs = [filled(gpu, [HALF, V], logit), filled(gpu, [HALF, V], logit)];
      const ys = xs.map(() => keep(gpu.empty([HALF, V])));
      return () => xs.forEach((x, i) => softmax(gpu, x, { out: ys[i], variant }));
    },
    teardown,
  };
}

/** Reduction and training-step kernels. */
export const benches: BenchCase[] = [
  softmaxCase(),
  softmaxCase("rows"),
  softmaxCase("wg"),
  {
    name: "softmax backward",
    shape: `${R}x${V}`,
    bytes: 5 * 4 * R * V,
    reps: 3,
    note: "dot pass (2 reads) + write pass (2 reads, 1 write)",
    setup: (gpu) => {
      const ys = [0, 1].map(() => filled(gpu, [HALF, V], () => 1 / V));
      const dys = [0, 1].map(() => filled(gpu, [HALF, V], logit));
      const dxs = ys.map(() => keep(gpu.empty([HALF, V])));
      return () => ys.forEach((y, i) => softmaxBackward(gpu, y, dys[i], { out: dxs[i] }));
    },
    teardown,
  },
  {
    name: "cross-entropy fwd+bwd",
    shape: `${R}x${V}`,
    bytes: 3 * 4 * R * V,
    reps: 3,
    note: "fused loss + dlogits in place: 2 reads + 1 write of the logits; mean loss on the GPU",
    setup: (gpu) => {
      const xs = [filled(gpu, [HALF, V], logit), filled(gpu, [HALF, V], logit)];
      const t = new Int32Array(R).map((_, i) => (i * 131) % V);
      const targets = keep(gpu.upload(t, [R], "i32"));
      // In place: each run overwrites the logits with dlogits, which are as good an input.
      return () => {
        const r = crossEntropy(gpu, xs, targets, { inPlace: true });
        [r.losses, r.loss, r.count].forEach((x) => x.release());
      };
    },
    teardown,
  },
  {
    name: "adamw",
    shape: `${N_ADAM} f32`,
    bytes: 28 * N_ADAM,
    note: "read p, m, v, g + write p, m, v = 28 B/param",
    setup: (gpu) => {
      const [param, grad, m, v] = [0, 1, 2, 3].map((k) =>
        filled(gpu, [N_ADAM], (i) => (k === 3 ? 1e-4 : Math.sin(i + k) * 0.01))
      );
      let step = 0;
      return () => adamw(gpu, { param, grad, m, v }, { lr: 1e-4, step: ++step, weightDecay: 0.1 });
    },
    teardown,
  },
  {
    name: "grad norm",
    shape: `${N_ADAM} f32 in 4`,
    bytes: 4 * N_ADAM,
    note: "sum of squares of 4 tensors into partial slots + final sqrt",
    setup: (gpu) => {
      const gs = [0, 1, 2, 3].map(() => filled(gpu, [N_ADAM / 4], (i) => Math.sin(i) * 1e-3));
      return () => gradNorm(gpu, gs).release();
    },
    teardown,
  },
  {
    name: "sum last dim",
    shape: "4096x1024",
    bytes: 4 * 4096 * 1024,
    note: "one read",
    setup: (gpu) => {
      const x = filled(gpu, [4096, 1024], logit);
      const out = keep(gpu.empty([4096]));
      return () => sum(gpu, x, { out });
    },
    teardown,
  },
  {
    name: "sumRows",
    shape: "4096x1024",
    bytes: 4 * 4096 * 1024,
    note: "column sums (bias gradient), one read",
    setup: (gpu) => {
      const x = filled(gpu, [4096, 1024], logit);
      const out = keep(gpu.empty([1024]));
      return () => sumRows(gpu, x, { out });
    },
    teardown,
  },
];
