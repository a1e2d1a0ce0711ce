import { getGpu, type Gpu } from "@lvm/gpu";
import { assert, assertClose, assertEquals, assertThrows, randu } from "@lvm/util/testing";
import { dequantize, quantize, type QuantType } from "@lvm/weights";
import {
  embeddingQ,
  embeddingQCpu,
  linearAny,
  linearQ,
  linearQCpu,
  linearQIntCpu,
  type QuantLayout,
  type QuantVariant,
  QuantWeight,
} from "./quant_matmul.ts";

const TYPES: QuantType[] = ["Q8_0", "Q4_0"];
const VARIANTS: QuantVariant[] = ["gemv", "gemvInt", "gemvWg", "blocked", "tiled"];
const LAYOUTS: QuantLayout[] = ["storage", "texture"];

/** f32 accumulation over K terms of size ~|x||w|: the error grows with K. */
function tol(K: number) {
  return { atol: 1e-5 + 3e-7 * K, rtol: 1e-4 };
}

/** The variant linearQ runs: gemvInt when forced or chosen (quantizeX, one row, CPU adapter). */
function runs(gpu: Gpu, M: number, v?: QuantVariant, qx = false): QuantVariant | "auto" {
  return v ?? (gpu.kind === "cpu" && M === 1 && qx ? "gemvInt" : "auto");
}

/**
 * The error gemvInt's quantized x may add to the exact product, per output: x's rounding to
 * xq dx is at most dx / 2 per element (a hair more where x * (1 / dx) is off by an ulp), so
 * |y - y_exact| <= sum_b dx_b / 2 * sum_{k in b} |w_k|.
 */
function xQuantBound(x: Float32Array, w: Float32Array, N: number, K: number): Float32Array {
  const M = x.length / K, nb = K / 32, out = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let e = 0;
      for (let b = 0; b < nb; b++) {
        let amax = 0, wsum = 0;
        for (let k = b * 32; k < b * 32 + 32; k++) {
          amax = Math.max(amax, Math.abs(x[m * K + k]));
          wsum += Math.abs(w[n * K + k]);
        }
        e += (amax / 127) * 0.5001 * wsum;
      }
      out[m * N + n] = e;
    }
  }
  return out;
}

/**
 * W [N, K] in +-0.5 quantized as `type`; x (M, K) in +-1; GPU vs linearQCpu, or for gemvInt vs
 * linearQIntCpu (the same math: x quantized) and within {@link xQuantBound} of linearQCpu.
 */
async function check(
  gpu: Gpu,
  type: QuantType,
  M: number,
  N: number,
  K: number,
  v?: QuantVariant,
  layout?: QuantLayout,
  quantizeX?: boolean,
) {
  const w = randu(N * K, N + K, -0.5, 0.5);
  const bytes = quantize(type, w);
  const x = randu(M * K, M + 7);
  const W = QuantWeight.fromBlocks(gpu, type, [N, K], bytes, { layout, quantizeX });
  if (layout) assertEquals(W.layout, layout);
  const X = gpu.upload(x, [M, K]);
  const y = linearQ(gpu, X, W, { variant: v });
  assertEquals(y.shape, [M, N]);
  const label = `${type} ${runs(gpu, M, v, quantizeX)} ${W.layout} M=${M} N=${N} K=${K}`;
  const got = await gpu.readF32(y), exact = linearQCpu(x, type, bytes, N, K);
  if (runs(gpu, M, v, quantizeX) === "gemvInt") {
    assertClose(got, linearQIntCpu(x, type, bytes, N, K), tol(K), label);
    const wq = dequantize(type, bytes, N * K), bound = xQuantBound(x, wq, N, K);
    for (let i = 0; i < got.length; i++) {
      const e = Math.abs(got[i] - exact[i]);
      assert(
        e <= bound[i] + tol(K).atol,
        `${label}: output ${i} is ${e} off the exact product (bound ${bound[i]})`,
      );
    }
  } else {
    assertClose(got, exact, tol(K), label);
  }
  for (const t of [X, y, W]) t.release();
}

