import { getGpu } from "@lvm/gpu";
import { assert, assertClose, assertEquals, assertThrows, randu } from "@lvm/util/testing";
import { adamw, adamwCpu, adamwGroup, adamwGroupSize } from "./adamw.ts";
import { clipScale, clipScaleCpu, gradNorm, gradNormCpu } from "./grad_norm.ts";

interface FixtureCase {
  name: string;
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  maxNorm: number | null;
  shapes: number[][];
  init: number[][];
  steps: { grads: number[][]; params: number[][]; norm?: number }[];
  m: number[][];
  v: number[][];
}

const FIXTURE = new URL("../../../tests/fixtures/kernels/adamw.json", import.meta.url);

Deno.test("adamw() matches torch.optim.AdamW (fixture from tools/fixtures_adamw.py)", async (t) => {
  const gpu = await getGpu();
  const { cases } = JSON.parse(await Deno.readTextFile(FIXTURE)) as { cases: FixtureCase[] };
  for (const c of cases) {
    await t.step(c.name, async () => {
      const hp = {
        lr: c.lr,
        beta1: c.beta1,
        beta2: c.beta2,
        eps: c.eps,
        weightDecay: c.weightDecay,
      };
      const params = c.init.map((p, i) => gpu.upload(p, c.shapes[i]));
      const ms = c.shapes.map((s) => gpu.zeros(s));
      const vs = c.shapes.map((s) => gpu.zeros(s));
      // The CPU reference runs alongside, so it is checked against PyTorch too.
      const cpuP = c.init.map((p) => Float32Array.from(p));
      const cpuM = c.init.map((p) => new Float32Array(p.length));
      const cpuV = c.init.map((p) => new Float32Array(p.length));
      for (const [k, step] of c.steps.entries()) {
        const grads = step.grads.map((g, i) => gpu.upload(g, c.shapes[i]));
        let scale = undefined;
        let cpuScale = 1;
        if (c.maxNorm !== null) {
          const norm = gradNorm(gpu, grads);
          scale = clipScale(gpu, norm, c.maxNorm);
          const n = await gpu.readF32(norm);
          assertClose(n, [step.norm!], { atol: 1e-6, rtol: 1e-6 }, `norm step ${k + 1}`);
          const cpuNorm = gradNormCpu(step.grads);
          assertClose([cpuNorm], [step.norm!], { atol: 1e-6, rtol: 1e-6 }, "cpu norm");
          cpuScale = clipScaleCpu(cpuNorm, c.maxNorm);
        }
        grads.forEach((grad, i) =>
          adamw(gpu, { param: params[i], grad, m: ms[i], v: vs[i] }, {
            ...hp,
            step: k + 1,
            gradScale: scale,
          })
        );
        const got = await gpu.readMany(params);
        for (let i = 0; i < params.length; i++) {
          adamwCpu(cpuP[i], step.grads[i], cpuM[i], cpuV[i], {
            ...hp,
            step: k + 1,
            gradScale: cpuScale,
          });
          const tol = { atol: 1e-6, rtol: 1e-6 };
          assertClose(got[i], step.params[i], tol, `${c.name}: param ${i} step ${k + 1}`);
          assertClose(cpuP[i], step.params[i], tol, `${c.name}: cpu param ${i} step ${k + 1}`);
        }
      }
      const [m, v] = [await gpu.readMany(ms), await gpu.readMany(vs)];
      for (let i = 0; i < params.length; i++) {
        assertClose(m[i], c.m[i], { atol: 1e-7, rtol: 1e-6 }, `${c.name}: exp_avg ${i}`);
        assertClose(v[i], c.v[i], { atol: 1e-9, rtol: 1e-6 }, `${c.name}: exp_avg_sq ${i}`);
      }
    });
  }
});

