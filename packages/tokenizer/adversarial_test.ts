/**
 * The PatchGAN discriminator: its backward (4x4 convs, stride 2, LeakyReLU) against finite
 * differences of a CPU reference (small steps: a LeakyReLU kink inside a step would skew one). Its
 * training inside the trainer (switches on at `start`, checkpoints and resumes exactly) is tested
 * with the loop, in @lvm/train's vqgan_test.ts.
 */
import { conv2dCpu } from "@lvm/kernels";
import { assertClose, assertEquals, finiteDiff, randu } from "@lvm/util/testing";
import { getGpu } from "./_deps.ts";
import { PatchDiscriminator } from "./adversarial.ts";
import { TRAIN_DEFAULTS } from "./train.ts";

const leaky = (v: Float32Array) => v.map((a) => (a > 0 ? a : 0.2 * a));

/** CPU reference of D: sum(logits * R). */
function dCpu(
  w: Float32Array[],
  x: Float32Array,
  B: number,
  C: number,
  S: number,
  R: Float32Array,
): number {
  const h1 = leaky(
    conv2dCpu(x, w[0], w[1], { xShape: [B, 3, S, S], wShape: [C, 3, 4, 4], stride: 2, pad: 1 }),
  );
  const s1 = S / 2;
  const h2 = leaky(
    conv2dCpu(h1, w[2], w[3], {
      xShape: [B, C, s1, s1],
      wShape: [2 * C, C, 4, 4],
      stride: 2,
      pad: 1,
    }),
  );
  const s2 = s1 / 2;
  const l = conv2dCpu(h2, w[4], w[5], {
    xShape: [B, 2 * C, s2, s2],
    wShape: [1, 2 * C, 4, 4],
    pad: 1,
  });
  let s = 0;
  for (let i = 0; i < l.length; i++) s += l[i] * R[i];
  return s;
}

Deno.test("PatchDiscriminator()", async (t) => {
  const gpu = await getGpu();
  await t.step("backward matches finite differences of the CPU reference", async () => {
    const B = 2, C = 8, S = 16;
    const d = new PatchDiscriminator(gpu, { start: 1, weight: 1, channels: C }, TRAIN_DEFAULTS);
    const ws = (await gpu.readMany(d.layers.flatMap((l) => [l.w, l.b]))) as Float32Array[];
    const x = randu(B * 3 * S * S, 5, 0, 1);
    const xt = gpu.upload(x, [B, 3, S, S]);
    const c = d.forward(xt);
    assertEquals(c.logits.shape, [B, 1, 3, 3]);
    const R = randu(c.logits.size, 6);
    assertClose(
      [(await gpu.readF32(c.logits)).reduce((a, v, i) => a + v * R[i], 0)],
      [dCpu(ws, x, B, C, S, R)],
      { atol: 1e-4, rtol: 1e-4 },
      "D(x)",
    );
    const { grads, dx } = d.backward(c, gpu.upload(R, c.logits.shape), true);
    const names = [
      "disc.0.weight",
      "disc.0.bias",
      "disc.1.weight",
      "disc.1.bias",
      "disc.2.weight",
      "disc.2.bias",
    ];
    for (let k = 0; k < 6; k++) {
      const idx = [0, 7, ws[k].length - 1].filter((i) => i < ws[k].length);
      const fd = finiteDiff(
        (v) => {
          const w2 = ws.slice();
          w2[k] = Float32Array.from(v);
          return dCpu(w2, x, B, C, S, R);
        },
        ws[k],
        1e-3,
        idx,
      );
      const g = await gpu.readF32(grads.get(names[k])!);
      assertClose(idx.map((i) => g[i]), fd, { atol: 2e-3, rtol: 1e-2 }, `d${names[k]}`);
    }
    const idx = [3, 100, x.length - 1];
    const fdx = finiteDiff((v) => dCpu(ws, Float32Array.from(v), B, C, S, R), x, 1e-3, idx);
    const gx = await gpu.readF32(dx!);
    assertClose(idx.map((i) => gx[i]), fdx, { atol: 2e-3, rtol: 1e-2 }, "dx");
    d.release();
    xt.release();
  });
});
