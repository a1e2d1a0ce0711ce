import { getGpu } from "@lvm/gpu";
import { assertClose, finiteDiff, randu } from "@lvm/util/testing";
import { swiglu, swigluBackward, swigluBackwardCpu, swigluCpu } from "./swiglu.ts";

const SHAPES = [[1, 1], [1, 7], [45, 65], [3, 1025]];

Deno.test("swiglu()", async (t) => {
  const gpu = await getGpu();
  /** swiglu and swigluBackward of (g, u, dh) in `shape` against the CPU references. */
  const checkAgainstCpu = async (
    g: Float32Array,
    u: Float32Array,
    dh: Float32Array,
    shape: number[],
    label: string,
  ) => {
    const G = gpu.upload(g, shape), U = gpu.upload(u, shape), DH = gpu.upload(dh, shape);
    const h = swiglu(gpu, G, U);
    const { dgate, dup } = swigluBackward(gpu, G, U, DH);
    const [hh, dg, du] = await gpu.readMany([h, dgate, dup]);
    const ref = swigluBackwardCpu(g, u, dh);
    assertClose(hh, swigluCpu(g, u), { atol: 1e-6, rtol: 1e-5 }, `h${label}`);
    assertClose(dg, ref.dgate, { atol: 1e-6, rtol: 1e-5 }, `dgate${label}`);
    assertClose(du, ref.dup, { atol: 1e-6, rtol: 1e-5 }, `dup${label}`);
    [G, U, DH, h, dgate, dup].forEach((x) => x.release());
  };
  for (const shape of SHAPES) {
    await t.step(`[${shape}] forward and backward`, async () => {
      const n = shape[0] * shape[1];
      const g = randu(n, 11, -6, 6), u = randu(n, 12, -3, 3), dh = randu(n, 13);
      await checkAgainstCpu(g, u, dh, shape, "");
    });
  }

  await t.step("extreme values stay finite and exact", async () => {
    const g = new Float32Array([-300, -88, -20, -1e-30, 0, 1e-30, 20, 88, 300]);
    const u = new Float32Array([300, -300, 2, 1, 5, -1, 0.5, -2, 300]);
    const dh = new Float32Array(g.length).fill(1.5);
    await checkAgainstCpu(g, u, dh, [g.length], " extremes");
  });

  await t.step("backward matches finite differences of the CPU reference", async () => {
    const n = 37;
    const g = randu(n, 21, -4, 4), u = randu(n, 22, -2, 2), dh = randu(n, 23);
    const { dgate, dup } = swigluBackward(
      gpu,
      gpu.upload(g, [n]),
      gpu.upload(u, [n]),
      gpu.upload(dh, [n]),
    );
    const [dg, du] = await gpu.readMany([dgate, dup]);
    // L = sum(dh * silu(g) * u), in f64.
    const loss = (gg: ArrayLike<number>, uu: ArrayLike<number>) => {
      let s = 0;
      for (let i = 0; i < n; i++) s += dh[i] * gg[i] / (1 + Math.exp(-gg[i])) * uu[i];
      return s;
    };
    assertClose(dg, finiteDiff((x) => loss(x, u), g, 1e-4), { atol: 1e-4, rtol: 1e-3 }, "fd dgate");
    assertClose(du, finiteDiff((x) => loss(g, x), u, 1e-4), { atol: 1e-4, rtol: 1e-3 }, "fd dup");
  });

  await t.step("shape mismatch is a RangeError naming the input", () => {
    let msg = "";
    try {
      swiglu(gpu, gpu.upload([1, 2], [1, 2]), gpu.upload([1, 2, 3], [1, 3]));
    } catch (e) {
      msg = e instanceof RangeError ? e.message : "";
    }
    if (!/up has shape \[1,3\]/.test(msg)) throw new Error(`unexpected error: ${msg}`);
  });
});