Deno.test("linearQ() matches linearQCpu on odd shapes, both types, every variant", async (t) => {
  const gpu = await getGpu();
  const shapes: [number, number, number][] = [
    [1, 1, 32],
    [1, 7, 96],
    [3, 45, 160],
    [17, 129, 96],
    [33, 7, 64],
    [70, 45, 32], // blocked's 16-row tiles, a partial one
  ];
  for (const v of VARIANTS) {
    for (const layout of LAYOUTS) {
      await t.step(`${v}, ${layout}`, async () => {
        for (const type of v === "gemvInt" ? ["Q4_0" as const] : TYPES) {
          for (const [M, N, K] of shapes) await check(gpu, type, M, N, K, v, layout);
        }
      });
    }
  }
  await t.step("automatic choice, K beyond one uniform chunk (gemv splits K)", async () => {
    for (const type of TYPES) {
      for (const layout of LAYOUTS) {
        // 3 chunks, rows not a multiple of 256 (and of 8 blocks). Where 8 such rows of Q8_0
        // blocks are wider than the adapter's textures (Chromium's 8192 texels), the texture
        // layout refuses them (tested below) and there is nothing to run.
        const K = 16384 + 4096 + 96;
        const wide = (K / 32) * (type === "Q8_0" ? 2 : 1) * 8 > gpu.limits.maxTextureDimension2D;
        if (!(layout === "texture" && wide)) await check(gpu, type, 1, 45, K, undefined, layout);
        await check(gpu, type, 1, 13, 4096, undefined, layout);
        await check(gpu, type, 5, 13, 4096, undefined, layout);
      }
    }
    for (const layout of LAYOUTS) {
      await check(gpu, "Q4_0", 1, 45, 16384 + 4096 + 96, undefined, layout, true);
      await check(gpu, "Q4_0", 5, 13, 4096, undefined, layout, true); // blocked: exact
    }
  });
  // Groups of 8 rows past the texture height go to the next layer: 2 layers and a partial group.
  const N2 = 8 * gpu.limits.maxTextureDimension2D + 133;
  await t.step(`texture layout over several layers (${N2} rows)`, async () => {
    await check(gpu, "Q4_0", 1, N2, 96, "gemvInt", "texture");
    for (const type of TYPES) {
      await check(gpu, type, 1, N2, 64, "gemv", "texture");
      await check(gpu, type, 2, N2, 64, "blocked", "texture");
    }
  });
});

/** Bit-exact but for the sign of zero (a zero block's d = 0 times q - 8 < 0 is -0 on the CPU). */
const EXACT = { atol: 0, rtol: 0 };

Deno.test("linearQ(): one-hot rows read back exactly the dequantized weights", async () => {
  const gpu = await getGpu();
  // K % 256 == 0 exercises gemv's wide scale loads, 96 the per-block ones.
  for (const [N, K] of [[45, 96], [7, 256]]) {
    for (const type of TYPES) {
      // Extreme magnitudes: the f16 scales span a wide range, zero blocks give d = 0.
      const w = randu(N * K, 3, -300, 300);
      for (let k = 0; k < 32; k++) w[k] = 0;
      for (let k = 32; k < 64; k++) w[k] *= 1e-4;
      const bytes = quantize(type, w);
      const ref = dequantize(type, bytes, N * K); // [N, K]
      for (const layout of LAYOUTS) {
        const W = QuantWeight.fromBlocks(gpu, type, [N, K], bytes, { layout });
        // Identity x (K, K): y = W^T, y[k, n] = W[n, k].
        const eye = new Float32Array(K * K);
        for (let k = 0; k < K; k++) eye[k * K + k] = 1;
        const X = gpu.upload(eye, [K, K]);
        const want = new Float32Array(K * N);
        for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) want[k * N + n] = ref[n * K + k];
        // gemvInt quantizes x: its own tests.
        for (const v of VARIANTS.filter((v) => v !== "gemvInt")) {
          const y = await gpu.readF32(linearQ(gpu, X, W, { variant: v }));
          assertClose(y, want, EXACT, `${type} ${v} ${layout} [${N}, ${K}]`);
        }
        // gemv, row by row (its x goes through the uniform buffer).
        const row = gpu.upload(eye.subarray(5 * K, 6 * K), [1, K]);
        const y5 = await gpu.readF32(linearQ(gpu, row, W, { variant: "gemv" }));
        assertClose(y5, want.subarray(5 * N, 6 * N), EXACT, `${type} gemv ${layout} row 5`);
        assertEquals([...await W.readF32()], [...ref], `${type} ${layout} readF32`);
        assertEquals([...await W.readBlocks()], [...bytes], `${type} ${layout} readBlocks`);
        for (const t of [W, X, row]) t.release();
      }
    }
  }
});

Deno.test("linearQ() gemvInt: extreme x, zero blocks, x chunks, Q8_0 refused", async () => {
  const gpu = await getGpu();
  for (const layout of LAYOUTS) {
    for (const [N, K] of [[45, 96], [13, 16384 + 4096 + 96], [70, 256]]) {
      const w = randu(N * K, 5, -300, 300);
      const bytes = quantize("Q4_0", w);
      // x: +-300, a zero block, a block of tiny values, one with a single non-zero (xq = +-127).
      const x = randu(2 * K, 6, -300, 300);
      x.fill(0, 0, 32);
      for (let k = 32; k < 64; k++) x[k] *= 1e-6;
      x.fill(0, K, K + 32);
      x[K + 5] = -2;
      const W = QuantWeight.fromBlocks(gpu, "Q4_0", [N, K], bytes, { layout });
      const want = linearQIntCpu(x, "Q4_0", bytes, N, K);
      // Row by row (M = 2 runs gemvInt once per row), K past one 512-block chunk for the second shape.
      const X = gpu.upload(x, [2, K]);
      const y = await gpu.readF32(linearQ(gpu, X, W, { variant: "gemvInt" }));
      const scale = Math.max(...want.map(Math.abs));
      assertClose(
        y,
        want,
        { atol: scale * 1e-6, rtol: 1e-5 },
        `Q4_0 gemvInt ${layout} [${N}, ${K}]`,
      );
      for (const t of [W, X]) t.release();
    }
  }
  const W8 = QuantWeight.fromF32(gpu, "Q8_0", [2, 32], new Float32Array(64));
  assertThrows(
    () => linearQ(gpu, gpu.zeros([1, 32]), W8, { variant: "gemvInt" }),
    RangeError,
    "Q4_0",
  );
  W8.release();
  assertThrows(
    () => QuantWeight.fromF32(gpu, "Q8_0", [2, 32], new Float32Array(64), { quantizeX: true }),
    RangeError,
    "Q4_0",
  );
});

