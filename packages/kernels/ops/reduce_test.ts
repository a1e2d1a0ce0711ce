import { getGpu } from "@lvm/gpu";
import { assertClose, randu } from "@lvm/util/testing";
import { max, mean, reduceCpu, type RowVariant, segmentReduce, sum, sumRows } from "./reduce.ts";

const ROWS = [1, 7, 45];
// 4, 12, 1028 and 8292 are multiples of 4: the "tex" variant runs on them, else it is "rows".
const COLS = [1, 4, 7, 12, 65, 1025, 1028, 8292];
const VARIANTS: RowVariant[] = ["rows", "tex", "wg"];

/** Tolerance for an f32 sum: a few ulp of the largest sum of magnitudes. */
function sumTol(x: Float32Array, R: number, C: number) {
  let worst = 0;
  for (let r = 0; r < R; r++) {
    let s = 0;
    for (let c = 0; c < C; c++) s += Math.abs(x[r * C + c]);
    worst = Math.max(worst, s);
  }
  return { atol: 2e-6 * worst + 1e-7, rtol: 1e-6 };
}

Deno.test("sum(), mean(), max() over the last dimension", async (t) => {
  const gpu = await getGpu();
  for (const variant of VARIANTS) {
    for (const R of ROWS) {
      for (const C of COLS) {
        await t.step(`${variant} ${R}x${C}`, async () => {
          const x = randu(R * C, R * 1000 + C, -3, 3);
          const X = gpu.upload(x, [R, C]);
          const [s, m, mx] = await gpu.readMany([
            sum(gpu, X, { variant }),
            mean(gpu, X, { variant }),
            max(gpu, X, { variant }),
          ]);
          const tol = sumTol(x, R, C);
          assertClose(s, reduceCpu.sum(x, R, C), tol, `sum ${R}x${C}`);
          assertClose(m, reduceCpu.mean(x, R, C), { atol: tol.atol / C, rtol: 1e-6 }, "mean");
          assertClose(mx, reduceCpu.max(x, R, C), { atol: 0, rtol: 0 }, `max ${R}x${C}`);
          X.release();
        });
      }
    }
  }
});

Deno.test("sum(), mean(), max() over the whole tensor", async (t) => {
  const gpu = await getGpu();
  for (const variant of VARIANTS) {
    for (const n of [1, 4, 7, 1023, 1024, 45 * 1025, 45 * 1028, 300_001, 300_004]) {
      await t.step(`${variant} N=${n}`, async () => {
        const x = randu(n, n, -2, 2);
        const X = gpu.upload(x, [n]);
        const [s, m, mx] = await gpu.readMany([
          sum(gpu, X, { axis: "all", variant }),
          mean(gpu, X, { axis: "all", variant }),
          max(gpu, X, { axis: "all", variant }),
        ]);
        const tol = sumTol(x, 1, n);
        assertClose(s, reduceCpu.sum(x, 1, n), tol, `sumAll ${n}`);
        assertClose(m, reduceCpu.mean(x, 1, n), { atol: tol.atol / n, rtol: 1e-6 }, `meanAll`);
        assertClose(mx, reduceCpu.max(x, 1, n), { atol: 0, rtol: 0 }, `maxAll ${n}`);
        X.release();
      });
    }
  }
});

Deno.test("reductions: extreme values and -inf", async () => {
  const gpu = await getGpu();
  for (const variant of VARIANTS) {
    const R = 7, C = 65;
    const x = randu(R * C, 3, -300, 300);
    x[5] = 300;
    x[C + 3] = -300;
    for (let c = 0; c < C; c++) x[2 * C + c] = -Infinity; // an all -inf row
    x[3 * C + 10] = -Infinity;
    const X = gpu.upload(x, [R, C]);
    const mx = await gpu.readF32(max(gpu, X, { variant }));
    assertClose(mx, reduceCpu.max(x, R, C), { atol: 0, rtol: 0 }, `max extremes ${variant}`);
    const finite = x.map((v) => (Number.isFinite(v) ? v : -300));
    const F = gpu.upload(finite, [R, C]);
    const s = await gpu.readF32(sum(gpu, F, { variant }));
    assertClose(s, reduceCpu.sum(finite, R, C), sumTol(finite, R, C), `sum extremes ${variant}`);
    const all = await gpu.readF32(max(gpu, X, { axis: "all", variant }));
    assertClose(all, [300], { atol: 0, rtol: 0 }, "maxAll extremes");
  }
});

Deno.test("sumRows() column sums", async (t) => {
  const gpu = await getGpu();
  const shapes = [
    [1, 1],
    [1, 7],
    [7, 1],
    [45, 65],
    [1025, 7],
    [3, 5, 7],
    [4099, 3],
    [13, 1025],
    [1, 4],
    [45, 12],
    [1025, 1028],
  ];
  const cases = shapes.flatMap((shape) =>
    [undefined, 1, 3].flatMap((chunks) =>
      (["tex", "rows"] as const).map((variant) => ({ shape, chunks, variant }))
    )
  );
  for (const { shape, chunks, variant } of cases) {
    {
      await t.step(`[${shape}] chunks ${chunks ?? "auto"} ${variant}`, async () => {
        const N = shape[shape.length - 1];
        const M = shape.reduce((a, b) => a * b, 1) / N;
        const x = randu(M * N, M + N, -300, 300);
        const X = gpu.upload(x, shape);
        const got = await gpu.readF32(sumRows(gpu, X, { chunks, variant }));
        // Tolerance from the column sums of magnitudes.
        const abs = reduceCpu.sumRows(x.map(Math.abs), M, N);
        assertClose(
          got,
          reduceCpu.sumRows(x, M, N),
          { atol: 2e-6 * Math.max(...abs), rtol: 1e-6 },
          `sumRows [${shape}]`,
        );
        X.release();
      });
    }
  }
});

Deno.test("segmentReduce(): offsets, sqrt, bad input", async () => {
  const gpu = await getGpu();
  const x = randu(10, 4);
  const out = gpu.zeros([6]);
  segmentReduce(gpu, gpu.upload(x, [10]), "sumsq", { L: 4, out, offset: 2, sqrt: true });
  const ref = [0, 0, 0, 0, 0, 0];
  for (let i = 0; i < 10; i++) ref[2 + Math.floor(i / 4)] += x[i] * x[i];
  assertClose(await gpu.readF32(out), ref.map(Math.sqrt), { atol: 1e-6, rtol: 1e-6 }, "sumsq");
  let msg = "";
  try {
    sum(gpu, gpu.upload([1, 2], [2], "i32"));
  } catch (e) {
    msg = String(e);
  }
  if (!/x must be f32, got i32/.test(msg)) throw new Error(`dtype error not reported: ${msg}`);
  msg = "";
  try {
    sum(gpu, gpu.upload([1, 2, 3, 4], [2, 2]), { out: gpu.empty([3]) });
  } catch (e) {
    msg = String(e);
  }
  if (!/out has shape \[3\]/.test(msg)) throw new Error(`out shape error not reported: ${msg}`);
});
