import { getGpu, type Gpu } from "@lvm/gpu";
import {
  assert,
  assertClose,
  assertEquals,
  assertThrows,
  fewCases,
  finiteDiff,
  randu,
} from "@lvm/util/testing";
import {
  conv2d,
  conv2dBackward,
  conv2dBackwardCpu,
  conv2dCpu,
  type Conv2dCpuArgs,
  type Conv2dForwardOptions,
  type Conv2dGrads,
  Conv2dGroupStats,
  conv2dReleaseTextures,
  Conv2dStash,
  conv2dTile,
  conv2dTuning,
  Conv2dWeightCache,
} from "./conv2d.ts";
import { groupNormCpu } from "./groupnorm.ts";
import { groupNormAffineFromStats, groupNormPlaneAffine } from "./groupnorm_rows.ts";

interface Case {
  B: number;
  Cin: number;
  H: number;
  W: number;
  Cout: number;
  K: number;
  o: Conv2dForwardOptions;
  bias?: boolean;
  res?: boolean;
  /** The backward's dx conv also runs the default tile (else the small one). */
  bwdDefault?: boolean;
  /** Winograd chunks of this many tile rows ({@link conv2dTuning}'s `w43Rows`). */
  rows?: number;
  /** F(4x4)'s GEMM takes (product, tile) pairs across its lanes (5 tiles per product). */
  flat?: boolean;
  /** Also through F(8x8): the Winograd cases that cover its layouts (the rest share them). */
  f8?: boolean;
  /** The forward's GEMM takes 12 output channels per invocation (one tile per product). */
  cot12?: boolean;
}

// Most cases pin a small register tile: the big default tiles take seconds to compile on lavapipe.
// Three cases run the default tile table (the production kernels; a large 1x1 output's 16-pixel
// rows, partial at the right edge).
const SMALL = { cot: 4, py: 2, px: 4 };
const CASES: Case[] = [
  {
    B: 1,
    Cin: 12,
    H: 33,
    W: 36,
    Cout: 20,
    K: 1,
    o: {},
    bias: true,
    res: true,
    bwdDefault: true,
  },
  { B: 2, Cin: 3, H: 7, W: 9, Cout: 5, K: 3, o: { pad: 1, tile: SMALL }, bias: true },
  {
    B: 1,
    Cin: 5,
    H: 16,
    W: 16,
    Cout: 32,
    K: 3,
    o: { pad: 1 },
    bias: true,
    res: true,
    bwdDefault: true,
  },
  {
    B: 2,
    Cin: 5,
    H: 9,
    W: 7,
    Cout: 3,
    K: 3,
    o: { stride: 2, pad: [0, 1, 0, 1], tile: SMALL },
    bias: true,
  },
  { B: 1, Cin: 32, H: 16, W: 16, Cout: 7, K: 3, o: { stride: 2, pad: [0, 1, 0, 1] } },
  { B: 1, Cin: 7, H: 9, W: 9, Cout: 5, K: 1, o: { tile: SMALL }, bias: true, res: true },
  // Input channels in quads: the vectorised weight staging (plain and rotated), 1x1 and 3x3.
  { B: 1, Cin: 8, H: 5, W: 7, Cout: 6, K: 1, o: { tile: SMALL }, bias: true },
  { B: 2, Cin: 12, H: 6, W: 5, Cout: 5, K: 3, o: { pad: 1, tile: SMALL } },
  {
    B: 2,
    Cin: 3,
    H: 7,
    W: 7,
    Cout: 4,
    K: 3,
    o: { pad: 1, upsample2x: true, tile: SMALL },
    bias: true,
  },
  { B: 1, Cin: 1, H: 1, W: 1, Cout: 1, K: 3, o: { pad: 1, tile: SMALL }, bias: true },
  { B: 1, Cin: 2, H: 45, W: 65, Cout: 3, K: 3, o: { pad: 1, tile: SMALL } },
  // Planes wider than 17 texels with W % 4 == 0: the per-texel vec4 pad (narrower: a row each).
  { B: 1, Cin: 2, H: 5, W: 80, Cout: 3, K: 3, o: { pad: 1, tile: SMALL }, bias: true },
  { B: 1, Cin: 3, H: 6, W: 8, Cout: 3, K: 5, o: { pad: [2, 1, 2, 0], tile: SMALL }, bias: true },
  { B: 2, Cin: 1, H: 4, W: 12, Cout: 2, K: 3, o: { pad: [1, 1, 3, 0], tile: SMALL }, bias: true },
  // Other generator paths: 16 channels, 1 row, 16 pixels, scalar stores, 3 rows at stride 2.
  { B: 2, Cin: 3, H: 9, W: 13, Cout: 19, K: 3, o: { pad: 1, tile: { cot: 16, py: 1, px: 4 } } },
  {
    B: 1,
    Cin: 4,
    H: 5,
    W: 33,
    Cout: 9,
    K: 3,
    o: { pad: 1, tile: { cot: 4, py: 1, px: 16 } },
    res: true,
  },
  {
    B: 1,
    Cin: 3,
    H: 8,
    W: 8,
    Cout: 6,
    K: 3,
    o: { stride: 2, pad: 1, tile: { cot: 8, py: 3, px: 4 } },
  },
  // Strided dx runs one stride-1 conv per output phase: stride 3 (one tap per phase), a 1x1 kernel
  // at stride 2 (phases without taps are zero), stride 2 after the upsample, a 5x5 kernel with
  // uneven padding (negative offsets in some phases).
  { B: 2, Cin: 3, H: 10, W: 11, Cout: 5, K: 3, o: { stride: 3, pad: 1, tile: SMALL }, bias: true },
  { B: 1, Cin: 4, H: 7, W: 8, Cout: 3, K: 1, o: { stride: 2, tile: SMALL } },
  // Input channels in quads: each phase's weights staged by the unrolled pass (its taps' map).
  { B: 1, Cin: 8, H: 11, W: 10, Cout: 6, K: 5, o: { stride: 2, pad: [2, 1, 1, 2], tile: SMALL } },
  { B: 1, Cin: 4, H: 10, W: 11, Cout: 5, K: 3, o: { stride: 3, pad: 1, tile: SMALL } },
  { B: 1, Cin: 2, H: 4, W: 5, Cout: 3, K: 3, o: { stride: 2, pad: 1, upsample2x: true } },
  {
    B: 1,
    Cin: 3,
    H: 11,
    W: 9,
    Cout: 4,
    K: 5,
    o: { stride: 2, pad: [2, 0, 1, 2], tile: SMALL },
    bias: true,
  },
  // The upsampled forward runs one conv of x per output phase with summed taps: uneven padding and a
  // 5x5 kernel (3 taps in some phases), a 1x1 kernel, the default tiles with bias and residual.
  {
    B: 1,
    Cin: 3,
    H: 5,
    W: 6,
    Cout: 5,
    K: 5,
    o: { pad: [2, 1, 0, 2], upsample2x: true, tile: SMALL },
    bias: true,
    res: true,
  },
  { B: 2, Cin: 3, H: 3, W: 5, Cout: 2, K: 1, o: { upsample2x: true, tile: SMALL }, res: true },
  {
    B: 2,
    Cin: 4,
    H: 4,
    W: 6,
    Cout: 9,
    K: 3,
    o: { pad: 1, upsample2x: true },
    bias: true,
    res: true,
    bwdDefault: true,
  },
  // Large outputs take the 16-channel tiles: the stride-2 downsample (forward 16x4x8, dx phases
  // 16x2x8, dW cot 16) on 33x33 outputs, and an upsampled conv with 32x32 phases; Cout 18 leaves a
  // partial 16-channel block.
  {
    B: 1,
    Cin: 10,
    H: 66,
    W: 66,
    Cout: 18,
    K: 3,
    o: { stride: 2, pad: [0, 1, 0, 1] },
    bias: true,
    bwdDefault: true,
  },
  {
    B: 1,
    Cin: 2,
    H: 32,
    W: 36,
    Cout: 18,
    K: 3,
    o: { pad: 1, upsample2x: true },
    bias: true,
    bwdDefault: true,
  },
];

function label(c: Case): string {
  const o = { ...c.o, tile: c.o.tile ? Object.values(c.o.tile).join("x") : undefined };
  return `B${c.B} ${c.Cin}->${c.Cout} ${c.H}x${c.W} k${c.K} ${JSON.stringify(o)}${
    c.bias ? " bias" : ""
  }${c.res ? " res" : ""}`;
}

function args(c: Case): Conv2dCpuArgs {
  return { xShape: [c.B, c.Cin, c.H, c.W], wShape: [c.Cout, c.Cin, c.K, c.K], ...c.o };
}

/**
 * A backward case's operands for case `c` (seeded by `seed`): x and w uploaded, dy shaped by the
 * forward's output, the CPU reference gradients, and a release of the uploads.
 */
function backwardCase(gpu: Gpu, c: Case, seed: number, wRange = 1) {
  const a = args(c);
  const x = randu(c.B * c.Cin * c.H * c.W, seed + c.Cin, -2, 2);
  const w = randu(c.Cout * c.Cin * c.K * c.K, seed + 10 + c.Cin, -wRange, wRange);
  const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
  const y = conv2d(gpu, X, Wt, undefined, c.o);
  const dy = randu(y.size, seed + 20 + c.Cin);
  const DY = gpu.upload(dy, y.shape);
  const r = conv2dBackwardCpu(x, w, dy, a);
  return { X, Wt, DY, r, release: () => [X, Wt, y, DY].forEach((t) => t.release()) };
}

/**
 * Gradients `names` of two runs of the same case: each the other's bit for bit (`what`: how the
 * second ran) and within f32 tolerance of the CPU reference `r`; both runs' gradients released.
 */
async function assertSameGrads(
  gpu: Gpu,
  a: Conv2dGrads,
  b: Conv2dGrads,
  r: { dx: Float32Array; dw: Float32Array; dbias: Float32Array },
  names: ("dx" | "dw" | "dbias")[],
  what: string,
): Promise<void> {
  const got = await gpu.readMany([...names.map((k) => a[k]!), ...names.map((k) => b[k]!)]);
  names.forEach((k, i) => {
    assertEquals(Array.from(got[i]), Array.from(got[names.length + i]), `${k}: ${what}`);
    assertClose(got[i], r[k], { atol: k === "dbias" ? 1e-4 : 2e-4, rtol: 1e-4 }, k);
  });
  for (const g of [a, b]) for (const v of [g.dx, g.dw, g.dbias]) v?.release();
}

/**
 * Runs `fn` on the texture kernels (the gpu kind's default implicit GEMMs off: they stage nothing;
 * a 1x1 conv's dW by its kernel, not the batched matmul)
 * with every pipeline key the ops ask for passed to `onKey`; both restored after.
 */
async function onTextureKernels(
  gpu: Gpu,
  onKey: (key: string) => void,
  fn: () => Promise<void>,
): Promise<void> {
  const pipeline = gpu.pipeline;
  conv2dTuning.gemm = false;
  conv2dTuning.gemmBackward = false;
  conv2dTuning.dwMatmul = false;
  gpu.pipeline = (key, code, entry) => {
    onKey(key);
    return pipeline.call(gpu, key, code, entry);
  };
  try {
    await fn();
  } finally {
    conv2dTuning.gemm = null;
    conv2dTuning.gemmBackward = null;
    conv2dTuning.dwMatmul = null;
    gpu.pipeline = pipeline;
  }
}

