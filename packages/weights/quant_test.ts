import { assert, assertEquals, assertThrows, randNormal } from "@lvm/util/testing";
import { f16BitsToF32, f32ToF16Bits } from "@lvm/util";
import { dequantize, quantize, quantizedBytes, splitBlocks } from "./quant.ts";

Deno.test("quantize()/dequantize(): GGML's Q8_0 and Q4_0 blocks", async (t) => {
  await t.step("Q8_0: a hand-made block, bytes and values", () => {
    const x = Array.from({ length: 32 }, (_, j) => (j - 16) * 0.5); // max |x| = 8 at j = 0
    const y = quantize("Q8_0", x);
    assertEquals(y.length, 34);
    const d = f16BitsToF32(y[0] | (y[1] << 8));
    assertEquals(y[0] | (y[1] << 8), f32ToF16Bits(8 / 127));
    assertEquals((y[2] << 24) >> 24, -127); // x[0] = -8
    assertEquals(y[2 + 16], 0); // x[16] = 0
    // 0.5 / (8/127) = 7.9375 -> 8; 1.5/(8/127) = 23.8125 -> 24
    assertEquals([(y[2 + 17] << 24) >> 24, (y[2 + 19] << 24) >> 24], [8, 24]);
    const back = dequantize("Q8_0", y, 32);
    assertEquals(back[0], -127 * d);
    for (let j = 0; j < 32; j++) assert(Math.abs(back[j] - x[j]) <= d / 2 + 1e-6, `element ${j}`);
  });
  await t.step("Q4_0: signed max maps to q = 0, nibbles j | j+16 << 4", () => {
    const x = new Array(32).fill(0);
    x[3] = -4; // the largest magnitude, negative: d = -4 / -8 = 0.5
    x[19] = 2; // 2 / 0.5 + 8.5 = 12.5 -> 12
    x[5] = 3.9; // 7.8 + 8.5 = 16.3 -> min(15, 16) = 15
    const y = quantize("Q4_0", x);
    assertEquals(y.length, 18);
    assertEquals(f16BitsToF32(y[0] | (y[1] << 8)), 0.5);
    assertEquals(y[2 + 3], 0 | (12 << 4)); // x[3] -> 0 (low), x[19] -> 12 (high)
    assertEquals(y[2 + 5] & 15, 15);
    assertEquals(y[2 + 0], 8 | (8 << 4)); // zeros -> 8
    const back = dequantize("Q4_0", y, 32);
    assertEquals([back[3], back[19], back[5], back[0]], [-4, 2, 3.5, 0]);
  });
  // Within half a step (a whole one for Q4_0's one-sided range), plus the f16 rounding of the
  // scale: up to |q| * d * 2^-11, under 0.07 d.
  await t.step("random rows: error within half a step, all-zero blocks exact", () => {
    const x = randNormal(32 * 37, 7);
    x.fill(0, 64, 96);
    for (const type of ["Q8_0", "Q4_0"] as const) {
      const y = quantize(type, x);
      assertEquals(y.length, quantizedBytes(type, x.length));
      const back = dequantize(type, y, x.length);
      for (let b = 0; b < x.length; b += 32) {
        const d = Math.abs(
          f16BitsToF32(y[(b / 32) * y.length / 37] | (y[(b / 32) * y.length / 37 + 1] << 8)),
        );
        for (let j = b; j < b + 32; j++) {
          assert(
            Math.abs(back[j] - x[j]) <= d * (type === "Q8_0" ? 0.5 : 1) + 0.07 * d + 1e-7,
            `${type} element ${j}`,
          );
        }
      }
      for (let j = 64; j < 96; j++) assert(back[j] === 0, `${type} zero block: ${back[j]}`);
    }
  });
  await t.step("splitBlocks(): scales two per word, quants in whole words", () => {
    const x = randNormal(96, 3);
    for (const type of ["Q8_0", "Q4_0"] as const) {
      const y = quantize(type, x);
      const s = splitBlocks(type, y);
      const B = type === "Q8_0" ? 34 : 18;
      assertEquals([s.blocks, s.scales.length, s.quants.length], [3, 2, type === "Q8_0" ? 24 : 12]);
      assertEquals(s.scales[0] & 0xffff, y[0] | (y[1] << 8));
      assertEquals(s.scales[0] >>> 16, y[B] | (y[B + 1] << 8));
      assertEquals(s.scales[1] & 0xffff, y[2 * B] | (y[2 * B + 1] << 8));
      const qb = new Uint8Array(s.quants.buffer);
      assertEquals(qb.subarray(B - 2, 2 * (B - 2)), y.subarray(B + 2, 2 * B));
    }
  });
  await t.step("lengths that are not whole blocks are refused", () => {
    assertThrows(() => quantize("Q8_0", new Float32Array(33)), RangeError, "multiple of 32");
    assertThrows(() => dequantize("Q4_0", new Uint8Array(17), 32), RangeError, "18 bytes");
    assertThrows(() => splitBlocks("Q4_0", new Uint8Array(19)), RangeError, "whole number");
  });
});
