import { getGpu } from "@lvm/gpu";
import { assertClose, finiteDiff, randu } from "@lvm/util/testing";
import { roundF16 } from "@lvm/util";
import type { Tensor } from "@lvm/gpu";
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

// Odd sizes take the scalar kernel; sizes with N % 4 == 0 take the vec4 kernel ([2, 6] only when
// no input is a row: its rows of 6 are not whole vec4s).
const GELU =
  "0.5 * a * (1.0 + tanh(clamp(0.7978845608 * (a + 0.044715 * a * a * a), -15.0, 15.0)))";
const SHAPES = [[1], [7], [45, 65], [3, 1025], [2, 3, 5], [4], [8, 12], [5, 1028], [2, 6], [4100]];

Deno.test("elementwise ops match CPU references on odd shapes", async (t) => {
  const gpu = await getGpu();
  for (const shape of SHAPES) {
    const N = shape.reduce((a, b) => a * b, 1);
    const C = shape[shape.length - 1];
    const a = randu(N, 1, -3, 3), b = randu(N, 2, -3, 3), bias = randu(C, 3);
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
  const odd = randu(45 * 65 + 1, 9);
  const H = gpu.upload(odd, [odd.length], "f16");
  const S = gpu.upload([2.5], [1]);
  const y = await gpu.readF32(map(gpu, "a * b", [H, { t: S, as: "scalar" }]));
  assertClose(y, roundF16(odd).map((v) => v * 2.5), { atol: 1e-6, rtol: 1e-6 }, "f16 in, scalar");
  // The same through the vec4 kernel (N % 4 == 0): f16 in and out, scalar and row broadcasts.
  const even = randu(4 * 1031, 10, -300, 300);
  const E = gpu.upload(even, [4, 1031]);
  const E16 = gpu.upload(even, [4, 1031], "f16");
  const halves = cast(gpu, E, "f16");
  assertClose(await gpu.readF32(halves), roundF16(even), { atol: 0, rtol: 0 }, "vec4 f32->f16");
  const y4 = await gpu.readF32(map(gpu, "a * b", [E16, { t: S, as: "scalar" }]));
  assertClose(y4, roundF16(even).map((v) => v * 2.5), { atol: 1e-6, rtol: 1e-6 }, "vec4 f16 in");
  const row = randu(8, 11);
  const R8 = gpu.upload(row, [8], "f16");
  const W = gpu.upload(even.subarray(0, 6 * 8), [6, 8]);
  const z = await gpu.readF32(
    map(gpu, "a - b", [W, { t: R8, as: "row" }], gpu.empty([6, 8], "f16")),
  );
  const zRef = roundF16(
    mapCpu((u, w) => u - w, [{ data: even }, { data: roundF16(row), as: "row" }], 48, 8),
  );
  assertClose(z, zRef, { atol: 0, rtol: 0 }, "vec4 f16 row in, f16 out");
  let threw = false;
  try {
    add(gpu, X, gpu.upload([1, 2], [2]));
  } catch (e) {
    threw = /input b has shape \[2\]/.test(String(e));
  }
  if (!threw) throw new Error("shape mismatch was not reported");
});

Deno.test("map(): the tex, vec4 and scalar variants agree with the CPU reference", async (t) => {
  const gpu = await getGpu();
  const GELU_CPU = cpu.gelu;
  for (const shape of [[4], [8, 12], [5, 1028], [4100], [65, 1028]]) {
    const N = shape.reduce((a, b) => a * b, 1), C = shape[shape.length - 1];
    const a = randu(N, N, -300, 300), b = randu(N, N + 1, -3, 3), row = randu(C, C + 2);
    const A = gpu.upload(a, shape), B = gpu.upload(b, shape), Row = gpu.upload(row, [C]);
    const S = gpu.upload([0.75], [1]);
    for (const variant of ["tex", "vec4", "scalar"] as const) {
      await t.step(`[${shape}] ${variant}`, async () => {
        const x = [{ data: a }, { data: b }, { data: row, as: "row" as const }, {
          data: [0.75],
          as: "scalar" as const,
        }];
        const cases: [string, Tensor, Float32Array][] = [
          [
            "a + b",
            map(gpu, "a + b", [A, B], undefined, { variant }),
            mapCpu((u, v) => u + v, x, N, C),
          ],
          [
            "a * b + c - d (row, scalar)",
            map(
              gpu,
              "a * b + c - d",
              [A, B, { t: Row, as: "row" }, { t: S, as: "scalar" }],
              undefined,
              {
                variant,
              },
            ),
            mapCpu((u, v, w, z) => u * v + w - z, x, N, C),
          ],
          [
            "gelu",
            map(gpu, GELU, [B], undefined, { variant }),
            mapCpu(GELU_CPU, [{ data: b }], N, C),
          ],
          [
            "a * 0.5 into f16",
            map(gpu, "a * 0.5", [A], gpu.empty(shape, "f16"), { variant }),
            roundF16(mapCpu((u) => u * 0.5, [{ data: a }], N, C)),
          ],
        ];
        for (const [name, out, ref] of cases) {
          assertClose(
            await gpu.readF32(out),
            ref,
            { atol: 1e-5, rtol: 1e-5 },
            `${name} ${variant}`,
          );
          out.release();
        }
      });
    }
    [A, B, Row, S].forEach((x) => x.release());
  }
});

Deno.test("siluBackward matches finite differences", async () => {
  const gpu = await getGpu();
  const x = randu(33, 5, -4, 4), dy = randu(33, 6);
  const got = await gpu.readF32(siluBackward(gpu, gpu.upload(x, [33]), gpu.upload(dy, [33])));
  const loss = (v: Float64Array) => v.reduce((s, xi, i) => s + cpu.silu(xi) * dy[i], 0);
  assertClose(got, finiteDiff(loss, x, 1e-4), { atol: 1e-4, rtol: 1e-3 }, "dsilu");
});

Deno.test("siluBackward: extreme inputs give the reference, never NaN", async (t) => {
  const gpu = await getGpu();
  const edges = [-3.4e38, -1e30, -1e10, -300, -100, -88, -20, -1e-30, 0, 1e-30, 20, 88, 100, 300];
  const big = [1e10, 1e30, 3.4e38];
  // 17 values take the scalar kernel, 20 and 65540 the vec4 one.
  for (const n of [17, 20, 65540]) {
    await t.step(`${n} values`, async () => {
      const x = randu(n, n, -300, 300);
      x.set([...edges, ...big].slice(0, n), 0);
      const dy = randu(n, n + 1, -300, 300);
      dy.set([1, -1, 300, -300], 0);
      const got = await gpu.readF32(siluBackward(gpu, gpu.upload(x, [n]), gpu.upload(dy, [n])));
      const nan = got.findIndex((v) => !Number.isFinite(v));
      if (nan >= 0) throw new Error(`dx[${nan}] = ${got[nan]} for x = ${x[nan]}, dy = ${dy[nan]}`);
      const ref = Float32Array.from(x, (v, i) => cpu.siluBackward(v, dy[i]));
      assertClose(got, ref, { atol: 1e-5 * 300, rtol: 1e-5 }, "dsilu extremes");
      // the limits: silu'(x) -> 1 for large x, -> 0 for very negative x
      for (let i = 0; i < edges.length + big.length && i < n; i++) {
        const v = x[i];
        if (v >= 88) assertClose([got[i]], [dy[i]], { atol: 0, rtol: 1e-6 }, `x = ${v}`);
        if (v <= -300) assertClose([got[i]], [0], { atol: 1e-30, rtol: 0 }, `x = ${v}`);
      }
    });
  }
});