Deno.test("conv2d() and conv2dBackward() match direct-loop references", async (t) => {
  const gpu = await getGpu();
  for (const [i, c] of CASES.entries()) {
    await t.step(label(c), async () => {
      const x = randu(c.B * c.Cin * c.H * c.W, 10 + i, -2, 2);
      const w = randu(c.Cout * c.Cin * c.K * c.K, 20 + i);
      const b = c.bias ? randu(c.Cout, 30 + i) : null;
      const a = args(c);
      const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
      const Bt = b ? gpu.upload(b, [c.Cout]) : undefined;
      const ref0 = conv2dCpu(x, w, b, a);
      const res = c.res ? randu(ref0.length, 40 + i) : undefined;
      const ref = c.res ? conv2dCpu(x, w, b, { ...a, residual: res }) : ref0;
      const outShape = [c.B, c.Cout, ref.length / (c.B * c.Cout), 1]; // (B,Cout,Ho*Wo,1): same layout
      const R = res ? gpu.upload(res, outShape) : undefined;
      const y = conv2d(gpu, X, Wt, Bt, { ...c.o, residual: R });
      assertClose(await gpu.readF32(y), ref, { atol: 1e-4, rtol: 1e-4 }, `y ${label(c)}`);

      const dy = randu(ref.length, 50 + i);
      // The backward's dx conv runs the same generator: the small tile unless the case says so.
      const g = conv2dBackward(gpu, X, Wt, gpu.upload(dy, y.shape), {
        ...c.o,
        tile: c.bwdDefault ? undefined : SMALL,
      });
      const r = conv2dBackwardCpu(x, w, dy, a);
      const [dx, dw, db] = await gpu.readMany([g.dx!, g.dw!, g.dbias!]);
      assertClose(dx, r.dx, { atol: 1e-4, rtol: 1e-4 }, `dx ${label(c)}`);
      assertClose(dw, r.dw, { atol: 2e-4, rtol: 1e-4 }, `dw ${label(c)}`);
      assertClose(db, r.dbias, { atol: 1e-4, rtol: 1e-4 }, `dbias ${label(c)}`);
      for (const tt of [X, Wt, Bt, R, y, g.dx!, g.dw!, g.dbias!]) tt?.release();
    });
  }
});

Deno.test("conv2d() as an implicit GEMM (the gpu kind's forward), and the backward's GEMMs, match the references", async (t) => {
  const gpu = await getGpu();
  // Every forward case above (strides, uneven padding, 1x1/3x3/5x5, upsampling, bias, residual,
  // tile edges), then the GroupNorm(+SiLU) prologue with padding and upsampling.
  conv2dTuning.gemm = true;
  try {
    for (const [i, c] of CASES.entries()) {
      await t.step(label(c), async () => {
        const x = randu(c.B * c.Cin * c.H * c.W, 60 + i, -2, 2);
        const w = randu(c.Cout * c.Cin * c.K * c.K, 70 + i);
        const b = c.bias ? randu(c.Cout, 80 + i) : null;
        const a = args(c);
        const ref0 = conv2dCpu(x, w, b, a);
        const res = c.res ? randu(ref0.length, 90 + i) : undefined;
        const ref = c.res ? conv2dCpu(x, w, b, { ...a, residual: res }) : ref0;
        const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
        const Bt = b ? gpu.upload(b, [c.Cout]) : undefined;
        const R = res ? gpu.upload(res, [c.B, c.Cout, ref.length / (c.B * c.Cout), 1]) : undefined;
        const out = gpu.upload(new Float32Array(ref.length).fill(NaN), [
          c.B,
          c.Cout,
          ref.length / (c.B * c.Cout),
          1,
        ]);
        const stash = new Conv2dStash();
        conv2d(gpu, X, Wt, Bt, { ...c.o, residual: R, out, stash });
        assertClose(await gpu.readF32(out), ref, { atol: 1e-4, rtol: 1e-4 }, `y ${label(c)}`);
        assertEquals(stash.staged, null);
        for (const tt of [X, Wt, Bt, R, out]) tt?.release();
      });
    }
    // The backward as GEMMs: dx (stride 1 on the upsampled grid; strided dx keeps its phase
    // convs) and dW by split-K, with dbias beside, on every case; all three or one at a time.
    conv2dTuning.gemmBackward = true;
    for (const [i, c] of CASES.entries()) {
      await t.step(`backward ${label(c)}`, async () => {
        const x = randu(c.B * c.Cin * c.H * c.W, 160 + i, -2, 2);
        const w = randu(c.Cout * c.Cin * c.K * c.K, 170 + i);
        const a = args(c);
        const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
        const n = conv2dCpu(x, w, null, a).length;
        const dy = randu(n, 180 + i);
        const Dy = gpu.upload(dy, [c.B, c.Cout, n / (c.B * c.Cout), 1]);
        const r = conv2dBackwardCpu(x, w, dy, a);
        const o = { ...c.o, tile: undefined };
        const g = conv2dBackward(gpu, X, Wt, Dy, o);
        const [dx, dw, db] = await gpu.readMany([g.dx!, g.dw!, g.dbias!]);
        assertClose(dx, r.dx, { atol: 1e-4, rtol: 1e-4 }, `dx ${label(c)}`);
        assertClose(dw, r.dw, { atol: 2e-4, rtol: 1e-4 }, `dw ${label(c)}`);
        assertClose(db, r.dbias, { atol: 1e-4, rtol: 1e-4 }, `dbias ${label(c)}`);
        const only = conv2dBackward(gpu, X, Wt, Dy, { ...o, dx: false, dbias: false });
        assertEquals([only.dx, only.dbias], [null, null]);
        assertClose(await gpu.readF32(only.dw!), r.dw, { atol: 2e-4, rtol: 1e-4 }, "dw alone");
        for (const tt of [X, Wt, Dy, g.dx!, g.dw!, g.dbias!, only.dw!]) tt.release();
      });
    }
    conv2dTuning.gemmBackward = null;
    for (const silu of [false, true]) {
      for (const up of [false, true]) {
        await t.step(`prologue${silu ? " silu" : ""}${up ? " upsample2x" : ""}`, async () => {
          const B = 2, Cin = 8, H = 7, W = 10, Cout = 5, G = 4;
          const xs = [B, Cin, H, W];
          const x = randu(B * Cin * H * W, 400, -2, 3);
          const gamma = randu(Cin, 410, 0.5, 1.5), beta = randu(Cin, 420, -0.5, 0.5);
          const w = randu(Cout * Cin * 9, 430, -0.5, 0.5), bias = randu(Cout, 440);
          const o = { pad: 1, upsample2x: up };
          const a: Conv2dCpuArgs = { xShape: xs, wShape: [Cout, Cin, 3, 3], ...o };
          const normed = groupNormCpu(x, xs, gamma, beta, G, 1e-6, silu).y;
          const ref = conv2dCpu(normed, w, bias, a);
          const X = gpu.upload(x, xs), Gm = gpu.upload(gamma, [Cin]), Bt = gpu.upload(beta, [Cin]);
          const Wt = gpu.upload(w, a.wShape), Bi = gpu.upload(bias, [Cout]);
          const ss = groupNormPlaneAffine(gpu, X, Gm, Bt, G, 1e-6);
          const y = conv2d(gpu, X, Wt, Bi, { ...o, prologue: { ss, silu } });
          assertClose(await gpu.readF32(y), ref, { atol: 2e-4, rtol: 2e-4 }, "y");
          for (const tt of [X, Gm, Bt, Wt, Bi, ss, y]) tt.release();
        });
      }
    }
  } finally {
    conv2dTuning.gemm = null;
    conv2dTuning.gemmBackward = null;
  }
});

Deno.test("conv2d() stages inputs by copies where the padding is whole texels: the same results as the pad pass", async (t) => {
  const gpu = await getGpu();
  // Rows of 64 floats (256 bytes, WebGPU's copy pitch) are copied plane by plane into the staged
  // layout (several planes side by side in a texture row band: 5 planes of 3 rows): a 1x1 conv's
  // x and the dy the weight gradient reads (no padding); the downsample's x (a row below, a texel
  // right: the border zeroed by its own pass) and a 5x5's padded 2 rows above, 1 below, 4 pixels
  // left (x rows of 64 and 128). A 3x3 pad 1 (one pixel left: not a whole texel) pads x by the pass.
  // `pads`: pad passes with copies and without (staged: x for the forward and for dW, dy for dW).
  const cases: (Case & { border?: boolean; pads: [number, number] })[] = [
    { B: 2, Cin: 5, H: 3, W: 64, Cout: 6, K: 1, o: {}, bias: true, pads: [0, 3] },
    { B: 1, Cin: 3, H: 4, W: 64, Cout: 5, K: 3, o: { pad: 1 }, bias: true, pads: [2, 3] },
    {
      ...{ B: 2, Cin: 3, H: 5, W: 64, Cout: 4, K: 3, o: { stride: 2, pad: [0, 1, 0, 1] } },
      ...{ bias: true, border: true, pads: [0, 3] },
    },
    {
      ...{ B: 1, Cin: 2, H: 4, W: 128, Cout: 3, K: 5, o: { pad: [2, 1, 4, 0], tile: SMALL } },
      ...{ bias: true, border: true, pads: [0, 3] },
    },
  ];
  for (const c of cases) {
    await t.step(label(c), async () => {
      const a = args(c);
      const x = randu(c.B * c.Cin * c.H * c.W, 61, -2, 2),
        w = randu(c.Cout * c.Cin * c.K * c.K, 62);
      const b = randu(c.Cout, 63);
      const ref = conv2dCpu(x, w, b, a);
      const dy = randu(ref.length, 64);
      const rb = conv2dBackwardCpu(x, w, dy, a);
      const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape), Bt = gpu.upload(b, [c.Cout]);
      const y0 = conv2d(gpu, X, Wt, Bt, c.o); // the output's shape
      const DY = gpu.upload(dy, y0.shape);
      y0.release();
      const outs: ArrayLike<number>[][] = [];
      // Textures made from here on start full of 1e30 (a fresh one would read zero where the
      // border pass failed to write), and conv2d's kept ones are dropped so that it makes new ones.
      const device = gpu.device;
      const create = device.createTexture;
      if (c.border) {
        conv2dReleaseTextures(gpu);
        device.createTexture = (d: GPUTextureDescriptor) => {
          const tex = create.call(device, d);
          const [w, h] = d.size as number[];
          device.queue.writeTexture(
            { texture: tex },
            new Float32Array(w * h * 4).fill(1e30),
            { bytesPerRow: w * 16 },
            [w, h],
          );
          return tex;
        };
      }
      for (const copy of [true, false]) {
        conv2dTuning.copyStage = copy;
        // The texture kernels, which read staged inputs (the gpu kind's default is the GEMMs; the
        // 1x1 conv's dW by its kernel, not the batched matmul).
        conv2dTuning.gemm = conv2dTuning.gemmBackward = false;
        conv2dTuning.dwMatmul = false;
        conv2dTuning.flatX = false; // the forward's x through the staging (copied or padded)
        const pipeline = gpu.pipeline;
        let pads = 0, borders = 0;
        gpu.pipeline = (key, code, entry) => {
          if (key.startsWith("conv2d_pad")) pads++;
          if (key.startsWith("conv2d_border")) borders++;
          return pipeline.call(gpu, key, code, entry);
        };
        try {
          const y = conv2d(gpu, X, Wt, Bt, c.o);
          const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false });
          const want = c.pads[copy ? 0 : 1];
          if (pads !== want) throw new Error(`copy ${copy}: ${pads} pad passes, expected ${want}`);
          // x's border (the forward's and the dW's staging) zeroed by its pass.
          assertEquals(borders, copy && c.border ? 2 : 0, "border passes");
          const [yh, dwh, dbh] = await gpu.readMany([y, g.dw!, g.dbias!]);
          assertClose(yh, ref, { atol: 1e-4, rtol: 1e-4 }, "y");
          assertClose(dwh, rb.dw, { atol: 2e-4, rtol: 1e-4 }, "dw");
          assertClose(dbh, rb.dbias, { atol: 1e-4, rtol: 1e-4 }, "dbias");
          outs.push([yh, dwh, dbh]);
          for (const tt of [y, g.dw!, g.dbias!]) tt.release();
        } finally {
          conv2dTuning.copyStage = true;
          conv2dTuning.gemm = conv2dTuning.gemmBackward = null;
          conv2dTuning.dwMatmul = null;
          conv2dTuning.flatX = true;
          gpu.pipeline = pipeline;
        }
      }
      device.createTexture = create;
      if (c.border) conv2dReleaseTextures(gpu);
      for (let i = 0; i < 3; i++) assertEquals(Array.from(outs[0][i]), Array.from(outs[1][i]));
      for (const tt of [X, Wt, Bt, DY]) tt.release();
    });
  }
});

