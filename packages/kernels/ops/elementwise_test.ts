import { getGpu } from "../gpu.ts";
import { assertClose, finiteDiff, randn } from "../testing.ts";
import { roundF16 } from "../tensor.ts";
import {
  add,
  biasAdd,
  cast,
  cpu,
  gelu,
  map,
  mapCpu,
  mul,
  scale,
  silu,
  siluBackward,
} from "./elementwise.ts";

const SHAPES = [[1], [7], [45, 65], [3, 1025], [2, 3, 5]];

Deno.test("elementwise ops match CPU references on odd shapes", async (t) => {
  const gpu = await getGpu();
  for (const shape of SHAPES) {
    const N = shape.reduce((a, b) => a * b, 1);
    const C = shape[shape.length - 1];
    const a = randn(N, 1, -3, 3), b = randn(N, 2, -3, 3), bias = randn(C, 3);
    const A = gpu.upload(a, shape), B = gpu.upload(b, shape), Bias = gpu.upload(bias, [C]);
    await t.step(`[${shape}]`, async () => {
      const cases: [string, () => ReturnType<typeof add>, Float32Array][] = [
        ["add", () => add(gpu, A, B), mapCpu((x, y) => x + y, [{ data: a }, { data: b }], N, C)],
        ["mul", () => mul(gpu, A, B), mapCpu((x, y) => x * y, [{ data: a }, { data: b }], N, C)],
        [
          "scale",
          () => scale(gpu, A, -0.37),
          mapCpu((x) => x * Math.fround(-0.37), [{ data: a }], N, C),
        ],
        [
          "bias",
          () => biasAdd(gpu, A, Bias),
          mapCpu((x, y) => x + y, [{ data: a }, { data: bias, as: "row" }], N, C),
        ],
        ["silu", () => silu(gpu, A), mapCpu(cpu.silu, [{ data: a }], N, C)],
        ["gelu", () => gelu(gpu, A), mapCpu(cpu.gelu, [{ data: a }], N, C)],
        [
          "siluBackward",
          () => siluBackward(gpu, A, B),
          mapCpu(cpu.siluBackward, [{ data: a }, { data: b }], N, C),
        ],
      ];
      for (const [name, run, ref] of cases) {
        const out = run();
        assertClose(await gpu.readF32(out), ref, { atol: 1e-5, rtol: 1e-5 }, `${name} [${shape}]`);
        out.release();
      }
    });
  }
});

Deno.test("map: extreme values, f16 storage, scalar broadcast, bad shapes", async () => {
  const gpu = await getGpu();
  const x = new Float32Array([-300, -88, -1e-30, 0, 1e-30, 88, 300]);
  const X = gpu.upload(x, [7]);
  assertClose(
    await gpu.readF32(silu(gpu, X)),
    x.map(cpu.silu),
    { atol: 1e-6, rtol: 1e-5 },
    "silu extremes",
  );
  assertClose(
    await gpu.readF32(gelu(gpu, X)),
    x.map(cpu.gelu),
    { atol: 1e-6, rtol: 1e-5 },
    "gelu extremes",
  );
  const h = cast(gpu, X, "f16");
  const back = await gpu.readF32(h);
  assertClose(back, roundF16(x), { atol: 0, rtol: 0 }, "f32->f16 packing");
  const odd = randn(45 * 65 + 1, 9);
  const H = gpu.upload(odd, [odd.length], "f16");
  const S = gpu.upload([2.5], [1]);
  const y = await gpu.readF32(map(gpu, "a * b", [H, { t: S, as: "scalar" }]));
  assertClose(y, roundF16(odd).map((v) => v * 2.5), { atol: 1e-6, rtol: 1e-6 }, "f16 in, scalar");
  let threw = false;
  try {
    add(gpu, X, gpu.upload([1, 2], [2]));
  } catch (e) {
    threw = /input b has shape \[2\]/.test(String(e));
  }
  if (!threw) throw new Error("shape mismatch was not reported");
});

Deno.test("siluBackward matches finite differences", async () => {
  const gpu = await getGpu();
  const x = randn(33, 5, -4, 4), dy = randn(33, 6);
  const got = await gpu.readF32(siluBackward(gpu, gpu.upload(x, [33]), gpu.upload(dy, [33])));
  const loss = (v: Float64Array) => v.reduce((s, xi, i) => s + cpu.silu(xi) * dy[i], 0);
  assertClose(got, finiteDiff(loss, x, 1e-4), { atol: 1e-4, rtol: 1e-3 }, "dsilu");
});
