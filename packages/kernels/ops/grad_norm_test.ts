import { getGpu } from "@lvm/gpu";
import { assert, assertClose, assertEquals, randu } from "@lvm/util/testing";
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
        const data = shapes.map((s, i) => randu(s.reduce((a, b) => a * b, 1), i + 1, -2, 2));
        const ts = data.map((d, i) => gpu.upload(d, shapes[i]));
        const got = await gpu.readF32(gradNorm(gpu, ts, { variant }));
        assertClose(got, [gradNormCpu(data)], { atol: 1e-6, rtol: 2e-6 }, "norm");
        ts.forEach((x) => x.release());
      });
    }
  }
});

Deno.test("gradNorm(): tiny and huge values neither underflow nor overflow", async (t) => {
  const gpu = await getGpu();
  const fill = (n: number, v: number) => new Float32Array(n).fill(v);
  const alt = (n: number, v: number) =>
    Float32Array.from({ length: n }, (_, i) => (i % 2 ? -v : v));
  // Each case stands alone: a plain f32 sum of squares gives 0 (or inf) for all but the control.
  const cases: [string, Float32Array[]][] = [
    ["all 1e-20 (squares below the smallest normal f32)", [fill(1, 1e-20), fill(4100, 1e-20)]],
    ["+-1e-30 over odd sizes (squares below every f32)", [alt(7, 1e-30), alt(45 * 65, 1e-30)]],
    ["random in +-1e-25", [randu(8292, 31, -1e-25, 1e-25), randu(1025, 32, -1e-25, 1e-25)]],
    ["all 1e19 (squares above the largest f32)", [fill(4100, 1e19)]],
    ["+-3e38 and 1 (the norm itself near the largest f32)", [alt(1, 3e38), fill(7, 1)]],
    ["one 2^-62 among a million 2^-64 (the small ones dominate)", [
      fill(1, 2 ** -62),
      fill(1_000_000, 2 ** -64),
    ]],
    ["1e-20, 1 and 1e19 mixed", [fill(65, 1e-20), randu(1025, 33), fill(3, 1e19)]],
    ["1e-20 alongside +-1 (mid and small sums combined)", [fill(4100, 1e-20), randu(7, 34)]],
    ["+-1 with 1e-30 sprinkled in (the plain-sum path)", [
      randu(8292, 35).map((v, i) => (i % 7 ? v : 1e-30)),
    ]],
    ["+-300 (control: no scaling needed)", [randu(1025, 3, -300, 300)]],
  ];
  for (const variant of VARIANTS) {
    for (const [name, data] of cases) {
      await t.step(`${variant}: ${name}`, async () => {
        const ts = data.map((d) => gpu.upload(d, [d.length]));
        const ref = gradNormCpu(data); // f64: exact enough for any f32 input
        if (!(ref > 0 && ref < 3.4e38)) throw new Error(`bad reference ${ref}`);
        const got = await gpu.readF32(gradNorm(gpu, ts, { variant }));
        assertClose(got, [ref], { atol: 0, rtol: 2e-6 }, name);
        ts.forEach((x) => x.release());
      });
    }
  }
});

Deno.test("gradNorm(): empty tensors, clipScale()", async () => {
  const gpu = await getGpu();
  const big = randu(1025, 3, -300, 300);
  const T = [gpu.upload(big, [1025]), gpu.empty([0])];
  const norm = gradNorm(gpu, T);
  assertClose(await gpu.readF32(norm), [gradNormCpu([big])], { rtol: 2e-6 }, "with an empty one");
  for (const maxNorm of [1, 1e9]) {
    const s = await gpu.readF32(clipScale(gpu, norm, maxNorm));
    const ref = clipScaleCpu(gradNormCpu([big]), maxNorm);
    assertClose(s, [ref], { atol: 0, rtol: 2e-6 }, `clipScale ${maxNorm}`);
  }
  const { norm: n2, scale } = clipGradNorm(gpu, [gpu.upload([3, 4], [2])], 2.5);
  assertClose(await gpu.readF32(n2), [5], { atol: 0, rtol: 1e-7 }, "clipGradNorm norm");
  assertClose(await gpu.readF32(scale), [2.5 / (5 + 1e-6)], { rtol: 1e-6 }, "clipGradNorm scale");
  const zero = await gpu.readF32(gradNorm(gpu, [gpu.empty([0])]));
  assertClose(zero, [0], { atol: 0, rtol: 0 }, "all empty");
  const zeros = await gpu.readF32(gradNorm(gpu, [gpu.zeros([7]), gpu.zeros([4100])]));
  assertClose(zeros, [0], { atol: 0, rtol: 0 }, "all zero");
  let msg = "";
  try {
    gradNorm(gpu, []);
  } catch (e) {
    msg = String(e);
  }
  if (!/grads is empty/.test(msg)) throw new Error(`empty list not reported: ${msg}`);
});

Deno.test("gradNorm(): small tensors grouped give the ungrouped norm bit for bit", async (t) => {
  const gpu = await getGpu();
  // Eleven small tensors (more than one group), odd sizes, a large one between them, and values
  // that take Blue's path (1e-20, 1e19) beside plain ones.
  const sizes = [7, 45, 4100, 1025, 12, 300_001, 8292, 1, 64, 65, 4, 3];
  const data = sizes.map((n, i) =>
    i === 2 ? new Float32Array(n).fill(1e-20) : i === 9 ? new Float32Array(n).fill(1e19) : randu(
      n,
      50 + i,
      -2,
      2,
    )
  );
  const ts = data.map((d) => gpu.upload(d, [d.length]));
  for (const variant of VARIANTS) {
    await t.step(variant, async () => {
      let d0 = gpu.dispatchCount;
      const a = gradNorm(gpu, ts, { variant });
      const grouped = gpu.dispatchCount - d0;
      d0 = gpu.dispatchCount;
      const b = gradNorm(gpu, ts, { variant, group: false });
      const single = gpu.dispatchCount - d0;
      const [x, y] = await gpu.readMany([a, b]);
      assertEquals(Array.from(x), Array.from(y), "grouped == ungrouped");
      assertClose(x, [gradNormCpu(data)], { atol: 0, rtol: 2e-6 }, "vs the CPU reference");
      // Eleven small tensors in groups of up to 8 (where 9 storage buffers may be bound).
      if (gpu.limits.maxStorageBuffersPerShaderStage >= 9) {
        assert(grouped < single - 8, `${grouped} dispatches grouped, ${single} not`);
      }
      a.release();
      b.release();
    });
  }
  ts.forEach((x) => x.release());
});
