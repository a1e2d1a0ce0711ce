import { getGpu } from "@lvm/gpu";
import { assertClose, finiteDiff, randu } from "@lvm/util/testing";
import { groupNorm, groupNormBackward, groupNormBackwardCpu, groupNormCpu } from "./groupnorm.ts";

// [B, C, H, W, groups]
const SHAPES: [number, number, number, number, number][] = [
  [1, 1, 1, 1, 1],
  [2, 3, 7, 9, 3],
  [1, 5, 9, 7, 5],
  [2, 32, 16, 16, 32],
  [1, 32, 7, 7, 8],
  [2, 6, 16, 1, 2],
  [1, 64, 45, 65, 32],
  [3, 14, 1, 1, 7], // 1x1 images: 2-element groups
];

Deno.test("groupNorm() and groupNormBackward() match f64 references", async (t) => {
  const gpu = await getGpu();
  for (const [i, [B, C, H, W, G]] of SHAPES.entries()) {
    for (const silu of [false, true]) {
      await t.step(`[${B},${C},${H},${W}] groups ${G}${silu ? " +silu" : ""}`, async () => {
        const shape = [B, C, H, W];
        const N = B * C * H * W;
        // An offset and a spread that differ per channel: the mean must be removed accurately. For
        // 2-element groups, values of opposite signs: two nearly equal values would leave a variance
        // that f32 cannot resolve, in any implementation.
        const tiny = (C / G) * H * W <= 2;
        const x = randu(N, 100 + i, -3, 3).map((v, k) =>
          tiny ? (k % 2 ? 1 : -1) * (1 + Math.abs(v)) : v * (1 + (k % 5)) + 10
        );
        const gamma = randu(C, 200 + i, 0.5, 1.5), beta = randu(C, 300 + i);
        const dy = randu(N, 400 + i);
        const X = gpu.upload(x, shape), Gm = gpu.upload(gamma, [C]), Bt = gpu.upload(beta, [C]);
        const f = groupNorm(gpu, X, Gm, Bt, G, 1e-6, { silu });
        const ref = groupNormCpu(x, shape, gamma, beta, G, 1e-6, silu);
        const [y, mean, rstd] = await gpu.readMany([f.y, f.mean, f.rstd]);
        assertClose(mean, ref.mean, { atol: 1e-5, rtol: 1e-5 }, "mean");
        assertClose(rstd, ref.rstd, { atol: 1e-5, rtol: 1e-4 }, "rstd");
        assertClose(y, ref.y, { atol: 1e-4, rtol: 1e-4 }, "y");
        const g = groupNormBackward(gpu, X, Gm, f.mean, f.rstd, gpu.upload(dy, shape), {
          silu,
          beta: Bt,
        });
        const r = groupNormBackwardCpu(x, shape, gamma, beta, G, 1e-6, dy, silu);
        const [dx, dgamma, dbeta] = await gpu.readMany([g.dx, g.dgamma, g.dbeta]);
        // dx is a difference of terms of size |dy|*rstd: scale the tolerance by the largest.
        const scale = Math.max(...ref.rstd);
        assertClose(dx, r.dx, { atol: 2e-4 * scale, rtol: 1e-3 }, "dx");
        assertClose(dgamma, r.dgamma, { atol: 1e-3, rtol: 1e-4 }, "dgamma");
        assertClose(dbeta, r.dbeta, { atol: 1e-3, rtol: 1e-4 }, "dbeta");
        for (const tt of [X, Gm, Bt, f.y, f.mean, f.rstd, g.dx, g.dgamma, g.dbeta]) tt.release();
      });
    }
  }
});

Deno.test("groupNorm() extreme values and errors", async (t) => {
  const gpu = await getGpu();
  await t.step("+-300 and a constant group (var 0 -> rstd 1/sqrt(eps))", async () => {
    const shape = [1, 4, 5, 5];
    const x = randu(100, 7, -300, 300);
    x.fill(2.5, 50, 100); // group 1 (channels 2, 3) is constant
    const gamma = new Float32Array([1, -2, 0.5, 3]), beta = new Float32Array([0, 1, -1, 2]);
    const f = groupNorm(
      gpu,
      gpu.upload(x, shape),
      gpu.upload(gamma, [4]),
      gpu.upload(beta, [4]),
      2,
      1e-6,
      {
        silu: true,
      },
    );
    const ref = groupNormCpu(x, shape, gamma, beta, 2, 1e-6, true);
    const [y, rstd] = await gpu.readMany([f.y, f.rstd]);
    assertClose(rstd, ref.rstd, { atol: 0, rtol: 1e-4 }, "rstd");
    assertClose(y, ref.y, { atol: 1e-4, rtol: 1e-4 }, "y");
  });
  await t.step("groups must divide C; silu backward needs beta", () => {
    const x = gpu.zeros([1, 6, 2, 2]), v = gpu.zeros([6]);
    let msg = "";
    try {
      groupNorm(gpu, x, v, v, 4, 1e-6);
    } catch (e) {
      msg = String(e);
    }
    if (!/groups must be a positive divisor of C = 6, got 4/.test(msg)) throw new Error(msg);
    const f = groupNorm(gpu, x, v, v, 3, 1e-6);
    msg = "";
    try {
      groupNormBackward(gpu, x, v, f.mean, f.rstd, x, { silu: true });
    } catch (e) {
      msg = String(e);
    }
    if (!/beta \(required with silu\)/.test(msg)) throw new Error(msg);
  });
});

Deno.test("groupNormBackward() matches finite differences", async (t) => {
  const gpu = await getGpu();
  const shape = [2, 4, 3, 2], N = 48, C = 4, G = 2;
  const x = randu(N, 11, -2, 2), gamma = randu(C, 12, 0.5, 1.5), beta = randu(C, 13);
  const r = randu(N, 14); // loss = sum(y * r)
  for (const silu of [false, true]) {
    await t.step(silu ? "with silu" : "plain", async () => {
      const loss = (xv: ArrayLike<number>, gv: ArrayLike<number>, bv: ArrayLike<number>) =>
        groupNormCpu(xv, shape, gv, bv, G, 1e-6, silu).y.reduce((s, v, k) => s + v * r[k], 0);
      const X = gpu.upload(x, shape), Gm = gpu.upload(gamma, [C]), Bt = gpu.upload(beta, [C]);
      const f = groupNorm(gpu, X, Gm, Bt, G, 1e-6, { silu });
      const g = groupNormBackward(gpu, X, Gm, f.mean, f.rstd, gpu.upload(r, shape), {
        silu,
        beta: Bt,
      });
      const [dx, dgamma, dbeta] = await gpu.readMany([g.dx, g.dgamma, g.dbeta]);
      const tol = { atol: 3e-3, rtol: 3e-3 };
      assertClose(dx, finiteDiff((v) => loss(v, gamma, beta), x, 1e-3), tol, "dx");
      assertClose(dgamma, finiteDiff((v) => loss(x, v, beta), gamma, 1e-3), tol, "dgamma");
      assertClose(dbeta, finiteDiff((v) => loss(x, gamma, v), beta, 1e-3), tol, "dbeta");
    });
  }
});
