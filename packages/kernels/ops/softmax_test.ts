import { getGpu } from "@lvm/gpu";
import { assertClose, assertThrows, finiteDiff, randu } from "@lvm/util/testing";
import type { RowVariant } from "./reduce.ts";
import { softmax, softmaxBackward, softmaxBackwardCpu, softmaxCpu } from "./softmax.ts";

const ROWS = [1, 7, 45];
// 4, 12 and 1028 (and 8292) are multiples of 4: the "tex" variant runs on them, else it is "rows".
const COLS = [1, 4, 7, 12, 65, 1025, 1028, 8292];
const VARIANTS: RowVariant[] = ["rows", "tex", "wg"];

Deno.test("softmax() and softmaxBackward() match the CPU reference on odd shapes", async (t) => {
  const gpu = await getGpu();
  for (const variant of VARIANTS) {
    for (const R of ROWS) {
      for (const C of COLS) {
        await t.step(`${variant} ${R}x${C}`, async () => {
          const x = randu(R * C, R * 31 + C, -8, 8);
          const dy = randu(R * C, R * 37 + C, -1, 1);
          const scale = C % 2 ? 0.37 : 1;
          const validCols = C > 7 ? C - 5 : C;
          const X = gpu.upload(x, [R, C]);
          const Y = softmax(gpu, X, { scale, validCols, variant });
          const yRef = softmaxCpu(x, R, C, { scale, validCols });
          const y = await gpu.readF32(Y);
          assertClose(y, yRef, { atol: 1e-7, rtol: 2e-5 }, `softmax ${variant} ${R}x${C}`);
          // Backward from the GPU's own y, against the reference formula on the same y.
          const DY = gpu.upload(dy, [R, C]);
          const dx = await gpu.readF32(softmaxBackward(gpu, Y, DY, { scale, variant }));
          const dxRef = softmaxBackwardCpu(y, dy, R, C, scale);
          assertClose(dx, dxRef, { atol: 1e-6, rtol: 1e-4 }, `softmaxBackward ${R}x${C}`);
          for (const T of [X, Y, DY]) T.release();
        });
      }
    }
  }
});

Deno.test("softmax(): extreme values, -inf masks, all-masked rows", async () => {
  const gpu = await getGpu();
  for (const [variant, C] of VARIANTS.flatMap((v) => [[v, 1025], [v, 1028]] as const)) {
    const R = 7;
    const x = randu(R * C, 11, -300, 300);
    x[3] = 300;
    x[4] = 300; // ties at the max
    for (let c = 0; c < C; c += 3) x[C + c] = -Infinity; // masked logits
    for (let c = 0; c < C; c++) x[2 * C + c] = -Infinity; // a row with no finite logit
    x[3 * C + 17] = -300; // one row: all -inf except one
    for (let c = 0; c < C; c++) if (c !== 17) x[3 * C + c] = -Infinity;
    for (let c = 0; c < C; c++) x[4 * C + c] = 300 - c * 1e-3; // near-uniform large row
    const X = gpu.upload(x, [R, C]);
    for (const validCols of [C, 601, 0]) {
      const y = await gpu.readF32(softmax(gpu, X, { variant, validCols }));
      const ref = softmaxCpu(x, R, C, { validCols });
      assertClose(
        y,
        ref,
        { atol: 1e-7, rtol: 2e-5 },
        `extremes ${variant} ${C} valid ${validCols}`,
      );
      for (let c = validCols; c < C; c++) {
        if (y[c] !== 0) throw new Error(`masked column ${c} not exactly 0`);
      }
      if (validCols === C && y[3 * C + 17] !== 1) throw new Error("single finite logit != 1");
    }
  }
});

Deno.test("softmaxBackward() matches finite differences", async () => {
  const gpu = await getGpu();
  const R = 3, C = 9, scale = 0.5;
  const x = randu(R * C, 5, -3, 3), w = randu(R * C, 6);
  // loss = sum(w * softmax(scale * x)), so dy = w.
  const loss = (v: Float64Array) => {
    let l = 0;
    for (let r = 0; r < R; r++) {
      let m = -Infinity, s = 0;
      for (let c = 0; c < C; c++) m = Math.max(m, v[r * C + c] * scale);
      for (let c = 0; c < C; c++) s += Math.exp(v[r * C + c] * scale - m);
      for (let c = 0; c < C; c++) l += w[r * C + c] * Math.exp(v[r * C + c] * scale - m) / s;
    }
    return l;
  };
  for (const variant of VARIANTS) {
    const Y = softmax(gpu, gpu.upload(x, [R, C]), { scale, variant });
    const dx = await gpu.readF32(
      softmaxBackward(gpu, Y, gpu.upload(w, [R, C]), { scale, variant }),
    );
    assertClose(dx, finiteDiff(loss, x, 1e-4), { atol: 1e-5, rtol: 1e-3 }, `dx ${variant}`);
  }
});

Deno.test("softmax(): bad inputs are reported", async () => {
  const gpu = await getGpu();
  const X = gpu.upload([1, 2, 3, 4], [2, 2]);
  assertThrows(
    () => softmax(gpu, X, { validCols: 3 }),
    Error,
    /validCols must be an integer in \[0, 2\]/,
  );
  assertThrows(() => softmax(gpu, X, { scale: 0 }), Error, /scale must be a finite number > 0/);
  assertThrows(() => softmax(gpu, X, { out: X }), Error, /out must not be x/);
  assertThrows(() => softmaxBackward(gpu, X, gpu.upload([1, 2], [2])), Error, /dy has shape \[2\]/);
  await gpu.sync();
});