Deno.test("conv2d() and its weight gradient read an input that needs no prologue or stash unpadded from one copy", async (t) => {
  const gpu = await getGpu();
  // The downsample's stride 2 with bottom/right padding (tiles whose windows cross the plane's
  // last row and column), a stride-2 3x3 with padding on all sides and a partial tile, a stride 3,
  // and a stride-1 3x3 (no Winograd below 128 channels): the forward and the weight gradient each
  // the padded staging's result bit for bit (flatX off) and the reference's; the copy saves both
  // pad passes of x. Small tiles (the default ones take seconds to compile in the browser; the
  // main test runs them on this layout); with LVM_TEST_CASES=few only the stride 3 with uneven
  // padding (~12 s per case there; the main test's downsample reads x flat too).
  const cases: Case[] = [
    { B: 2, Cin: 5, H: 16, W: 16, Cout: 6, K: 3, o: { stride: 2, pad: [0, 1, 0, 1] }, bias: true },
    { B: 1, Cin: 3, H: 12, W: 16, Cout: 9, K: 3, o: { stride: 2, pad: 1 } },
    { B: 1, Cin: 4, H: 8, W: 24, Cout: 5, K: 3, o: { stride: 3, pad: [1, 0, 2, 1] }, bias: true },
    { B: 2, Cin: 6, H: 8, W: 8, Cout: 7, K: 3, o: { pad: 1 }, bias: true },
  ].map((c) => ({ ...c, o: { ...c.o, tile: SMALL } }) as Case);
  const few = fewCases();
  for (const [i, c] of cases.entries()) {
    if (few && i !== 2) continue;
    await t.step(label(c), async () => {
      const a = args(c);
      const x = randu(c.B * c.Cin * c.H * c.W, 800 + c.Cin, -2, 2);
      const w = randu(c.Cout * c.Cin * c.K * c.K, 810 + c.Cout);
      const b = c.bias ? randu(c.Cout, 820) : null;
      const ref = conv2dCpu(x, w, b, a);
      const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
      const Bt = b ? gpu.upload(b, [c.Cout]) : undefined;
      const dy = randu(ref.length, 830 + c.Cin);
      const rb = conv2dBackwardCpu(x, w, dy, a);
      const outs: ArrayLike<number>[][] = [];
      const pads: number[] = [];
      try {
        for (const flat of [true, false]) {
          const keys: string[] = [];
          conv2dTuning.flatX = flat;
          conv2dTuning.dw = { cot: 4, cit: 1, px: 4, py: 1 };
          await onTextureKernels(gpu, (k) => keys.push(k), async () => {
            const y = conv2d(gpu, X, Wt, Bt, c.o);
            const DY = gpu.upload(dy, y.shape);
            const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false });
            outs.push(await gpu.readMany([y, g.dw!, g.dbias!]));
            for (const tt of [y, DY, g.dw!, g.dbias!]) tt.release();
          });
          pads.push(keys.filter((k) => k.startsWith("conv2d_pad")).length);
          // The kernels' keys name an unpadded input by its plane ("x16x4+0+0").
          for (const kernel of ["conv2d_fwd", "conv2d_dw"]) {
            const own = keys.filter((k) => k.startsWith(kernel));
            assert(own.length > 0, `${kernel} ran`);
            assertEquals(own.some((k) => /\|x\d/.test(k)), flat, `${kernel}: ${own}`);
          }
        }
      } finally {
        conv2dTuning.flatX = true;
        conv2dTuning.dw = null;
        for (const tt of [X, Wt, Bt]) tt?.release();
      }
      // The copy saves the two pad passes of x (the forward's and the dW's).
      assertEquals(pads[1] - pads[0], 2, "pad passes saved");
      assertClose(outs[0][0], ref, { atol: 1e-4, rtol: 1e-4 }, "y (flat)");
      assertClose(outs[0][1], rb.dw, { atol: 2e-4, rtol: 1e-4 }, "dw (flat)");
      assertClose(outs[0][2], rb.dbias, { atol: 1e-4, rtol: 1e-4 }, "dbias (flat)");
      for (let i = 0; i < 3; i++) {
        assertEquals(Array.from(outs[0][i]), Array.from(outs[1][i]), `${i}: flat vs padded`);
      }
    });
  }
});

Deno.test("conv2dBackward() weight-gradient tiles and dbias alone", async (t) => {
  const gpu = await getGpu();
  // Odd channel counts (partial blocks), a width that is no multiple of the segment, and both
  // rows-per-segment settings (py 2 needs an even output height: the 10-row case, and the stride-2
  // downsample of 9 rows, 4 out, whose default is one row at this size).
  const tiles = [
    { cot: 4, cit: 1, px: 4, py: 1 },
    { cot: 8, cit: 2, px: 16, py: 2 },
    { cot: 16, cit: 1, px: 8, py: 2 },
  ];
  const cases: Case[] = [7, 10].map((H) => ({
    B: 2,
    Cin: 5,
    H,
    W: 13,
    Cout: 9,
    K: 3,
    o: { pad: 1 },
  }));
  cases.push({ B: 2, Cin: 5, H: 9, W: 13, Cout: 9, K: 3, o: { stride: 2, pad: [0, 1, 0, 1] } });
  for (const c of cases) {
    const { H } = c;
    const a = args(c);
    const x = randu(c.B * c.Cin * c.H * c.W, 100 + H), w = randu(c.Cout * c.Cin * 9, 110 + H);
    const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
    const y = conv2d(gpu, X, Wt, undefined, c.o); // the output's shape
    const [, , Ho, Wo] = y.shape;
    y.release();
    const dy = randu(c.B * c.Cout * Ho * Wo, 120 + H);
    const r = conv2dBackwardCpu(x, w, dy, a);
    const DY = gpu.upload(dy, [c.B, c.Cout, Ho, Wo]);
    for (const tile of tiles) {
      if (Ho % tile.py) continue;
      await t.step(`${label(c)} dw tile ${Object.values(tile).join("x")}`, async () => {
        conv2dTuning.dw = tile;
        try {
          const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false });
          const [dw, db] = await gpu.readMany([g.dw!, g.dbias!]);
          assertClose(dw, r.dw, { atol: 2e-4, rtol: 1e-4 }, "dw");
          assertClose(db, r.dbias, { atol: 1e-4, rtol: 1e-4 }, "dbias");
        } finally {
          conv2dTuning.dw = null;
        }
      });
    }
    await t.step(`${label(c)} dbias without dw`, async () => {
      const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false, dw: false });
      if (g.dw !== null || g.dx !== null) throw new Error("dx and dw were not asked for");
      assertClose(await gpu.readF32(g.dbias!), r.dbias, { atol: 1e-4, rtol: 1e-4 }, "dbias");
    });
  }
});

Deno.test("conv2dBackward(): a 1x1 conv's weight gradient as a batched matmul and a sum over the batch", async (t) => {
  const gpu = await getGpu();
  // Forced on: channel and pixel counts off and on multiples of 4 (the sum pass's scalar and vec4
  // forms, dbias in the vec4 one), a batch of one (the product is dW, no sum), dbias off, and a
  // GroupNorm+SiLU prologue (the activation written out). Each against the reference and the
  // conv kernel's dW (forced off). Then the default's choice on the cpu kind: tiny's 128 -> 64 at
  // 16x16 takes it at batch 2 and 8, not at batch 1 (one long product: the conv kernel's slices).
  const cases: (Case & { prologue?: boolean })[] = [
    { B: 3, Cin: 5, H: 7, W: 5, Cout: 9, K: 1, o: {}, bias: true },
    { B: 4, Cin: 8, H: 4, W: 6, Cout: 12, K: 1, o: {}, bias: true },
    { B: 1, Cin: 6, H: 5, W: 8, Cout: 4, K: 1, o: {}, bias: true },
    { B: 2, Cin: 8, H: 4, W: 4, Cout: 4, K: 1, o: {} },
    { B: 2, Cin: 8, H: 6, W: 6, Cout: 8, K: 1, o: {}, bias: true, prologue: true },
  ];
  for (const c of cases) {
    await t.step(`${label(c)}${c.prologue ? " prologue" : ""}`, async () => {
      const a = args(c);
      const xs = [c.B, c.Cin, c.H, c.W];
      const x = randu(c.B * c.Cin * c.H * c.W, 700 + c.Cin, -2, 2);
      const w = randu(c.Cout * c.Cin, 710 + c.Cout);
      const dy = randu(c.B * c.Cout * c.H * c.W, 720 + c.B);
      const gamma = randu(c.Cin, 730, 0.5, 1.5), beta = randu(c.Cin, 740, -0.5, 0.5);
      const act = c.prologue ? groupNormCpu(x, xs, gamma, beta, 4, 1e-6, true).y : x;
      const r = conv2dBackwardCpu(act, w, dy, a);
      const X = gpu.upload(x, xs), Wt = gpu.upload(w, a.wShape);
      const DY = gpu.upload(dy, [c.B, c.Cout, c.H, c.W]);
      const Gm = gpu.upload(gamma, [c.Cin]), Bt = gpu.upload(beta, [c.Cin]);
      const ss = c.prologue ? groupNormPlaneAffine(gpu, X, Gm, Bt, 4, 1e-6) : null;
      const prologue = ss ? { ss, silu: true } : undefined;
      const opts = { dx: false, dbias: !!c.bias, prologue };
      const keys: string[] = [];
      try {
        const run = (mm: boolean) => {
          conv2dTuning.dwMatmul = mm;
          return conv2dBackward(gpu, X, Wt, DY, opts);
        };
        let viaMatmul: Conv2dGrads = { dx: null, dw: null, dbias: null };
        await onTextureKernels(gpu, (k) => keys.push(k), () => {
          viaMatmul = run(true);
          return Promise.resolve();
        });
        assert(keys.some((k) => k.startsWith("matmul/")), `no matmul kernel ran: ${keys}`);
        assert(!keys.some((k) => k.startsWith("conv2d_dw")), "the conv dW kernel ran");
        if (!c.bias) assertEquals(viaMatmul.dbias, null, "dbias not asked for");
        const kernel = run(false);
        const names = c.bias ? ["dw", "dbias"] as const : ["dw"] as const;
        const got = await gpu.readMany([
          ...names.map((k) => viaMatmul[k]!),
          ...names.map((k) => kernel[k]!),
        ]);
        names.forEach((k, i) => {
          assertClose(got[i], r[k], { atol: 3e-4, rtol: 2e-4 }, `${k} via the matmul`);
          assertClose(got[names.length + i], r[k], { atol: 3e-4, rtol: 2e-4 }, `${k} (kernel)`);
        });
        for (const g of [viaMatmul, kernel]) for (const v of [g.dw, g.dbias]) v?.release();
      } finally {
        conv2dTuning.dwMatmul = null;
        for (const tt of [X, Wt, DY, Gm, Bt, ss]) tt?.release();
      }
    });
  }
  await t.step("the default: the matmul from a batch of two (cpu kind)", async () => {
    if (gpu.kind !== "cpu") return; // the gpu kind runs its implicit GEMM
    for (const [B, want] of [[8, true], [2, true], [1, false]] as const) {
      const X = gpu.upload(randu(B * 128 * 256, 750), [B, 128, 16, 16]);
      const Wt = gpu.upload(randu(64 * 128, 751), [64, 128, 1, 1]);
      const DY = gpu.upload(randu(B * 64 * 256, 752), [B, 64, 16, 16]);
      const keys: string[] = [];
      await onTextureKernels(gpu, (k) => keys.push(k), async () => {
        conv2dTuning.dwMatmul = null; // the default's choice
        const g = conv2dBackward(gpu, X, Wt, DY, { dx: false });
        await gpu.readMany([g.dw!, g.dbias!]);
        for (const v of [g.dw, g.dbias]) v?.release();
      });
      assertEquals(keys.some((k) => k.startsWith("matmul/")), want, `B=${B}: ${keys}`);
      assertEquals(keys.some((k) => k.startsWith("conv2d_dw")), !want, `B=${B}: ${keys}`);
      for (const tt of [X, Wt, DY]) tt.release();
    }
  });
});