Deno.test("adamw() matches the CPU reference on odd sizes and extreme values", async (t) => {
  const gpu = await getGpu();
  const cases = [1, 7, 45 * 65, 1025, 4096, 8292].flatMap((n) =>
    [false, true].flatMap((extreme) =>
      (["tex", "vec4", "scalar"] as const).map((variant) => ({ n, extreme, variant }))
    )
  );
  for (const { n, extreme, variant } of cases) {
    {
      await t.step(`N=${n}${extreme ? " +-300" : ""} ${variant}`, async () => {
        const lo = extreme ? -300 : -1, hi = extreme ? 300 : 1;
        const p = randu(n, n, lo, hi), m = randu(n, n + 1, lo, hi).map((x) => x * 0.1);
        const v = randu(n, n + 2, 0, hi * hi);
        const P = gpu.upload(p, [n]), M = gpu.upload(m, [n]), Vt = gpu.upload(v, [n]);
        const S = gpu.upload([0.25], [1]);
        const opts = { lr: 1e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
        for (let step = 1; step <= 3; step++) {
          const g = randu(n, n * 10 + step, lo, hi);
          const G = gpu.upload(g, [n]);
          // Step 2 scales the gradient by a number and a tensor (0.5 * 0.25), as clipping does.
          const scaled = step === 2;
          adamw(gpu, { param: P, grad: G, m: M, v: Vt }, {
            ...opts,
            variant,
            step,
            gradScale: scaled ? 0.5 : undefined,
            gradScaleTensor: scaled ? S : undefined,
          });
          adamwCpu(p, g, m, v, { ...opts, step, gradScale: scaled ? 0.125 : 1 });
        }
        const [gp, gm, gv] = await gpu.readMany([P, M, Vt]);
        assertClose(gp, p, { atol: 1e-6, rtol: 1e-6 }, `param N=${n}`);
        // WGSL lets a driver fuse m * b1 + g * (1 - b1) into one FMA (NVIDIA's Vulkan driver does;
        // lavapipe does not), which rounds once where the reference rounds twice. With +-300 inputs
        // both terms reach ~30 and cancel, so m may differ by an ulp of the terms (2^-19 at 16..32)
        // per step although m itself is small: 4 such ulps bound the 3 steps.
        const mTol = extreme ? { atol: 4 * 2 ** -19, rtol: 1e-6 } : { atol: 1e-6, rtol: 1e-6 };
        assertClose(gm, m, mTol, `m N=${n}`);
        assertClose(gv, v, { atol: 1e-6, rtol: 1e-6 }, `v N=${n}`);
      });
    }
  }
});

Deno.test("adamwGroup() == adamw() one by one, bit for bit; odd and large tensors go singly", async () => {
  const gpu = await getGpu();
  // 11 groupable sizes (more than one group of adamwGroupSize), one not a multiple of 4, one large
  // enough to go singly on CPU adapters (N >= 65536).
  const sizes = [4, 8, 12, 400, 64, 4, 1028, 16, 20, 6, 70000, 44, 128, 256];
  const decays = sizes.map((_, i) => (i % 3 === 0 ? 0 : 0.1 * i));
  const opts = { lr: 0.01, step: 3, beta1: 0.9, beta2: 0.95, eps: 1e-8 };
  for (const tensorScale of [false, true]) {
    const scale = gpu.upload([0.7], [1]);
    const make = (seed: number) =>
      sizes.map((n, i) => ({
        param: gpu.upload(randu(n, seed + 4 * i, -1, 1), [n]),
        grad: gpu.upload(randu(n, 1000 + 4 * i, -2, 2), [n]),
        m: gpu.upload(randu(n, 2000 + 4 * i, -0.1, 0.1), [n]),
        v: gpu.upload(randu(n, 3000 + 4 * i, 0, 0.1), [n]),
      }));
    const [a, b] = [make(1), make(1)];
    const o = { ...opts, gradScale: tensorScale ? scale : 1.5 };
    const d0 = gpu.dispatchCount;
    adamwGroup(gpu, a, o, decays);
    const grouped = gpu.dispatchCount - d0;
    b.forEach((st, i) => adamw(gpu, st, { ...o, weightDecay: decays[i] }));
    for (let i = 0; i < sizes.length; i++) {
      for (const k of ["param", "m", "v"] as const) {
        const [x, y] = await gpu.readMany([a[i][k], b[i][k]]);
        assertEquals(Array.from(x), Array.from(y), `${k} N=${sizes[i]} tensorScale ${tensorScale}`);
      }
    }
    // Fewer dispatches than one per parameter where two or more share one.
    if (adamwGroupSize(gpu) >= 2) assert(grouped < sizes.length - 1, `${grouped} dispatches`);
    for (const st of [...a, ...b]) Object.values(st).forEach((t) => t.release());
    scale.release();
  }
  const p = gpu.upload([1, 2, 3, 4], [4]);
  assertThrows(
    () => adamwGroup(gpu, [{ param: p, grad: p, m: p, v: p }], opts),
    RangeError,
    "distinct buffers",
  );
  assertThrows(() => adamwGroup(gpu, [], opts, [0.1]), RangeError, "1 decays for 0 parameters");
  p.release();
});

Deno.test("adamw(): bad inputs are reported", async () => {
  const gpu = await getGpu();
  const a = gpu.zeros([4]), b = gpu.zeros([4]), c = gpu.zeros([4]), d = gpu.zeros([3]);
  assertThrows(
    () => adamw(gpu, { param: a, grad: d, m: b, v: c }, { lr: 1, step: 1 }),
    Error,
    /grad has shape \[3\] \(3 elements\), expected 4/,
  );
  assertThrows(
    () => adamw(gpu, { param: a, grad: a, m: b, v: c }, { lr: 1, step: 1 }),
    Error,
    /distinct buffers/,
  );
  assertThrows(
    () => adamw(gpu, { param: a, grad: d.view([3]), m: b, v: c }, { lr: 1, step: 0 }),
    Error,
    /step must be an integer >= 1/,
  );
  assertThrows(
    () =>
      adamw(gpu, { param: a, grad: gpu.zeros([4]), m: b, v: c }, {
        lr: 1,
        step: 1,
        gradScale: gpu.zeros([2]),
      }),
    Error,
    /gradScale tensor has shape \[2\], expected \[1\]/,
  );
  await gpu.sync();
});
