import { getGpu } from "@lvm/gpu";
import { assertClose, assertEquals, randu } from "@lvm/util/testing";
import { groupNormBackwardCpu, groupNormCpu } from "./groupnorm.ts";
import { groupNormFast, groupNormFastBackward, useRowsGroupNorm } from "./groupnorm_rows.ts";

// The barrier-free GroupNorm against the CPU references, forced on whatever the adapter (and, with
// `force` false, the fallback to groupnorm.ts's kernels through the same entry points).
Deno.test("groupNormFast()", async (t) => {
  const gpu = await getGpu();
  const cases: [number[], number, number][] = [
    [[1, 32, 1, 1], 32, 1], // one element per group
    [[2, 64, 3, 5], 32, 1], // odd spatial size: scalar path
    [[3, 96, 7, 4], 32, 1], // 3 channels per group, vec4 path
    [[7, 32, 7, 7], 32, 1], // odd batch and side
    [[16, 32, 8, 8], 32, 1],
    [[2, 64, 45, 65], 32, 1],
    [[2, 32, 4, 4], 8, 300], // extreme values
  ];
  for (const [shape, G, amp] of cases) {
    for (const silu of [true, false]) {
      for (const force of [true, false]) {
        if (!force && shape[0] !== 2) continue; // the fallback only on a few shapes
        await t.step(
          `[${shape}] groups ${G} amp ${amp} silu ${silu}${force ? "" : " (fallback)"}`,
          async () => {
            const [B, C, H, W] = shape, n = B * C * H * W;
            const x = randu(n, n + C, -amp, amp).map((v, i) => v + (i % 7) * amp * 0.1);
            const dy = randu(n, 2);
            const g = randu(C, 3, 0.5, 1.5), b = randu(C, 4);
            const xt = gpu.upload(x, shape), dyt = gpu.upload(dy, shape);
            const gt = gpu.upload(g, [C]), bt = gpu.upload(b, [C]);
            const r = groupNormFast(gpu, xt, gt, bt, G, 1e-6, silu, force);
            const ref = groupNormCpu(x, shape, g, b, G, 1e-6, silu);
            assertClose(await gpu.readF32(r.y), ref.y, { atol: 1e-5, rtol: 1e-4 }, "y");
            assertClose(
              await gpu.readF32(r.mean),
              ref.mean,
              { atol: 1e-5 * amp, rtol: 1e-4 },
              "mean",
            );
            assertClose(await gpu.readF32(r.rstd), ref.rstd, { atol: 1e-5, rtol: 1e-4 }, "rstd");
            const bw = groupNormFastBackward(gpu, xt, gt, bt, r.mean, r.rstd, dyt, silu, force);
            const rb = groupNormBackwardCpu(x, shape, g, b, G, 1e-6, dy, silu);
            assertClose(await gpu.readF32(bw.dx), rb.dx, { atol: 1e-4 / amp, rtol: 1e-3 }, "dx");
            assertClose(
              await gpu.readF32(bw.dgamma),
              rb.dgamma,
              { atol: 1e-3, rtol: 1e-3 },
              "dgamma",
            );
            assertClose(await gpu.readF32(bw.dbeta), rb.dbeta, { atol: 1e-3, rtol: 1e-3 }, "dbeta");
            // With an addend (a residual block's skip gradient): dx + add, the rest the same.
            const add = randu(n, 5, -3, 3), addt = gpu.upload(add, shape);
            const ba = groupNormFastBackward(
              gpu,
              xt,
              gt,
              bt,
              r.mean,
              r.rstd,
              dyt,
              silu,
              force,
              addt,
            );
            assertClose(
              await gpu.readF32(ba.dx),
              rb.dx.map((v, i) => v + add[i]),
              { atol: 1e-4 / amp + 1e-6, rtol: 1e-3 },
              "dx + add",
            );
            assertEquals(await gpu.readF32(ba.dgamma), await gpu.readF32(bw.dgamma), "dgamma");
            for (
              const t of [xt, dyt, gt, bt, r.y, r.mean, r.rstd, bw.dx, bw.dgamma, bw.dbeta, addt]
            ) {
              t.release();
            }
            for (const t of [ba.dx, ba.dgamma, ba.dbeta]) t.release();
          },
        );
      }
    }
  }
  await t.step("useRowsGroupNorm(): CPU adapters, except a forward with few groups", () => {
    const cpu = { kind: "cpu" } as typeof gpu, real = { kind: "gpu" } as typeof gpu;
    assertEquals(useRowsGroupNorm(cpu, 64, false), false);
    assertEquals(useRowsGroupNorm(cpu, 65, false), true);
    assertEquals(useRowsGroupNorm(cpu, 1, true), true);
    assertEquals(useRowsGroupNorm(real, 4096, true), false);
    assertEquals(useRowsGroupNorm(real, 1, false, true), true);
  });
});
