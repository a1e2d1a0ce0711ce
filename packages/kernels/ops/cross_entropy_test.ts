import { getGpu, type Gpu } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { assertClose, assertThrows, finiteDiff, randint, randu } from "@lvm/util/testing";
import {
  crossEntropy,
  crossEntropyCpu,
  crossEntropyLoss,
  logSoftmaxGather,
  logSoftmaxGatherCpu,
} from "./cross_entropy.ts";
import type { RowVariant } from "./reduce.ts";

const ROWS = [1, 7, 45];
// 4, 12, 1028 and 8292 are multiples of 4: the "tex" variant runs on them, else it is "rows".
const COLS = [1, 4, 7, 12, 65, 1025, 1028, 8292];
const VARIANTS: RowVariant[] = ["rows", "tex", "wg"];

/** Targets in [0, V) with every 5th row ignored (-1 or PyTorch's -100). */
function targetsFor(R: number, V: number, seed: number): Int32Array {
  const t = randint(R, V, seed);
  for (let r = 2; r < R; r += 5) t[r] = r % 2 ? -1 : -100;
  return t;
}

Deno.test("crossEntropy() matches the CPU reference on odd shapes", async (t) => {
  const gpu = await getGpu();
  for (const variant of VARIANTS) {
    for (const R of ROWS) {
      for (const V of COLS) {
        await t.step(`${variant} ${R}x${V}`, async () => {
          const x = randu(R * V, R * 7 + V, -6, 6);
          const tg = targetsFor(R, V, R + V);
          const X = gpu.upload(x, [R, V]), T = gpu.upload(tg, [R], "i32");
          const res = crossEntropy(gpu, X, T, { variant, gradScale: 0.5 });
          const [losses, loss, count, dx] = await gpu.readMany([
            res.losses,
            res.loss,
            res.count,
            res.dlogits[0],
          ]);
          const ref = crossEntropyCpu(x, tg, R, V, { gradScale: 0.5 });
          assertClose(losses, ref.losses, { atol: 2e-5, rtol: 1e-5 }, `losses ${R}x${V}`);
          assertClose(loss, [ref.loss], { atol: 2e-5, rtol: 1e-5 }, `loss ${R}x${V}`);
          assertClose(count, [ref.count], { atol: 0, rtol: 0 }, "count");
          assertClose(dx, ref.dlogits, { atol: 1e-7, rtol: 2e-5 }, `dlogits ${R}x${V}`);
          const gathered = await gpu.readF32(logSoftmaxGather(gpu, X, T, { variant }));
          assertClose(
            gathered,
            logSoftmaxGatherCpu(x, tg, R, V),
            { atol: 2e-5, rtol: 1e-5 },
            "lsg",
          );
          const fwd = crossEntropyLoss(gpu, X, T, { variant, reduction: "sum" });
          const sumRef = crossEntropyCpu(x, tg, R, V, { reduction: "sum" }).loss;
          assertClose(await gpu.readF32(fwd.loss), [sumRef], { atol: 1e-4, rtol: 1e-5 }, "sum");
          for (const tensor of [X, T, res.losses, res.loss, res.count, ...res.dlogits]) {
            tensor.release();
          }
        });
      }
    }
  }
});

Deno.test("crossEntropy(): extreme logits, -inf masks, chunks, in place", async (t) => {
  const gpu = await getGpu();
  for (const V of [1025, 1028]) await extremes(t, gpu, V);
});

async function extremes(t: Deno.TestContext, gpu: Gpu, V: number) {
  const R = 45;
  const x = randu(R * V, 9, -300, 300);
  for (let r = 0; r < R; r++) for (let j = r % 3; j < V; j += 3) x[r * V + j] = -Infinity;
  const tg = new Int32Array(R);
  for (let r = 0; r < R; r++) tg[r] = r % 9 === 4 ? -1 : ((r * 37) % (V - 3)) - (r % 3) + 3;
  for (let r = 0; r < R; r++) if (tg[r] >= 0 && tg[r] % 3 === r % 3) tg[r]++; // keep targets finite
  x[10 * V + tg[10]] = 300; // a confident, correct row (loss ~ 0)
  const ref = crossEntropyCpu(x, tg, R, V, { reduction: "sum", gradScale: 2 });
  for (const variant of VARIANTS) {
    await t.step(`${variant} V=${V} whole and in 3 chunks`, async () => {
      const T = gpu.upload(tg, [R], "i32");
      const whole = crossEntropy(gpu, gpu.upload(x, [R, V]), T, {
        variant,
        reduction: "sum",
        gradScale: 2,
      });
      const sizes = [7, 1, 37];
      let off = 0;
      const chunks: Tensor[] = sizes.map((n) => {
        const c = gpu.upload(x.subarray(off * V, (off + n) * V), [n, V]);
        off += n;
        return c;
      });
      const inPlace = crossEntropy(gpu, chunks, T, {
        variant,
        reduction: "sum",
        gradScale: 2,
        inPlace: true,
      });
      if (inPlace.dlogits.some((d, i) => d !== chunks[i])) {
        throw new Error("inPlace: not the chunks");
      }
      const got = await gpu.readMany([whole.losses, whole.loss, whole.dlogits[0]]);
      assertClose(got[0], ref.losses, { atol: 1e-4, rtol: 1e-5 }, "losses extremes");
      assertClose(got[1], [ref.loss], { atol: 1e-3, rtol: 1e-5 }, "loss extremes");
      assertClose(got[2], ref.dlogits, { atol: 1e-7, rtol: 2e-5 }, "dlogits extremes");
      for (let i = 0; i < got[2].length; i++) {
        if (x[i] === -Infinity && got[2][i] !== 0) throw new Error(`masked dlogit ${i} != 0`);
      }
      const parts = await gpu.readMany([inPlace.losses, inPlace.loss, ...inPlace.dlogits]);
      assertClose(parts[0], ref.losses, { atol: 1e-4, rtol: 1e-5 }, "chunked losses");
      assertClose(parts[1], [ref.loss], { atol: 1e-3, rtol: 1e-5 }, "chunked loss");
      const joined = new Float32Array(R * V);
      let o = 0;
      for (const p of parts.slice(2)) {
        joined.set(p, o);
        o += p.length;
      }
      assertClose(joined, ref.dlogits, { atol: 1e-7, rtol: 2e-5 }, "chunked in-place dlogits");
      const lsg = await gpu.readF32(logSoftmaxGather(gpu, gpu.upload(x, [R, V]), T, { variant }));
      assertClose(lsg, logSoftmaxGatherCpu(x, tg, R, V), { atol: 1e-4, rtol: 1e-5 }, "lsg");
    });
  }
}