/** F(8x8)'s tolerance: its interpolation points spread wider, ~6x F(6x6)'s rounding (conv2d.ts). */
const F8_TOL = { atol: 1e-3, rtol: 5e-4 };

Deno.test("conv2d() Winograd F(4x4,3x3), F(6x6,3x3) and F(8x8,3x3) paths match the references", async (t) => {
  const gpu = await getGpu();
  // Odd channel counts (partial 16-channel GEMM blocks, partial 4-channel weight texels), sides that
  // are no multiple of the 4x4 tiles or of the 16-pixel tile quads (scalar stores), asymmetric
  // padding, bias and residual, a batch of 2, a width that is a multiple of 4 (vec4 stores), the
  // decoder's upsampled conv; the dx runs the same path on the rotated weights. Magnitudes near the
  // VQGAN's (inputs in [-2, 2], 64 input channels) for the tolerance.
  const cases: Case[] = [
    { B: 2, Cin: 5, H: 7, W: 13, Cout: 9, K: 3, o: { pad: 1 }, bias: true, res: true, f8: true },
    { B: 1, Cin: 3, H: 16, W: 9, Cout: 4, K: 3, o: { pad: [1, 0, 2, 1] }, bias: true },
    { B: 2, Cin: 4, H: 4, W: 6, Cout: 5, K: 3, o: { pad: 1, upsample2x: true }, res: true },
    { B: 1, Cin: 64, H: 20, W: 36, Cout: 33, K: 3, o: { pad: 1 }, bias: true, res: true, f8: true },
    // Banded: chunks of 2 tile rows (8 output rows), as a large image is split.
    { B: 2, Cin: 6, H: 19, W: 21, Cout: 7, K: 3, o: { pad: 1 }, bias: true, res: true, rows: 2 },
    // Widths that are multiples of 4: the transform reads x itself (no staging pass), with the
    // left padding 1 and 2 (two source shuffles), banded, upsampled (banded: odd band offsets).
    {
      B: 2,
      Cin: 6,
      H: 19,
      W: 20,
      Cout: 7,
      K: 3,
      o: { pad: 1 },
      bias: true,
      res: true,
      rows: 2,
      f8: true,
    },
    { B: 1, Cin: 3, H: 10, W: 12, Cout: 4, K: 3, o: { pad: [1, 0, 2, 1] }, bias: true, f8: true },
    { B: 1, Cin: 8, H: 48, W: 48, Cout: 6, K: 3, o: { pad: 1 }, bias: true, flat: true },
    // A 16x16 image is one tile per product: 40 channels take 4 blocks of 12 (the last partial)
    // where blocks of 16 would leave more lanes idle.
    {
      B: 1,
      Cin: 8,
      H: 16,
      W: 16,
      Cout: 40,
      K: 3,
      o: { pad: 1 },
      bias: true,
      res: true,
      cot12: true,
    },
    {
      B: 2,
      Cin: 4,
      H: 5,
      W: 8,
      Cout: 5,
      K: 3,
      o: { pad: 1, upsample2x: true },
      res: true,
      f8: true,
    },
    {
      B: 1,
      Cin: 3,
      H: 7,
      W: 4,
      Cout: 2,
      K: 3,
      o: { pad: 1, upsample2x: true },
      bias: true,
      rows: 1,
    },
  ];
  // LVM_TEST_CASES=few (the browser run): one transform size per case, F(4x4) and F(6x6) in
  // turn (F(4x4) where the case checks a path of its own), F(8x8) on the first case only.
  const few = fewCases();
  for (const [ci, c] of cases.entries()) {
    const a = args(c);
    const Ho = c.o.upsample2x ? 2 * c.H : c.H + (c.o.pad === 1 ? 0 : -1);
    const Wo = c.o.upsample2x ? 2 * c.W : c.W + (c.o.pad === 1 ? 0 : 1);
    const x = randu(c.B * c.Cin * c.H * c.W, 200 + c.Cin, -2, 2);
    const w = randu(c.Cout * c.Cin * 9, 210 + c.Cin, -1 / Math.sqrt(c.Cin), 1 / Math.sqrt(c.Cin));
    const b = randu(c.Cout, 220);
    const res = randu(c.B * c.Cout * Ho * Wo, 230);
    const dy = randu(c.B * c.Cout * Ho * Wo, 240);
    const ref = conv2dCpu(x, w, c.bias ? b : null, { ...a, residual: c.res ? res : undefined });
    const rb = conv2dBackwardCpu(x, w, dy, a);
    const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape), Bt = gpu.upload(b, [c.Cout]);
    const R = gpu.upload(res, [c.B, c.Cout, Ho, Wo]), DY = gpu.upload(dy, [c.B, c.Cout, Ho, Wo]);
    const one: 4 | 6 | 8 = ci === 0 ? 8 : c.flat || c.cot12 ? 4 : ci % 2 ? 6 : 4; // F(4x4) paths
    const sizes = few ? [one] : c.f8 ? [4, 6, 8] as const : [4, 6] as const;
    for (const m of sizes) {
      await t.step(`${label(c)} F(${m}x${m},3x3)`, async () => {
        conv2dTuning.w43 = true;
        conv2dTuning.wino = m;
        conv2dTuning.w43Rows = c.rows ?? null;
        // Count the input transforms: the case must not fall back to the direct kernel.
        const pipeline = gpu.pipeline;
        let w43 = 0, pads = 0, flat = 0, cot12 = 0;
        gpu.pipeline = (key, code, entry) => {
          if (key.startsWith("conv2d_w43_in")) w43++;
          if (key.startsWith("conv2d_pad")) pads++;
          if (key.startsWith("conv2d_fwd") && key.endsWith("|true")) flat++;
          if (key.startsWith("conv2d_fwd|") && key.split("|")[2] === "12") cot12++;
          return pipeline.call(gpu, key, code, entry);
        };
        try {
          const y = conv2d(gpu, X, Wt, c.bias ? Bt : undefined, {
            ...c.o,
            residual: c.res ? R : undefined,
          });
          // Staged (a pad pass per chunk) unless the transform reads x itself.
          const direct = c.W % 4 === 0;
          if ((pads === 0) !== direct) {
            throw new Error(`${pads} pad passes (direct read: ${direct})`);
          }
          const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dw: false, dbias: false });
          // One input transform per chunk: per band of `rows` tile rows (both images in each; the dx
          // of an upsampled conv runs on the upsampled grid).
          const bands = (h: number) => Math.ceil(Math.ceil(h / m) / c.rows!);
          const want = c.rows ? bands(Ho) + bands(c.o.upsample2x ? 2 * c.H : c.H) : 2;
          if (w43 !== want) throw new Error(`${w43} Winograd input transforms, expected ${want}`);
          if (c.flat && m === 4 && flat === 0) {
            throw new Error("no GEMM over (product, tile) pairs");
          }
          if (c.cot12 && cot12 === 0) throw new Error("no GEMM of 12 channels per invocation");
          const [yh, dxh] = await gpu.readMany([y, g.dx!]);
          const tol = m === 8 ? F8_TOL : { atol: 2e-4, rtol: 1e-4 };
          assertClose(yh, ref, tol, "y");
          assertClose(dxh, rb.dx, tol, "dx");
          y.release();
          g.dx!.release();
        } finally {
          conv2dTuning.w43 = null;
          conv2dTuning.wino = null;
          conv2dTuning.w43Rows = null;
          gpu.pipeline = pipeline;
        }
      });
    }
    for (const tt of [X, Wt, Bt, R, DY]) tt.release();
  }
});

Deno.test("conv2dBackward(): an upsampled 3x3 pad-1 conv's dx is one stride-2 4x4 conv on the source grid", async (t) => {
  const gpu = await getGpu();
  // The decoder's upsample: dx from the combined taps (w2, w1 + w2, w0 + w1, w0 per axis) instead of
  // a 3x3 conv on the upsampled grid and a 2x2 sum. Odd sizes, rows that are no multiple of 4,
  // Cin != Cout; other paddings keep the upsampled-grid path. Each matches the reference and the
  // upsampled-grid path (to rounding: the sums run in another order).
  const cases: (Case & { taken: boolean })[] = [
    { B: 2, Cin: 4, H: 4, W: 6, Cout: 5, K: 3, o: { pad: 1, upsample2x: true }, taken: true },
    { B: 1, Cin: 7, H: 5, W: 3, Cout: 3, K: 3, o: { pad: 1, upsample2x: true }, taken: true },
    { B: 3, Cin: 8, H: 8, W: 8, Cout: 8, K: 3, o: { pad: 1, upsample2x: true }, taken: true },
    {
      B: 1,
      Cin: 3,
      H: 3,
      W: 5,
      Cout: 2,
      K: 3,
      o: { pad: [2, 1, 0, 2], upsample2x: true },
      taken: false,
    },
  ];
  const seen: string[] = [];
  await onTextureKernels(gpu, (key) => {
    seen.push(key);
  }, async () => {
    try {
      for (const c of cases) {
        await t.step(`${label(c)}${c.taken ? "" : " (upsampled grid)"}`, async () => {
          const { X, Wt, DY, r, release } = backwardCase(gpu, c, 600);
          seen.length = 0;
          const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dw: false, dbias: false });
          const used = seen.includes("conv2d_up_dx_w");
          assertEquals(used, c.taken, "combined-tap dx");
          assertEquals(seen.includes("upsample2x_bwd"), !c.taken, "2x2 sum on the upsampled grid");
          conv2dTuning.upDx = false;
          const g2 = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dw: false, dbias: false });
          conv2dTuning.upDx = true;
          const [dx, dx2] = await gpu.readMany([g.dx!, g2.dx!]);
          assertClose(dx, r.dx, { atol: 2e-4, rtol: 1e-4 }, "dx");
          assertClose(dx, dx2, { atol: 2e-4, rtol: 1e-4 }, "dx vs the upsampled grid's");
          for (const tt of [g.dx!, g2.dx!]) tt.release();
          release();
        });
      }
    } finally {
      conv2dTuning.upDx = true;
    }
  });
});

