import { getGpu } from "@lvm/gpu";
import { assertClose, finiteDiff, randu } from "@lvm/util/testing";
import {
  upsampleNearest2x,
  upsampleNearest2xBackward,
  upsampleNearest2xBackwardCpu,
  upsampleNearest2xCpu,
} from "./upsample.ts";

const SHAPES = [[1, 1, 1, 1], [2, 3, 7, 9], [1, 5, 1, 7], [2, 32, 16, 16], [1, 3, 45, 65]];

Deno.test("upsampleNearest2x() and its backward match references", async (t) => {
  const gpu = await getGpu();
  for (const [i, shape] of SHAPES.entries()) {
    await t.step(`[${shape}]`, async () => {
      const [B, C, H, W] = shape;
      const x = randu(B * C * H * W, 1 + i, -300, 300);
      const y = upsampleNearest2x(gpu, gpu.upload(x, shape));
      if (`${y.shape}` !== `${[B, C, 2 * H, 2 * W]}`) throw new Error(`shape [${y.shape}]`);
      assertClose(await gpu.readF32(y), upsampleNearest2xCpu(x, shape), { atol: 0, rtol: 0 }, "y");
      const dy = randu(y.size, 50 + i, -300, 300);
      const dx = upsampleNearest2xBackward(gpu, gpu.upload(dy, y.shape));
      assertClose(
        await gpu.readF32(dx),
        upsampleNearest2xBackwardCpu(dy, shape),
        { atol: 0, rtol: 0 },
        "dx (same summation order: exact)",
      );
    });
  }
});

Deno.test("upsampleNearest2xBackward() matches finite differences", async () => {
  const gpu = await getGpu();
  const shape = [1, 2, 3, 2];
  const x = randu(12, 3);
  const r = randu(48, 4);
  const loss = (v: ArrayLike<number>) =>
    upsampleNearest2xCpu(v, shape).reduce((s, y, k) => s + y * r[k], 0);
  const dx = upsampleNearest2xBackward(gpu, gpu.upload(r, [1, 2, 6, 4]));
  assertClose(await gpu.readF32(dx), finiteDiff(loss, x, 1e-2), { atol: 1e-4, rtol: 1e-4 }, "dx");
  let msg = "";
  try {
    upsampleNearest2xBackward(gpu, gpu.zeros([1, 1, 3, 4]));
  } catch (e) {
    msg = String(e);
  }
  if (!/spatial dims must be even/.test(msg)) throw new Error(`unexpected: ${msg}`);
});