Deno.test("crossEntropy(): edge rows", async (t) => {
  const gpu = await getGpu();
  for (const variant of VARIANTS) {
    await t.step(
      `${variant}: target on a -inf logit gives +inf, target >= V gives NaN`,
      async () => {
        const T = gpu.upload([0, 4], [2], "i32");
        const L = gpu.upload([-Infinity, 1, 2, 0.5, 0, 5, 6, 1], [2, 4]);
        const losses = await gpu.readF32(crossEntropyLoss(gpu, L, T, { variant }).losses);
        if (losses[0] !== Infinity || !Number.isNaN(losses[1])) {
          throw new Error(`expected [Infinity, NaN], got [${losses}]`);
        }
      },
    );
    await t.step(`${variant}: all rows ignored: loss 0, dlogits 0`, async () => {
      const res = crossEntropy(
        gpu,
        gpu.upload([1, 2, 3, 4, 5, 6, 7, 8], [2, 4]),
        gpu.upload([-1, -1], [2], "i32"),
        { variant },
      );
      const [loss, d] = await gpu.readMany([res.loss, res.dlogits[0]]);
      assertClose(loss, [0], { atol: 0, rtol: 0 }, "loss");
      assertClose(d, new Float32Array(8), { atol: 0, rtol: 0 }, "dlogits");
    });
  }
});

Deno.test("crossEntropy() dlogits match finite differences of the mean loss", async () => {
  const gpu = await getGpu();
  const R = 4, V = 12; // V % 4 == 0 so that "tex" runs too
  const x = randu(R * V, 21, -4, 4);
  const tg = Int32Array.from([3, -1, 11, 0]);
  const loss = (v: Float64Array) => crossEntropyCpu64(v, tg, R, V);
  for (const variant of VARIANTS) {
    const res = crossEntropy(gpu, gpu.upload(x, [R, V]), gpu.upload(tg, [R], "i32"), { variant });
    const d = await gpu.readF32(res.dlogits[0]);
    assertClose(d, finiteDiff(loss, x, 1e-4), { atol: 1e-5, rtol: 1e-3 }, `dlogits ${variant}`);
  }
});

/** Mean cross-entropy in f64 (for finite differences). */
function crossEntropyCpu64(x: Float64Array, tg: Int32Array, R: number, V: number): number {
  let total = 0, count = 0;
  for (let r = 0; r < R; r++) {
    if (tg[r] < 0) continue;
    count++;
    let m = -Infinity, s = 0;
    for (let j = 0; j < V; j++) m = Math.max(m, x[r * V + j]);
    for (let j = 0; j < V; j++) s += Math.exp(x[r * V + j] - m);
    total += m + Math.log(s) - x[r * V + tg[r]];
  }
  return total / count;
}

Deno.test("crossEntropy(): bad inputs are reported", async () => {
  const gpu = await getGpu();
  const L = gpu.upload([1, 2, 3, 4, 5, 6], [2, 3]);
  assertThrows(
    () => crossEntropy(gpu, L, gpu.upload([0, 1, 2], [3], "i32")),
    Error,
    /targets has shape \[3\], expected 2 elements/,
  );
  assertThrows(
    () => crossEntropy(gpu, L, gpu.upload([0, 1], [2])),
    Error,
    /targets must be i32, got f32/,
  );
  assertThrows(
    () => crossEntropy(gpu, [L, gpu.upload([1, 2], [1, 2])], gpu.upload([0, 1, 1], [3], "i32")),
    Error,
    /logits chunk 1 has shape \[1,2\], expected \(R_i,3\)/,
  );
  await gpu.sync();
});