Deno.test("conv2dBackward(): an upsampled conv's weight gradient stages x by the row pass", async (t) => {
  const gpu = await getGpu();
  // The x of an upsampled conv's dW, nearest-2x-upsampled and padded by one invocation per padded
  // row (rows of 4 and 8 pixels; left padding 0, 1 and 2; top padding 0..2): dW and dbias match
  // the reference. Rows of 6 pixels keep the per-texel pass.
  const cases: (Case & { row: boolean })[] = [
    {
      B: 2,
      Cin: 4,
      H: 3,
      W: 4,
      Cout: 5,
      K: 3,
      o: { pad: 1, upsample2x: true },
      bias: true,
      row: true,
    },
    {
      B: 1,
      Cin: 3,
      H: 5,
      W: 8,
      Cout: 2,
      K: 3,
      o: { pad: [2, 1, 2, 0], upsample2x: true },
      row: true,
    },
    {
      B: 1,
      Cin: 2,
      H: 4,
      W: 8,
      Cout: 3,
      K: 3,
      o: { pad: [0, 1, 0, 1], upsample2x: true },
      row: true,
    },
    { B: 1, Cin: 3, H: 3, W: 6, Cout: 2, K: 3, o: { pad: 1, upsample2x: true }, row: false },
  ];
  let rows = 0;
  await onTextureKernels(gpu, (key) => {
    if (key.startsWith("conv2d_pad_uprow")) rows++;
  }, async () => {
    for (const c of cases) {
      await t.step(`${label(c)}${c.row ? " row pass" : " per-texel pass"}`, async () => {
        const { X, Wt, DY, r, release } = backwardCase(gpu, c, 800);
        const r0 = rows;
        const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false });
        assertEquals(rows - r0, c.row ? 1 : 0, "row passes");
        const [dw, db] = await gpu.readMany([g.dw!, g.dbias!]);
        assertClose(dw, r.dw, { atol: 2e-4, rtol: 1e-4 }, "dw");
        assertClose(db, r.dbias, { atol: 1e-4, rtol: 1e-4 }, "dbias");
        for (const tt of [g.dw!, g.dbias!]) tt.release();
        release();
      });
    }
  });
});

Deno.test("conv2dBackward(): a weight gradient of one slice is written in place, no summing pass", async (t) => {
  const gpu = await getGpu();
  // A weight gradient split into one slice of segments (enough workgroups already: 128 -> 128
  // channels on a CPU adapter, which aims at 16; a single segment anywhere) has its sums written as
  // dw and dbias; otherwise the slices are summed after.
  const cpu = gpu.kind === "cpu";
  const cases: (Case & { direct: boolean })[] = [
    { B: 1, Cin: 128, H: 4, W: 4, Cout: 128, K: 3, o: { pad: 1 }, bias: true, direct: cpu },
    { B: 2, Cin: 128, H: 5, W: 8, Cout: 160, K: 3, o: { pad: 1 }, direct: cpu },
    { B: 1, Cin: 6, H: 2, W: 4, Cout: 5, K: 3, o: { pad: 1 }, bias: true, direct: true },
    { B: 2, Cin: 8, H: 6, W: 8, Cout: 8, K: 3, o: { pad: 1 }, bias: true, direct: false },
  ];
  let sums = 0;
  await onTextureKernels(gpu, (key) => {
    if (key.startsWith("conv2d_sum_slices")) sums++;
  }, async () => {
    for (const c of cases) {
      await t.step(`${label(c)}${c.direct ? " in place" : " summed"}`, async () => {
        const { X, Wt, DY, r, release } = backwardCase(gpu, c, 700, 0.1);
        const s0 = sums;
        const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false, dbias: c.bias });
        assertEquals(sums - s0, c.direct ? 0 : 1, "summing passes");
        const dw = await gpu.readF32(g.dw!);
        assertClose(dw, r.dw, { atol: 5e-4, rtol: 1e-4 }, "dw");
        if (c.bias) {
          assertClose(await gpu.readF32(g.dbias!), r.dbias, { atol: 1e-4, rtol: 1e-4 }, "dbias");
        }
        for (const tt of [g.dw!, ...(g.dbias ? [g.dbias] : [])]) tt.release();
        release();
      });
    }
  });
});

Deno.test("conv2dBackward(): the weight gradient reads dy copied flat where its rows are whole texels", async (t) => {
  const gpu = await getGpu();
  // dy as it lies in memory, 64 texels per texture row (copies, no pad pass): a tensor shorter
  // than one texture row (only the partial last row), several rows and a partial one, a strided
  // conv's dy, a 1x1; 12-pixel rows (3 texels: they would straddle texture rows) keep the pad pass.
  // Each result is the pad pass's bit for bit and matches the reference.
  const cases: (Case & { flat: boolean })[] = [
    { B: 1, Cin: 3, H: 5, W: 8, Cout: 3, K: 3, o: { pad: 1 }, bias: true, flat: true },
    { B: 2, Cin: 4, H: 7, W: 16, Cout: 5, K: 3, o: { pad: 1 }, bias: true, flat: true },
    { B: 2, Cin: 3, H: 9, W: 16, Cout: 6, K: 3, o: { stride: 2, pad: [0, 1, 0, 1] }, flat: true },
    { B: 3, Cin: 6, H: 5, W: 16, Cout: 7, K: 1, o: {}, bias: true, flat: true },
    { B: 2, Cin: 4, H: 6, W: 12, Cout: 5, K: 3, o: { pad: 1 }, bias: true, flat: false },
  ];
  let pads = 0;
  await onTextureKernels(gpu, (key) => {
    if (key.startsWith("conv2d_pad")) pads++;
  }, async () => {
    try {
      for (const c of cases) {
        await t.step(`${label(c)}${c.flat ? " flat" : " padded"}`, async () => {
          const { X, Wt, DY, r, release } = backwardCase(gpu, c, 500);
          const run = (copy: boolean) => {
            conv2dTuning.copyStage = copy;
            const p0 = pads;
            const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false });
            return { g, pads: pads - p0 };
          };
          const copied = run(true), padded = run(false);
          // x is staged by a pad pass in both (no stash); dy by one more without the copy.
          assertEquals(padded.pads - copied.pads, c.flat ? 1 : 0, "pad passes saved");
          await assertSameGrads(gpu, copied.g, padded.g, r, ["dw", "dbias"], "the pad pass's");
          release();
        });
      }
    } finally {
      conv2dTuning.copyStage = true;
    }
  });
});

Deno.test("conv2dBackward(): the dx (stride 1, or each phase of a strided one) reads dy unpadded from the copy the weight gradient reads", async (t) => {
  const gpu = await getGpu();
  // dy's planes one per texture row (H*W/4 texels, a multiple of 16: 256-byte rows), copied once;
  // the dx kernel reads its window from it (taps outside the plane read the zero column after it)
  // and the weight gradient reads the same texture: no pad pass for the dx. Odd channel counts, a
  // 4-pixel-wide plane (one texel per row), a valid conv (dy padded by 2), a 1x1, a forced small
  // tile, an upsampled conv's dx on the upsampled grid, strided convs (their dx phase convs all
  // read the one copy: 4 pad passes saved); a 12-pixel-wide dy (H*W/4 not a multiple of 16) keeps
  // the pad pass. Each dx and dw is the padded path's bit for bit and matches the reference.
  const cases: (Case & { flat: boolean; upDx?: boolean; phases?: number })[] = [
    { B: 2, Cin: 5, H: 8, W: 8, Cout: 6, K: 3, o: { pad: 1 }, bias: true, flat: true },
    { B: 3, Cin: 3, H: 16, W: 4, Cout: 5, K: 3, o: { pad: 1 }, flat: true },
    { B: 1, Cin: 6, H: 10, W: 10, Cout: 3, K: 3, o: {}, bias: true, flat: true },
    { B: 2, Cin: 7, H: 8, W: 8, Cout: 3, K: 1, o: {}, flat: true },
    {
      B: 2,
      Cin: 5,
      H: 16,
      W: 8,
      Cout: 9,
      K: 3,
      o: { pad: 1, tile: { cot: 4, py: 2, px: 4 } },
      flat: true,
    },
    {
      B: 1,
      Cin: 4,
      H: 4,
      W: 8,
      Cout: 5,
      K: 3,
      o: { pad: 1, upsample2x: true },
      flat: true,
      upDx: false,
    },
    { B: 2, Cin: 4, H: 4, W: 12, Cout: 5, K: 3, o: { pad: 1 }, bias: true, flat: false },
    {
      B: 2,
      Cin: 3,
      H: 16,
      W: 16,
      Cout: 6,
      K: 3,
      o: { stride: 2, pad: [0, 1, 0, 1] },
      flat: true,
      phases: 4,
    },
    { B: 1, Cin: 5, H: 15, W: 15, Cout: 3, K: 3, o: { stride: 2, pad: 1 }, flat: true, phases: 4 },
    {
      B: 2,
      Cin: 2,
      H: 17,
      W: 17,
      Cout: 3,
      K: 3,
      o: { stride: 2 },
      bias: true,
      flat: true,
      phases: 4,
    },
  ];
  let pads = 0, flatKernels = 0;
  await onTextureKernels(gpu, (key) => {
    if (key.startsWith("conv2d_pad")) pads++;
    if (key.startsWith("conv2d_fwd|") && key.split("|").some((k) => /^x\d+x\d+\+/.test(k))) {
      flatKernels++;
    }
  }, async () => {
    try {
      for (const c of cases) {
        await t.step(`${label(c)}${c.flat ? " flat" : " padded"}`, async () => {
          conv2dTuning.upDx = c.upDx ?? true;
          conv2dTuning.flatX = false; // x staged (padded) for the forward and the dW: dy's count
          const { X, Wt, DY, r, release } = backwardCase(gpu, c, 520);
          const run = (flat: boolean) => {
            conv2dTuning.flatDx = flat;
            const p0 = pads, f0 = flatKernels;
            const g = conv2dBackward(gpu, X, Wt, DY, c.o);
            return { g, pads: pads - p0, flats: flatKernels - f0 };
          };
          const flat = run(true), padded = run(false);
          const n = c.flat ? c.phases ?? 1 : 0;
          assertEquals(padded.pads - flat.pads, n, "pad passes saved");
          assertEquals(flat.flats, n, "dx kernels reading dy flat");
          assertEquals(padded.flats, 0, "flat dx kernels with flatDx off");
          await assertSameGrads(gpu, flat.g, padded.g, r, ["dx", "dw"], "the padded path's");
          release();
        });
      }
    } finally {
      conv2dTuning.flatDx = true;
      conv2dTuning.upDx = true;
      conv2dTuning.flatX = true;
    }
  });
});

Deno.test("conv2dBackward(): a stride-2 dx computes both column phases of a row phase in one kernel", async (t) => {
  const gpu = await getGpu();
  // Where the two column phases have taps and the same even width and the input channels come in
  // quads, each row phase is one kernel storing both phases' pixels interleaved (vec4 stores): 2
  // kernels for a downsample's dx instead of 4, the same sums in the same order, so bit for bit
  // the per-phase kernels' dx. The downsample (phases 2 and 1 taps wide), padding 1 (1 and 2, the
  // other order), a 5x5 with uneven padding (negative offsets), a partial tile at the right edge
  // (6-pixel phases in 8-pixel tiles), a forced small tile, the upsampled input, dy staged by the
  // pad pass; an odd phase width keeps the per-phase kernels.
  const cases: (Case & { pair: boolean; flatDx?: boolean })[] = [
    { B: 2, Cin: 8, H: 16, W: 16, Cout: 6, K: 3, o: { stride: 2, pad: [0, 1, 0, 1] }, pair: true },
    { B: 1, Cin: 4, H: 9, W: 12, Cout: 5, K: 3, o: { stride: 2, pad: 1 }, pair: true },
    {
      B: 1,
      Cin: 12,
      H: 10,
      W: 8,
      Cout: 3,
      K: 5,
      o: { stride: 2, pad: [2, 1, 1, 2], tile: SMALL },
      pair: true,
    },
    {
      B: 2,
      Cin: 4,
      H: 7,
      W: 12,
      Cout: 9,
      K: 3,
      o: { stride: 2, pad: [0, 1, 0, 1] },
      pair: true,
      flatDx: false,
    },
    {
      B: 1,
      Cin: 4,
      H: 3,
      W: 4,
      Cout: 3,
      K: 3,
      o: { stride: 2, pad: 1, upsample2x: true },
      pair: true,
    },
    { B: 1, Cin: 8, H: 9, W: 10, Cout: 4, K: 3, o: { stride: 2, pad: [0, 1, 0, 1] }, pair: false },
  ];
  let pairKernels = 0, dxKernels = 0;
  // LVM_TEST_CASES=few (the browser run): the small-tile case (default tiles compile for seconds in
  // SwiftShader; the main test's downsample takes this path with them).
  const few = fewCases();
  await onTextureKernels(gpu, (key) => {
    if (!key.startsWith("conv2d_fwd|")) return;
    dxKernels++;
    if (key.split("|").some((k) => /^ph\d+\+\d+,\d+\+\d+$/.test(k))) pairKernels++;
  }, async () => {
    try {
      for (const [i, c] of cases.entries()) {
        if (few && i !== 2) continue;
        await t.step(`${label(c)}${c.flatDx === false ? " dy padded" : ""}`, async () => {
          conv2dTuning.flatDx = c.flatDx ?? true;
          const { X, Wt, DY, r, release } = backwardCase(gpu, c, 530);
          const o = { ...c.o, dw: false, dbias: false };
          const run = (pair: boolean) => {
            conv2dTuning.dxPair = pair;
            const p0 = pairKernels, k0 = dxKernels;
            const g = conv2dBackward(gpu, X, Wt, DY, o);
            return { g, pairs: pairKernels - p0, kernels: dxKernels - k0 };
          };
          const pair = run(true), phases = run(false);
          assertEquals(pair.pairs, c.pair ? 2 : 0, "row-phase kernels with both column phases");
          assertEquals(pair.kernels, c.pair ? 2 : 4, "dx kernels");
          assertEquals([phases.pairs, phases.kernels], [0, 4], "dxPair off: one kernel per phase");
          await assertSameGrads(gpu, pair.g, phases.g, r, ["dx"], "the per-phase kernels'");
          release();
        });
      }
    } finally {
      conv2dTuning.dxPair = true;
      conv2dTuning.flatDx = true;
    }
  });
});