Deno.test("embeddingQ() gathers exactly the dequantized rows", async () => {
  const gpu = await getGpu();
  for (const type of TYPES) {
    for (const [V, C] of [[1, 32], [45, 96], [7, 4096]]) {
      const bytes = quantize(type, randu(V * C, V, -2, 2));
      for (const layout of LAYOUTS) {
        const T = QuantWeight.fromBlocks(gpu, type, [V, C], bytes, { layout });
        const ids = [0, V - 1, Math.floor(V / 2), 0, V - 1];
        const I = gpu.upload(ids, [5], "i32");
        const out = embeddingQ(gpu, I, T);
        assertEquals(out.shape, [5, C]);
        assertEquals([...await gpu.readF32(out)], [...embeddingQCpu(ids, type, bytes, V, C)]);
        for (const t of [T, I, out]) t.release();
      }
    }
  }
});

Deno.test("QuantWeight.fromF32 quantizes like @lvm/weights; linearAny dispatches", async () => {
  const gpu = await getGpu();
  const w = randu(7 * 64, 9);
  const W = QuantWeight.fromF32(gpu, "Q4_0", [7, 64], w);
  assertEquals([...await W.readBlocks()], [...quantize("Q4_0", w)]);
  // Texture layout: per row 2 quant texels and 1 texel of scales (8 slots, 2 used), 16 bytes
  // each, rows padded to a group of 8.
  assertEquals(W.bytes, W.layout === "texture" ? 8 * 3 * 16 : 7 * 2 * 18);
  const x = gpu.upload(randu(3 * 64, 4), [3, 64]);
  const a = await gpu.readF32(linearAny(gpu, x, W));
  const Wf = gpu.upload(await W.readF32(), [7, 64]);
  assertClose(a, await gpu.readF32(linearAny(gpu, x, Wf)), tol(64));
  assertThrows(() => linearAny(gpu, x, W, gpu.zeros([7])), RangeError, "no bias");
  W.release();
  assert(W.released);
  assertThrows(() => linearQ(gpu, x, W), RangeError, "released");
  x.release();
  Wf.release();
});

Deno.test("QuantWeight and linearQ report bad inputs", async () => {
  const gpu = await getGpu();
  assertThrows(
    () => QuantWeight.fromF32(gpu, "Q8_0", [2, 48], new Float32Array(96)),
    RangeError,
    "multiple of 32",
  );
  assertThrows(
    () => QuantWeight.fromF32(gpu, "Q8_0", [2, 32], new Float32Array(63)),
    RangeError,
    "needs 64 values",
  );
  assertThrows(
    () => QuantWeight.fromBlocks(gpu, "Q4_0", [2, 32], new Uint8Array(18)),
    RangeError,
    "needs 2 blocks",
  );
  const W = QuantWeight.fromF32(gpu, "Q8_0", [2, 32], new Float32Array(64));
  assertThrows(() => linearQ(gpu, gpu.zeros([1, 64]), W), RangeError, "(..., 32)");
  assertThrows(() => linearQ(gpu, gpu.zeros([1, 32], "f16"), W), TypeError, "f32");
  W.release();
});

Deno.test("QuantWeight: rows too long for the texture layout take storage buffers", async () => {
  const gpu = await getGpu();
  // Q8_0 in textures: 2 texels per block of a row, 8 rows side by side, so 16 texels per block.
  const N = 3, K = 32 * (Math.floor(gpu.limits.maxTextureDimension2D / 16) + 1);
  const bytes = quantize("Q8_0", randu(N * K, 11, -1, 1));
  assertThrows(
    () => QuantWeight.fromBlocks(gpu, "Q8_0", [N, K], bytes, { layout: "texture" }),
    RangeError,
    "does not fit",
  );
  const W = QuantWeight.fromBlocks(gpu, "Q8_0", [N, K], bytes);
  assertEquals(W.layout, "storage");
  assertEquals([...await W.readBlocks()], [...bytes]);
  W.release();
});
