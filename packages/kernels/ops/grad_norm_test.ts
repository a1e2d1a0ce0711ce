import { getGpu } from "../gpu.ts";
import { assertClose, randn } from "../testing.ts";
import { clipGradNorm, clipScale, clipScaleCpu, gradNorm, gradNormCpu } from "./grad_norm.ts";
import type { RowVariant } from "./reduce.ts";

const VARIANTS: RowVariant[] = ["rows", "tex", "wg"];

Deno.test("gradNorm() over lists of odd-sized tensors", async (t) => {
  const gpu = await getGpu();
  const lists = [
    [[1]],
    [[7], [45, 65], [1025], [8292]],
    [[45, 65], [300_001], [1], [7, 7]],
    [[2_000_003]],
    [[4], [12, 1028], [2_000_004], [7]],
  ];
  for (const variant of VARIANTS) {
    for (const shapes of lists) {
      await t.step(`${variant} ${shapes.map((s) => `[${s}]`).join(" ")}`, async () => {
        const data = shapes.map((s, i) => randn(s.reduce((a, b) => a * b, 1), i + 1, -2, 2));
        const ts = data.map((d, i) => gpu.upload(d, shapes[i]));
        const got = await gpu.readF32(gradNorm(gpu, ts, { variant }));
        assertClose(got, [gradNormCpu(data)], { atol: 1e-6, rtol: 2e-6 }, "norm");
        ts.forEach((x) => x.release());
      });
    }
  }
});

Deno.test("gradNorm(): extreme and empty tensors, clipScale()", async () => {
  const gpu = await getGpu();
  const big = randn(1025, 3, -300, 300);
  const tiny = randn(65, 4, -1e-20, 1e-20);
  const T = [gpu.upload(big, [1025]), gpu.empty([0]), gpu.upload(tiny, [65])];
  const norm = gradNorm(gpu, T);
  assertClose(await gpu.readF32(norm), [gradNormCpu([big, tiny])], { rtol: 2e-6 }, "extreme");
  for (const maxNorm of [1, 1e9]) {
    const s = await gpu.readF32(clipScale(gpu, norm, maxNorm));
    const ref = clipScaleCpu(gradNormCpu([big, tiny]), maxNorm);
    assertClose(s, [ref], { atol: 0, rtol: 2e-6 }, `clipScale ${maxNorm}`);
  }
  const { norm: n2, scale } = clipGradNorm(gpu, [gpu.upload([3, 4], [2])], 2.5);
  assertClose(await gpu.readF32(n2), [5], { atol: 0, rtol: 1e-7 }, "clipGradNorm norm");
  assertClose(await gpu.readF32(scale), [2.5 / (5 + 1e-6)], { rtol: 1e-6 }, "clipGradNorm scale");
  const zero = await gpu.readF32(gradNorm(gpu, [gpu.empty([0])]));
  assertClose(zero, [0], { atol: 0, rtol: 0 }, "all empty");
  let msg = "";
  try {
    gradNorm(gpu, []);
  } catch (e) {
    msg = String(e);
  }
  if (!/grads is empty/.test(msg)) throw new Error(`empty list not reported: ${msg}`);
});