Deno.test("conv2dBackward(): a stride-1 dx reads the weights in the row layout, copied or staged", async (t) => {
  const gpu = await getGpu();
  // Row co of the texture = w[co] as it lies in memory: one copy where a row is a whole number of
  // 256-byte blocks (64 | Cin for 3x3, 1x1), else the one-texel-per-lane pass. Blocks of output
  // channels past Cin read past the row's data (12 channels in blocks of 8, 16) for outputs never
  // stored. Each dx is the rotated column layout's bit for bit and matches the reference; rows
  // of 27 floats (3 channels, 3x3) are not whole texels and keep the column layout.
  const cases: (Case & { wl: "copy" | "pass" | false })[] = [
    { B: 2, Cin: 64, H: 6, W: 7, Cout: 5, K: 3, o: { pad: 1, tile: SMALL }, wl: "copy" },
    { B: 1, Cin: 64, H: 9, W: 12, Cout: 20, K: 3, o: { pad: 1 }, wl: "copy" },
    {
      B: 1,
      Cin: 12,
      H: 5,
      W: 9,
      Cout: 7,
      K: 3,
      o: { pad: 1, tile: { cot: 8, py: 2, px: 4 } },
      wl: "pass",
    },
    {
      B: 2,
      Cin: 12,
      H: 5,
      W: 8,
      Cout: 12,
      K: 1,
      o: { tile: { cot: 16, py: 2, px: 4 } },
      wl: "pass",
    },
    { B: 1, Cin: 4, H: 7, W: 7, Cout: 6, K: 5, o: { pad: 2, tile: SMALL }, wl: "pass" },
    { B: 1, Cin: 3, H: 6, W: 8, Cout: 4, K: 3, o: { pad: 1, tile: SMALL }, wl: false },
  ];
  let rowKernels = 0, rowPasses = 0;
  await onTextureKernels(gpu, (key) => {
    if (key.startsWith("conv2d_fwd|") && key.includes("|rows|")) rowKernels++;
    if (key === "conv2d_wt_rows") rowPasses++;
  }, async () => {
    try {
      for (const c of cases) {
        await t.step(`${label(c)} ${c.wl || "columns"}`, async () => {
          const { X, Wt, DY, r, release } = backwardCase(gpu, c, 900);
          const run = (rows: boolean) => {
            conv2dTuning.wRows = rows;
            return conv2dBackward(gpu, X, Wt, DY, {
              ...c.o,
              dw: false,
              dbias: false,
            }).dx!;
          };
          const k0 = rowKernels, p0 = rowPasses;
          const dx = run(true);
          assertEquals(rowKernels - k0, c.wl ? 1 : 0, "dx kernels on the row layout");
          assertEquals(rowPasses - p0, c.wl === "pass" ? 1 : 0, "row staging passes");
          const dxCols = run(false);
          const [a, b] = await gpu.readMany([dx, dxCols]);
          assertEquals(Array.from(a), Array.from(b), "dx: the column layout's");
          assertClose(a, r.dx, { atol: 1e-4, rtol: 1e-4 }, "dx");
          dx.release(), dxCols.release();
          release();
        });
      }
    } finally {
      conv2dTuning.wRows = true;
    }
  });
});

Deno.test("conv2dBackward() with the forward's staged input (Conv2dStash)", async (t) => {
  const gpu = await getGpu();
  // The texture paths' feature (the implicit GEMMs, the gpu kind's default, keep nothing; nor
  // does a 1x1 conv's dW as a batched matmul).
  conv2dTuning.gemm = false;
  conv2dTuning.gemmBackward = false;
  conv2dTuning.dwMatmul = false;
  try {
    // A forward plane taller than the weight gradient's (7 rows: the forward's tile covers 8), the
    // downsample's stride and padding, a 1x1, and a stash too small to keep anything.
    const cases: [Case, number?][] = [
      [{ B: 2, Cin: 5, H: 7, W: 12, Cout: 9, K: 3, o: { pad: 1 }, bias: true }],
      [{ B: 2, Cin: 3, H: 9, W: 8, Cout: 5, K: 3, o: { stride: 2, pad: [0, 1, 0, 1] } }],
      [{ B: 3, Cin: 6, H: 5, W: 4, Cout: 7, K: 1, o: {}, bias: true }],
      [{ B: 1, Cin: 4, H: 6, W: 8, Cout: 3, K: 3, o: { pad: 1 } }, 16],
    ];
    for (const [c, maxBytes] of cases) {
      await t.step(`${label(c)}${maxBytes ? ` maxBytes ${maxBytes}` : ""}`, async () => {
        const a = args(c);
        const x = randu(c.B * c.Cin * c.H * c.W, 300 + c.Cin, -2, 2);
        const w = randu(c.Cout * c.Cin * c.K * c.K, 310 + c.Cin);
        const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
        const stash = new Conv2dStash(maxBytes);
        const y = conv2d(gpu, X, Wt, undefined, { ...c.o, stash });
        if ((stash.staged === null) !== (maxBytes !== undefined)) {
          throw new Error(`staged input ${stash.staged ? "kept" : "not kept"}`);
        }
        const dy = randu(y.size, 320 + c.Cin);
        const DY = gpu.upload(dy, y.shape);
        const r = conv2dBackwardCpu(x, w, dy, a);
        let d0 = gpu.dispatchCount;
        const ref = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false });
        const plain = gpu.dispatchCount - d0;
        d0 = gpu.dispatchCount;
        const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, dx: false, stash });
        if (stash.staged !== null) throw new Error("conv2dBackward did not release the stash");
        // A kept input saves the pass that stages x.
        const saved = plain - (gpu.dispatchCount - d0);
        if (saved !== (maxBytes ? 0 : 1)) throw new Error(`${saved} dispatches saved`);
        ref.dw!.release();
        ref.dbias!.release();
        const [dw, db] = await gpu.readMany([g.dw!, g.dbias!]);
        assertClose(dw, r.dw, { atol: 2e-4, rtol: 1e-4 }, "dw");
        assertClose(db, r.dbias, { atol: 1e-4, rtol: 1e-4 }, "dbias");
        for (const tt of [X, Wt, y, DY, g.dw!, g.dbias!]) tt.release();
      });
    }
  } finally {
    conv2dTuning.gemm = null;
    conv2dTuning.gemmBackward = null;
    conv2dTuning.dwMatmul = null;
  }
});

Deno.test("conv2d() extreme values and bad inputs", async (t) => {
  const gpu = await getGpu();
  await t.step("+-300 inputs", async () => {
    const a: Conv2dCpuArgs = { xShape: [1, 6, 9, 11], wShape: [5, 6, 3, 3], pad: 1 };
    const x = randu(6 * 9 * 11, 3, -300, 300);
    const w = randu(5 * 6 * 9, 4, -300, 300);
    const y = conv2d(gpu, gpu.upload(x, a.xShape), gpu.upload(w, a.wShape), undefined, {
      ...a,
      tile: SMALL,
    });
    // Sums of 54 products of size up to 9e4: f32 rounding of terms ~ 1e-2 each.
    assertClose(await gpu.readF32(y), conv2dCpu(x, w, null, a), { atol: 2, rtol: 1e-4 }, "y +-300");
  });
  await t.step("pooled textures can be released and are made again", async () => {
    const a: Conv2dCpuArgs = { xShape: [1, 2, 5, 6], wShape: [3, 2, 3, 3], pad: 1 };
    const x = randu(60, 5), w = randu(54, 6);
    const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
    const y1 = await gpu.readF32(conv2d(gpu, X, Wt, undefined, { ...a, tile: SMALL }));
    conv2dReleaseTextures(gpu);
    const y2 = await gpu.readF32(conv2d(gpu, X, Wt, undefined, { ...a, tile: SMALL }));
    assertClose(y1, conv2dCpu(x, w, null, a), { atol: 1e-5, rtol: 1e-5 }, "before release");
    assertClose(y2, y1, { atol: 0, rtol: 0 }, "after release");
  });
  await t.step("shape errors name the input", () => {
    const x = gpu.zeros([1, 3, 4, 4]);
    const w = gpu.zeros([2, 4, 3, 3]);
    let msg = "";
    try {
      conv2d(gpu, x, w);
    } catch (e) {
      msg = String(e);
    }
    if (!/w has 4 input channels but x has 3/.test(msg)) throw new Error(`unexpected: ${msg}`);
    msg = "";
    try {
      conv2d(gpu, x, gpu.zeros([2, 3, 3, 3]), gpu.zeros([3]));
    } catch (e) {
      msg = String(e);
    }
    if (!/bias must be f32 of shape \[2\]/.test(msg)) throw new Error(`unexpected: ${msg}`);
  });
});

Deno.test("conv2dBackward() matches finite differences", async (t) => {
  const gpu = await getGpu();
  const cases: Case[] = [
    { B: 1, Cin: 2, H: 5, W: 4, Cout: 3, K: 3, o: { stride: 2, pad: [0, 1, 0, 1], tile: SMALL } },
    { B: 2, Cin: 2, H: 3, W: 3, Cout: 2, K: 3, o: { pad: 1, upsample2x: true, tile: SMALL } },
    { B: 1, Cin: 3, H: 4, W: 5, Cout: 2, K: 1, o: { tile: SMALL } },
    { B: 1, Cin: 2, H: 7, W: 5, Cout: 2, K: 3, o: { stride: 3, pad: [1, 2, 0, 1], tile: SMALL } },
  ];
  for (const [i, c] of cases.entries()) {
    await t.step(label(c), async () => {
      const a = args(c);
      const x = randu(c.B * c.Cin * c.H * c.W, 60 + i);
      const w = randu(c.Cout * c.Cin * c.K * c.K, 70 + i);
      const b = randu(c.Cout, 80 + i);
      const n = conv2dCpu(x, w, b, a).length;
      const r = randu(n, 90 + i); // loss = sum(y * r), so dy = r
      const loss = (xv: ArrayLike<number>, wv: ArrayLike<number>, bv: ArrayLike<number>) =>
        conv2dCpu(xv, wv, bv, a).reduce((s, v, k) => s + v * r[k], 0);
      const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape);
      const g = conv2dBackward(
        gpu,
        X,
        Wt,
        gpu.upload(r, [c.B, c.Cout, n / (c.B * c.Cout), 1]),
        c.o,
      );
      const [dx, dw, db] = await gpu.readMany([g.dx!, g.dw!, g.dbias!]);
      const tol = { atol: 2e-3, rtol: 2e-3 };
      assertClose(dx, finiteDiff((v) => loss(v, w, b), x, 1e-2), tol, "dx vs finite differences");
      assertClose(dw, finiteDiff((v) => loss(x, v, b), w, 1e-2), tol, "dw vs finite differences");
      assertClose(
        db,
        finiteDiff((v) => loss(x, w, v), b, 1e-2),
        tol,
        "dbias vs finite differences",
      );
    });
  }
});

