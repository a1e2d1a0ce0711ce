import { groupNormBackwardCpu, groupNormCpu } from "@lvm/kernels";
import { assertClose, randn } from "@lvm/kernels/testing";
import { getGpu } from "./_deps.ts";
import { groupNormFast, groupNormFastBackward } from "./_groupnorm.ts";

// The barrier-free GroupNorm against @lvm/kernels' CPU references, forced on whatever the adapter.
Deno.test("groupNormFast()", async (t) => {
  const gpu = await getGpu();
  const cases: [number[], number, number][] = [
    [[1, 32, 1, 1], 32, 1], // one element per group
    [[2, 64, 3, 5], 32, 1], // odd spatial size: scalar path
    [[3, 96, 7, 4], 32, 1], // 3 channels per group, vec4 path
    [[16, 32, 8, 8], 32, 1],
    [[2, 64, 45, 65], 32, 1],
    [[2, 32, 4, 4], 8, 300], // extreme values
  ];
  for (const [shape, G, amp] of cases) {
    for (const silu of [true, false]) {
      await t.step(`[${shape}] groups ${G} amp ${amp} silu ${silu}`, async () => {
        const [B, C, H, W] = shape, n = B * C * H * W;
        const x = randn(n, n + C, -amp, amp).map((v, i) => v + (i % 7) * amp * 0.1);
        const dy = randn(n, 2);
        const g = randn(C, 3, 0.5, 1.5), b = randn(C, 4);
        const xt = gpu.upload(x, shape), dyt = gpu.upload(dy, shape);
        const gt = gpu.upload(g, [C]), bt = gpu.upload(b, [C]);
        const r = groupNormFast(gpu, xt, gt, bt, G, 1e-6, silu, true);
        const ref = groupNormCpu(x, shape, g, b, G, 1e-6, silu);
        assertClose(await gpu.readF32(r.y), ref.y, { atol: 1e-5, rtol: 1e-4 }, "y");
        assertClose(await gpu.readF32(r.mean), ref.mean, { atol: 1e-5 * amp, rtol: 1e-4 }, "mean");
        assertClose(await gpu.readF32(r.rstd), ref.rstd, { atol: 1e-5, rtol: 1e-4 }, "rstd");
        const bw = groupNormFastBackward(gpu, xt, gt, bt, r.mean, r.rstd, dyt, silu, true);
        const rb = groupNormBackwardCpu(x, shape, g, b, G, 1e-6, dy, silu);
        assertClose(await gpu.readF32(bw.dx), rb.dx, { atol: 1e-4 / amp, rtol: 1e-3 }, "dx");
        assertClose(await gpu.readF32(bw.dgamma), rb.dgamma, { atol: 1e-3, rtol: 1e-3 }, "dgamma");
        assertClose(await gpu.readF32(bw.dbeta), rb.dbeta, { atol: 1e-3, rtol: 1e-3 }, "dbeta");
        for (const t of [xt, dyt, gt, bt, r.y, r.mean, r.rstd, bw.dx, bw.dgamma, bw.dbeta]) {
          t.release();
        }
      });
    }
  }
});
