import { getGpu } from "@lvm/gpu";
import { assertClose, finiteDiff, randu } from "@lvm/util/testing";
import {
  addRmsnorm,
  rmsnorm,
  rmsnormBackward,
  rmsnormBackwardCpu,
  rmsnormCpu,
  type RmsnormVariant,
} from "./rmsnorm.ts";

// [N, C]: vec4 (64, 640) and scalar (1, 7, 65) rows; N over one dw chunk (300 > 256).
const SHAPES = [[1, 1], [7, 7], [45, 65], [300, 64], [3, 640]];
const VARIANTS: RmsnormVariant[] = ["rows", "wg"];
const TOL = { atol: 1e-5, rtol: 1e-5 };

Deno.test("rmsnorm()", async (t) => {
  const gpu = await getGpu();
  for (const variant of VARIANTS) {
    for (const [N, C] of SHAPES) {
      await t.step(`${variant} [${N},${C}] forward, addRmsnorm, backward`, async () => {
        const x = randu(N * C, N + C, -3, 3), res = randu(N * C, 2, -2, 2);
        const w = randu(C, 3, 0.5, 1.5), dy = randu(N * C, 4);
        const X = gpu.upload(x, [N, C]), R = gpu.upload(res, [N, C]);
        const W = gpu.upload(w, [C]), DY = gpu.upload(dy, [N, C]);
        const f = rmsnorm(gpu, X, W, 1e-6, { variant });
        const a = addRmsnorm(gpu, X, R, W, 1e-6, { variant });
        const b = rmsnormBackward(gpu, X, W, f.rstd, DY, { variant });
        const [y, rstd, sum, ay, arstd, dx, dw] = await gpu.readMany([
          f.y,
          f.rstd,
          a.sum,
          a.y,
          a.rstd,
          b.dx,
          b.dw,
        ]);
        const ref = rmsnormCpu(x, w, C);
        assertClose(y, ref.y, TOL, "y");
        assertClose(rstd, ref.rstd, TOL, "rstd");
        const s = x.map((v, i) => v + res[i]);
        const aref = rmsnormCpu(s, w, C);
        assertClose(sum, s, { atol: 0, rtol: 0 }, "sum");
        assertClose(ay, aref.y, TOL, "add y");
        assertClose(arstd, aref.rstd, TOL, "add rstd");
        const bref = rmsnormBackwardCpu(x, w, dy, C);
        assertClose(dx, bref.dx, { atol: 1e-5, rtol: 1e-4 }, "dx");
        assertClose(dw, bref.dw, { atol: 1e-4, rtol: 1e-4 }, "dw");
        [X, R, W, DY, f.y, f.rstd, a.sum, a.y, a.rstd, b.dx, b.dw].forEach((z) => z.release());
      });
    }
  }

  await t.step("extreme values: +-300, tiny rows, zero rows", async () => {
    const C = 12, N = 4;
    const x = new Float32Array(N * C);
    for (let c = 0; c < C; c++) {
      x[c] = c % 2 ? 300 : -300; // large
      x[C + c] = 1e-20 * (c + 1); // below eps: rstd ~ 1/sqrt(eps)
      x[2 * C + c] = 0; // all zero
      x[3 * C + c] = c === 5 ? 3e4 : 1e-3; // one dominant channel
    }
    const w = randu(C, 8);
    for (const variant of VARIANTS) {
      const f = rmsnorm(gpu, gpu.upload(x, [N, C]), gpu.upload(w, [C]), 1e-6, { variant });
      const ref = rmsnormCpu(x, w, C);
      assertClose(await gpu.readF32(f.y), ref.y, TOL, `${variant} y extremes`);
      assertClose(await gpu.readF32(f.rstd), ref.rstd, TOL, `${variant} rstd extremes`);
    }
  });

  await t.step("accumulate into existing dx and dw", async () => {
    const N = 5, C = 8;
    const x = randu(N * C, 31), w = randu(C, 32), dy = randu(N * C, 33);
    const dx0 = randu(N * C, 34), dw0 = randu(C, 35);
    const X = gpu.upload(x, [N, C]), W = gpu.upload(w, [C]);
    const { rstd } = rmsnorm(gpu, X, W);
    const dxAccumulate = gpu.upload(dx0, [N, C]), dwAccumulate = gpu.upload(dw0, [C]);
    const b = rmsnormBackward(gpu, X, W, rstd, gpu.upload(dy, [N, C]), {
      dxAccumulate,
      dwAccumulate,
    });
    if (b.dx !== dxAccumulate || b.dw !== dwAccumulate) throw new Error("not returned in place");
    const ref = rmsnormBackwardCpu(x, w, dy, C);
    assertClose(await gpu.readF32(b.dx), ref.dx.map((v, i) => v + dx0[i]), TOL, "dx+=");
    assertClose(await gpu.readF32(b.dw), ref.dw.map((v, i) => v + dw0[i]), TOL, "dw+=");
  });

  await t.step("backward matches finite differences of the CPU reference", async () => {
    const N = 3, C = 7, eps = 1e-6;
    const x = randu(N * C, 41, -2, 2), w = randu(C, 42), dy = randu(N * C, 43);
    const X = gpu.upload(x, [N, C]), W = gpu.upload(w, [C]);
    const { rstd } = rmsnorm(gpu, X, W, eps);
    const b = rmsnormBackward(gpu, X, W, rstd, gpu.upload(dy, [N, C]));
    // L = sum(dy * rmsnorm(x, w)), f64.
    const loss = (xx: ArrayLike<number>, ww: ArrayLike<number>) => {
      let s = 0;
      for (let n = 0; n < N; n++) {
        let ss = 0;
        for (let c = 0; c < C; c++) ss += xx[n * C + c] ** 2;
        const r = 1 / Math.sqrt(ss / C + eps);
        for (let c = 0; c < C; c++) s += dy[n * C + c] * ww[c] * xx[n * C + c] * r;
      }
      return s;
    };
    const [dx, dw] = await gpu.readMany([b.dx, b.dw]);
    const tol = { atol: 1e-4, rtol: 1e-3 };
    assertClose(dx, finiteDiff((v) => loss(v, w), x, 1e-4), tol, "fd dx");
    assertClose(dw, finiteDiff((v) => loss(x, v), w, 1e-4), tol, "fd dw");
  });

  await t.step("bad shapes are RangeErrors naming the input", () => {
    let msg = "";
    try {
      rmsnorm(gpu, gpu.zeros([2, 4]), gpu.zeros([5]));
    } catch (e) {
      msg = e instanceof RangeError ? e.message : "";
    }
    if (!/w has shape \[5\], expected \[4\]/.test(msg)) throw new Error(`unexpected: ${msg}`);
  });
});