Deno.test("conv2dTile() takes 16-channel tiles for large strided and few-tap outputs, 16-pixel rows for large 1x1, 4 rows for small-image batches (cpu kind)", async () => {
  const gpu = await getGpu();
  const t = (Cout: number, Ho: number, Wo: number, K: number, S: number) =>
    conv2dTile(gpu, Cout, Ho, Wo, K, K, S);
  if (gpu.kind !== "cpu") {
    assertEquals(t(18, 33, 33, 3, 2).cot, 8); // GPU kind: unchanged
    return;
  }
  assertEquals(t(18, 33, 33, 3, 2), { cot: 16, px: 8, py: 4 }); // a large stride-2 output
  assertEquals(t(10, 33, 33, 2, 1), { cot: 16, px: 8, py: 2 }); // a 2x2 phase (dx, upsample)
  assertEquals(t(18, 16, 16, 3, 2).cot, 8); // tiny's 16x16 outputs: as before
  assertEquals(t(64, 32, 32, 3, 1), { cot: 4, px: 8, py: 8 }); // stride-1 3x3: as before
  assertEquals(t(128, 64, 64, 1, 1), { cot: 16, px: 16, py: 2 }); // a large 1x1 output
  assertEquals(t(64, 16, 16, 1, 1), { cot: 16, px: 8, py: 2 }); // tiny's 1x1: as before
  // A batch of 8 small images up to 128 channels: 4 rows; one image, more channels or 64x64: 8.
  const tb = (Cout: number, H: number, B: number) => conv2dTile(gpu, Cout, H, H, 3, 3, 1, B);
  assertEquals(tb(64, 32, 8), { cot: 4, px: 8, py: 4 });
  assertEquals(tb(128, 16, 8), { cot: 4, px: 8, py: 4 });
  assertEquals(tb(64, 32, 1).py, 8);
  assertEquals(tb(256, 32, 8).py, 8);
  assertEquals(tb(64, 64, 8).py, 8);
});

Deno.test("conv2d() with a GroupNorm(+SiLU) prologue matches norm -> conv references", async (t) => {
  const gpu = await getGpu();
  // Each staging pass applies it: the row pad (narrow vec4 planes), the per-texel vec4 pad (80
  // wide), the scalar pad (W % 4 != 0, and the upsampled conv's phases), the Winograd input
  // transform reading x itself (with and without SiLU); both statistics kernels (few groups: one
  // workgroup per group; 4 x 32 groups: the rows kernels on a CPU adapter); with and without SiLU;
  // padding stays zero after the affine (shift != 0).
  const cases: (Case & { G: number; silu: boolean; w43?: boolean })[] = [
    { B: 2, Cin: 8, H: 10, W: 12, Cout: 5, K: 3, o: { pad: 1 }, bias: true, G: 4, silu: true },
    { B: 1, Cin: 4, H: 6, W: 80, Cout: 3, K: 3, o: { pad: 1 }, G: 2, silu: false },
    { B: 4, Cin: 32, H: 7, W: 9, Cout: 4, K: 3, o: { pad: 1 }, res: true, G: 32, silu: true },
    { B: 1, Cin: 4, H: 5, W: 6, Cout: 5, K: 3, o: { pad: 1, upsample2x: true }, G: 2, silu: true },
    { B: 2, Cin: 8, H: 9, W: 20, Cout: 6, K: 3, o: { pad: 1 }, G: 4, silu: true, w43: true },
    { B: 1, Cin: 8, H: 8, W: 16, Cout: 5, K: 3, o: { pad: 1 }, G: 4, silu: false, w43: true },
  ];
  for (const c of cases) {
    await t.step(`${label(c)} G${c.G}${c.silu ? " silu" : ""}${c.w43 ? " w43" : ""}`, async () => {
      const a = args(c);
      const xs = [c.B, c.Cin, c.H, c.W];
      const x = randu(c.B * c.Cin * c.H * c.W, 300 + c.Cin, -2, 3);
      const gamma = randu(c.Cin, 310, 0.5, 1.5), beta = randu(c.Cin, 320, -0.5, 0.5);
      const w = randu(c.Cout * c.Cin * 9, 330, -0.5, 0.5), b = randu(c.Cout, 340);
      const normed = groupNormCpu(x, xs, gamma, beta, c.G, 1e-6, c.silu).y;
      const Ho = c.o.upsample2x ? 2 * c.H : c.H, Wo = c.o.upsample2x ? 2 * c.W : c.W;
      const res = randu(c.B * c.Cout * Ho * Wo, 350);
      const ref = conv2dCpu(normed, w, c.bias ? b : null, {
        ...a,
        residual: c.res ? res : undefined,
      });
      const X = gpu.upload(x, xs), Gm = gpu.upload(gamma, [c.Cin]), Bt = gpu.upload(beta, [c.Cin]);
      const Wt = gpu.upload(w, a.wShape), Bi = gpu.upload(b, [c.Cout]);
      const R = gpu.upload(res, [c.B, c.Cout, Ho, Wo]);
      conv2dTuning.w43 = c.w43 ? true : null;
      try {
        const ss = groupNormPlaneAffine(gpu, X, Gm, Bt, c.G, 1e-6);
        const y = conv2d(gpu, X, Wt, c.bias ? Bi : undefined, {
          ...c.o,
          residual: c.res ? R : undefined,
          prologue: { ss, silu: c.silu },
        });
        assertClose(await gpu.readF32(y), ref, { atol: 2e-4, rtol: 2e-4 }, "y");
        for (const tt of [ss, y]) tt.release();
      } finally {
        conv2dTuning.w43 = null;
        for (const tt of [X, Gm, Bt, Wt, Bi, R]) tt.release();
      }
    });
  }
});

Deno.test("conv2dBackward() with the forward's prologue: dw against the activation the conv saw", async (t) => {
  const gpu = await getGpu();
  // Training's norm -> conv: the forward applies the GroupNorm(+SiLU) as it stages x and keeps
  // that staging (a stash); the backward's dw is taken against act(x * scale + shift) and dx is the
  // activation's gradient. Paths: the kept stash, x staged again with the prologue (a stash too
  // small to keep it; the upsampled conv, whose forward keeps nothing; Winograd forward), and the
  // implicit GEMMs (the gpu kind's), which read the activation written out.
  const cases: (Case & { G: number; silu: boolean; path: string; maxBytes?: number })[] = [
    { B: 2, Cin: 8, H: 10, W: 12, Cout: 5, K: 3, o: { pad: 1 }, G: 4, silu: true, path: "stash" },
    {
      ...{ B: 1, Cin: 4, H: 6, W: 8, Cout: 3, K: 3, o: { pad: 1 }, G: 2, silu: false },
      ...{ path: "restaged", maxBytes: 16 },
    },
    {
      ...{ B: 1, Cin: 4, H: 5, W: 6, Cout: 5, K: 3, o: { pad: 1, upsample2x: true } },
      ...{ G: 2, silu: true, path: "upsampled" },
    },
    { B: 2, Cin: 8, H: 9, W: 20, Cout: 6, K: 3, o: { pad: 1 }, G: 4, silu: true, path: "w43" },
    { B: 2, Cin: 6, H: 7, W: 9, Cout: 4, K: 3, o: { pad: 1 }, G: 3, silu: true, path: "gemm" },
  ];
  for (const c of cases) {
    await t.step(`${label(c)} G${c.G}${c.silu ? " silu" : ""} ${c.path}`, async () => {
      const a = args(c);
      const xs = [c.B, c.Cin, c.H, c.W];
      const x = randu(c.B * c.Cin * c.H * c.W, 400 + c.Cin, -2, 3);
      const gamma = randu(c.Cin, 410, 0.5, 1.5), beta = randu(c.Cin, 420, -0.5, 0.5);
      const w = randu(c.Cout * c.Cin * 9, 430, -0.5, 0.5);
      const act = groupNormCpu(x, xs, gamma, beta, c.G, 1e-6, c.silu).y;
      const Ho = c.o.upsample2x ? 2 * c.H : c.H, Wo = c.o.upsample2x ? 2 * c.W : c.W;
      const dy = randu(c.B * c.Cout * Ho * Wo, 440);
      const r = conv2dBackwardCpu(act, w, dy, a);
      const X = gpu.upload(x, xs), Gm = gpu.upload(gamma, [c.Cin]), Bt = gpu.upload(beta, [c.Cin]);
      const Wt = gpu.upload(w, a.wShape), DY = gpu.upload(dy, [c.B, c.Cout, Ho, Wo]);
      const gemm = c.path === "gemm";
      conv2dTuning.gemm = gemm;
      conv2dTuning.gemmBackward = gemm;
      conv2dTuning.w43 = c.path === "w43" ? true : null;
      try {
        const ss = groupNormPlaneAffine(gpu, X, Gm, Bt, c.G, 1e-6);
        const prologue = { ss, silu: c.silu };
        const stash = new Conv2dStash(c.maxBytes);
        const y = conv2d(gpu, X, Wt, undefined, { ...c.o, prologue, stash });
        assertEquals(stash.staged !== null, c.path === "stash", "staged input kept");
        const g = conv2dBackward(gpu, X, Wt, DY, { ...c.o, prologue, stash });
        assertEquals(stash.staged, null, "stash released");
        const [dw, db, dx] = await gpu.readMany([g.dw!, g.dbias!, g.dx!]);
        assertClose(dw, r.dw, { atol: 3e-4, rtol: 2e-4 }, "dw");
        assertClose(db, r.dbias, { atol: 1e-4, rtol: 1e-4 }, "dbias");
        assertClose(dx, r.dx, { atol: 2e-4, rtol: 2e-4 }, "dx");
        for (const tt of [ss, y, g.dw!, g.dbias!, g.dx!]) tt.release();
      } finally {
        conv2dTuning.gemm = null;
        conv2dTuning.gemmBackward = null;
        conv2dTuning.w43 = null;
        for (const tt of [X, Gm, Bt, Wt, DY]) tt.release();
      }
    });
  }
});

