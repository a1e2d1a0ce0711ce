import { getGpu } from "@lvm/gpu";
import { assertClose, finiteDiff, randu } from "@lvm/util/testing";
import { rope, ropeBackward, ropeCpu, ropeInvFreq } from "./rope.ts";

// [B, T, H, D]
const SHAPES = [[1, 1, 1, 2], [1, 7, 3, 4], [2, 33, 2, 12], [1, 5, 2, 100], [2, 3, 10, 64]];
const TOL = { atol: 2e-6, rtol: 1e-5 };

Deno.test("rope()", async (t) => {
  const gpu = await getGpu();
  for (const [B, T, H, D] of SHAPES) {
    await t.step(`[${B},${T},${H},${D}] forward, backward, offsets`, async () => {
      const x = randu(B * T * H * D, B + T + H + D, -3, 3);
      const X = gpu.upload(x, [B, T, H, D]);
      const y = rope(gpu, X, { heads: H, headDim: D });
      const off = rope(gpu, X, { heads: H, headDim: D, posOffset: 4000, theta: 500000 });
      const back = ropeBackward(gpu, X, { heads: H, headDim: D, posOffset: 17 });
      const [gy, goff, gback] = await gpu.readMany([y, off, back]);
      assertClose(gy, ropeCpu(x, T, H, D), TOL, "rope");
      assertClose(goff, ropeCpu(x, T, H, D, { posOffset: 4000, theta: 500000 }), TOL, "offset");
      assertClose(gback, ropeCpu(x, T, H, D, { posOffset: 17, inverse: true }), TOL, "inverse");
      [X, y, off, back].forEach((z) => z.release());
    });
  }

  await t.step("explicit positions, past the table, in place, (B,T,H*D) layout", async () => {
    const B = 2, T = 3, H = 2, D = 6;
    const x = randu(B * T * H * D, 5, -300, 300);
    const pos = [0, 5, 4095, 4096, 9000, 2];
    const X = gpu.upload(x, [B, T, H * D]);
    const y = rope(gpu, X, {
      heads: H,
      headDim: D,
      positions: gpu.upload(pos, [B * T], "i32"),
    });
    // Positions past the 4096-entry table use in-kernel trig (accurate to ~1e-6 relative here).
    assertClose(
      await gpu.readF32(y),
      ropeCpu(x, T, H, D, { positions: pos }),
      { atol: 1e-3, rtol: 1e-5 },
      "positions",
    );
    rope(gpu, X, { heads: H, headDim: D, posOffset: 3, out: X });
    assertClose(await gpu.readF32(X), ropeCpu(x, T, H, D, { posOffset: 3 }), TOL, "in place");
  });

  await t.step("t=0 is the identity; rope then ropeBackward round-trips", async () => {
    const H = 3, D = 8, T = 9;
    const x = randu(T * H * D, 6);
    const X = gpu.upload(x, [1, T, H, D]);
    const y = rope(gpu, X, { heads: H, headDim: D, posOffset: 100 });
    const back = await gpu.readF32(ropeBackward(gpu, y, { heads: H, headDim: D, posOffset: 100 }));
    assertClose(back, x, { atol: 1e-5, rtol: 1e-5 }, "round trip");
    const y0 = await gpu.readF32(rope(gpu, X, { heads: H, headDim: D }));
    assertClose(y0.slice(0, H * D), x.slice(0, H * D), { atol: 0, rtol: 0 }, "position 0");
  });

  await t.step("backward matches finite differences of sum(dy * rope(x))", async () => {
    const T = 4, H = 2, D = 4;
    const x = randu(T * H * D, 8), dy = randu(T * H * D, 9);
    const dx = await gpu.readF32(
      ropeBackward(gpu, gpu.upload(dy, [1, T, H, D]), { heads: H, headDim: D, posOffset: 2 }),
    );
    const loss = (v: Float64Array) =>
      ropeCpu(v, T, H, D, { posOffset: 2 }).reduce((s, y, i) => s + y * dy[i], 0);
    assertClose(dx, finiteDiff(loss, x, 1e-2), { atol: 1e-4, rtol: 1e-3 }, "fd");
  });

  await t.step("inv_freq follows HF: 1 / theta^(2i/D) in f32", () => {
    const inv = ropeInvFreq(8, 10000);
    const want = [1, 0.1, 0.01, 0.001].map(Math.fround);
    assertClose(inv, want, { atol: 0, rtol: 1e-7 }, "inv_freq");
  });

  await t.step("odd head dim and bad shapes are RangeErrors", () => {
    for (
      const [shape, D, re] of [
        [[1, 2, 1, 5], 5, /headDim must be a positive even integer, got 5/],
        [[1, 2, 3, 4], 4, /x has shape \[1,2,3,4\], expected \(B, T, 2, 4\)/],
      ] as const
    ) {
      let msg = "";
      try {
        rope(gpu, gpu.zeros(shape), { heads: 2, headDim: D });
      } catch (e) {
        msg = e instanceof RangeError ? e.message : "";
      }
      if (!re.test(msg)) throw new Error(`unexpected: ${msg}`);
    }
  });
});