Deno.test("conv2d(): 512-768 channels at 16x16 take the Winograd path when the weights are cached", async (t) => {
  const gpu = await getGpu();
  // The `lvm` VQGAN's 16x16 level: with a Conv2dWeightCache the Winograd weights are transformed
  // once (4x the weights' bytes held), and the output is the forced Winograd path's, bit for bit;
  // without a cache it stays direct (nothing to reuse the transform).
  for (const [Cin, Cout] of [[768, 768], [512, 768]]) {
    await t.step(`${Cin} -> ${Cout}`, async () => {
      const H = 16;
      const X = gpu.upload(randu(Cin * H * H, 1), [1, Cin, H, H]);
      const Wt = gpu.upload(randu(Cout * Cin * 9, 2, -0.05, 0.05), [Cout, Cin, 3, 3]);
      const Bi = gpu.upload(randu(Cout, 3), [Cout]);
      conv2dTuning.gemm = false; // the texture paths (the gpu kind's default is the implicit GEMM)
      try {
        const cache = new Conv2dWeightCache();
        const y = conv2d(gpu, X, Wt, Bi, { pad: 1, weights: cache });
        const want = 4 * Cin * Cout * 9 * 4;
        assert(cache.bytes >= want, `cached ${cache.bytes} bytes: not the Winograd U`);
        conv2dTuning.w43 = true;
        const yw = conv2d(gpu, X, Wt, Bi, { pad: 1 });
        conv2dTuning.w43 = false;
        const yd = conv2d(gpu, X, Wt, Bi, { pad: 1 });
        conv2dTuning.w43 = null;
        const yp = conv2d(gpu, X, Wt, Bi, { pad: 1 }); // no cache: the direct kernel
        const [a, bw, bd, bp] = await gpu.readMany([y, yw, yd, yp]);
        assertEquals(Array.from(a), Array.from(bw), "the Winograd path's output");
        assertEquals(Array.from(bp), Array.from(bd), "uncached: the direct kernel's output");
        assertClose(a, bd, { atol: 2e-4, rtol: 2e-4 }, "Winograd vs direct");
        for (const t of [y, yw, yd, yp]) t.release();
        cache.release(gpu);
      } finally {
        conv2dTuning.gemm = null;
        conv2dTuning.w43 = null;
        for (const t of [X, Wt, Bi]) t.release();
      }
    });
  }
});

Deno.test("conv2d(): the Winograd variant follows the output size: F(8x8) from 96x96 while its weights fit, F(4x4) below", async (t) => {
  const gpu = await getGpu();
  // The default choice's output is the forced variant's, bit for bit, and the GEMM's input transform
  // is that variant's; the direct kernel agrees within F(8x8)'s rounding.
  const cases: { H: number; m: 4 | 8; cap?: number }[] = [
    { H: 96, m: 8 },
    { H: 64, m: 4 },
    { H: 96, m: 4, cap: 100 * 128 * 128 * 4 - 1 }, // F(8x8)'s U over the cap: F(4x4)
  ];
  const C = 128;
  for (const c of cases) {
    await t.step(
      `${C} -> ${C} at ${c.H}x${c.H}${c.cap ? ` U cap ${c.cap} bytes` : ""}: F(${c.m}x${c.m})`,
      async () => {
        const X = gpu.upload(randu(C * c.H * c.H, 5, -2, 2), [1, C, c.H, c.H]);
        const Wt = gpu.upload(randu(C * C * 9, 6, -0.05, 0.05), [C, C, 3, 3]);
        const pipeline = gpu.pipeline;
        const variants: number[] = [];
        gpu.pipeline = (key, code, entry) => {
          if (key.startsWith("conv2d_w43_in")) variants.push(Number(/"m":(\d+)/.exec(key)![1]));
          return pipeline.call(gpu, key, code, entry);
        };
        conv2dTuning.gemm = false; // the texture paths (the gpu kind's default is the implicit GEMM)
        if (c.cap) conv2dTuning.w8MaxBytes = c.cap;
        try {
          const y = conv2d(gpu, X, Wt, undefined, { pad: 1 });
          assertEquals(variants, [c.m], "input transforms' variants");
          conv2dTuning.w8MaxBytes = null;
          conv2dTuning.wino = c.m;
          const yf = conv2d(gpu, X, Wt, undefined, { pad: 1 });
          conv2dTuning.wino = null;
          conv2dTuning.w43 = false;
          const yd = conv2d(gpu, X, Wt, undefined, { pad: 1 });
          const [a, f, d] = await gpu.readMany([y, yf, yd]);
          assertEquals(Array.from(a), Array.from(f), "the forced variant's output");
          assertClose(a, d, F8_TOL, "Winograd vs direct");
          for (const tt of [y, yf, yd]) tt.release();
        } finally {
          gpu.pipeline = pipeline;
          conv2dTuning.gemm = null;
          conv2dTuning.w43 = null;
          conv2dTuning.wino = null;
          conv2dTuning.w8MaxBytes = null;
          X.release();
          Wt.release();
        }
      },
    );
  }
});

Deno.test("conv2d() with a Conv2dWeightCache reuses staged weights and matches the reference", async (t) => {
  const gpu = await getGpu();
  // One entry per weight and staging: the plain kernel, the upsampled conv's four phases, the
  // Winograd transform; the second call stages nothing (no weight-staging dispatch) and gives the
  // same result; release empties it.
  const cases: (Case & { w43?: boolean; stages: number })[] = [
    { B: 1, Cin: 5, H: 9, W: 7, Cout: 6, K: 3, o: { pad: 1, tile: SMALL }, bias: true, stages: 1 },
    {
      B: 2,
      Cin: 3,
      H: 4,
      W: 5,
      Cout: 4,
      K: 3,
      o: { pad: 1, upsample2x: true, tile: SMALL },
      stages: 4,
    },
    { B: 1, Cin: 6, H: 10, W: 11, Cout: 5, K: 3, o: { pad: 1 }, res: true, w43: true, stages: 1 },
  ];
  for (const c of cases) {
    await t.step(`${label(c)}${c.w43 ? " w43" : ""}`, async () => {
      const a = args(c);
      const Ho = c.o.upsample2x ? 2 * c.H : c.H, Wo = c.o.upsample2x ? 2 * c.W : c.W;
      const x = randu(c.B * c.Cin * c.H * c.W, 400 + c.Cin, -2, 2);
      const w = randu(c.Cout * c.Cin * 9, 410, -0.5, 0.5), b = randu(c.Cout, 420);
      const res = randu(c.B * c.Cout * Ho * Wo, 430);
      const ref = conv2dCpu(x, w, c.bias ? b : null, { ...a, residual: c.res ? res : undefined });
      const X = gpu.upload(x, a.xShape), Wt = gpu.upload(w, a.wShape), Bi = gpu.upload(b, [c.Cout]);
      const R = gpu.upload(res, [c.B, c.Cout, Ho, Wo]);
      const cache = new Conv2dWeightCache();
      const pipeline = gpu.pipeline;
      let staged = 0;
      gpu.pipeline = (key, code, entry) => {
        if (key.startsWith("conv2d_wt")) staged++;
        return pipeline.call(gpu, key, code, entry);
      };
      conv2dTuning.w43 = c.w43 ? true : false;
      try {
        const run = () =>
          conv2d(gpu, X, Wt, c.bias ? Bi : undefined, {
            ...c.o,
            residual: c.res ? R : undefined,
            weights: cache,
          });
        const y1 = run();
        assertEquals(staged, c.stages, "staging dispatches on the first call");
        const bytes = cache.bytes;
        if (bytes <= 0) throw new Error("the cache holds nothing after the first call");
        const y2 = run();
        assertEquals(staged, c.stages, "staging dispatches after the second call");
        assertEquals(cache.bytes, bytes, "bytes after the second call");
        const [h1, h2] = await gpu.readMany([y1, y2]);
        assertClose(h1, ref, { atol: 2e-4, rtol: 1e-4 }, "first call");
        assertEquals(Array.from(h2), Array.from(h1), "second call");
        y1.release();
        y2.release();
        cache.release(gpu);
        assertEquals(cache.bytes, 0, "bytes after release");
      } finally {
        conv2dTuning.w43 = null;
        gpu.pipeline = pipeline;
        for (const tt of [X, Wt, Bi, R]) tt.release();
      }
    });
  }
});

Deno.test("conv2d() gathers GroupNorm statistics of its output (Conv2dGroupStats)", async (t) => {
  const gpu = await getGpu();
  // The texture paths' feature (the implicit GEMMs, the gpu kind's default, keep nothing).
  conv2dTuning.gemm = false;
  conv2dTuning.gemmBackward = false;
  try {
    // The partials of the Winograd output transform and of the direct kernel, merged, give the norm's
    // affine of the output read back (bias and residual included): both Winograd variants, a batch
    // of 2 in bands (partials placed by global tile row), widths with partial quads and scalar
    // stores (13), an offset mean (values around 5: the merge must not cancel), the stride-2
    // downsample. The upsampled conv's direct phases gather none, and merging that is refused.
    const cases: (Case & { m: 4 | 6; G: number })[] = [
      {
        B: 2,
        Cin: 6,
        H: 19,
        W: 20,
        Cout: 8,
        K: 3,
        o: { pad: 1 },
        bias: true,
        res: true,
        rows: 2,
        m: 4,
        G: 4,
      },
      { B: 1, Cin: 5, H: 14, W: 13, Cout: 6, K: 3, o: { pad: 1 }, bias: true, m: 6, G: 2 },
      {
        B: 2,
        Cin: 4,
        H: 9,
        W: 8,
        Cout: 8,
        K: 3,
        o: { pad: 1, upsample2x: true },
        res: true,
        m: 6,
        G: 8,
      },
      {
        B: 2,
        Cin: 4,
        H: 17,
        W: 18,
        Cout: 12,
        K: 3,
        o: { stride: 2, pad: [0, 1, 0, 1] },
        bias: true,
        m: 4,
        G: 4,
      },
    ];
    for (const c of cases) {
      const a = args(c);
      const S = c.o.stride ?? 1;
      // Output sides: pad 1 (x2 when upsampled), or the downsample's pad (0,1,0,1) at stride 2.
      const side = (n: number) =>
        S === 2 ? Math.floor((n + 1 - 3) / 2) + 1 : c.o.upsample2x ? 2 * n : n;
      const oh = side(c.H), ow = side(c.W);
      const X = gpu.upload(randu(c.B * c.Cin * c.H * c.W, 600, -1, 1), a.xShape);
      const Wt = gpu.upload(randu(c.Cout * c.Cin * 9, 610, -0.4, 0.4), a.wShape);
      const Bi = gpu.upload(randu(c.Cout, 620, 4, 6), [c.Cout]);
      const R = gpu.upload(randu(c.B * c.Cout * oh * ow, 630, -1, 1), [c.B, c.Cout, oh, ow]);
      const gamma = gpu.upload(randu(c.Cout, 640, 0.5, 1.5), [c.Cout]);
      const beta = gpu.upload(randu(c.Cout, 650, -0.5, 0.5), [c.Cout]);
      for (const path of ["winograd", "direct"] as const) {
        if (path === "winograd" && S !== 1) continue;
        await t.step(
          `${label(c)} ${path === "winograd" ? `F(${c.m}x${c.m})` : "direct"} G${c.G}`,
          async () => {
            const stats = new Conv2dGroupStats();
            conv2dTuning.w43 = path === "winograd";
            conv2dTuning.wino = c.m;
            conv2dTuning.w43Rows = c.rows ?? null;
            try {
              const y = conv2d(gpu, X, Wt, c.bias ? Bi : undefined, {
                ...c.o,
                residual: c.res ? R : undefined,
                stats,
              });
              const gathers = path === "winograd" || !c.o.upsample2x;
              if (!gathers) {
                assertEquals(stats.part, null, "partials after the upsampled conv's direct phases");
                assertThrows(
                  () => groupNormAffineFromStats(gpu, stats, c.B, c.Cout, gamma, beta, c.G, 1e-6),
                  RangeError,
                  "stats holds no partials",
                );
                y.release();
                return;
              }
              if (!stats.part) throw new Error("no partials gathered");
              const got = groupNormAffineFromStats(gpu, stats, c.B, c.Cout, gamma, beta, c.G, 1e-6);
              const want = groupNormPlaneAffine(gpu, y, gamma, beta, c.G, 1e-6);
              const [g, w] = await gpu.readMany([got, want]);
              assertClose(g, w, { atol: 1e-4, rtol: 1e-4 }, "scale and shift");
              for (const tt of [y, got, want]) tt.release();
            } finally {
              conv2dTuning.w43 = null;
              conv2dTuning.wino = null;
              conv2dTuning.w43Rows = null;
              stats.release();
            }
          },
        );
      }
      for (const tt of [X, Wt, Bi, R, gamma, beta]) tt.release();
    }
  } finally {
    conv2dTuning.gemm = null;
  }
});
