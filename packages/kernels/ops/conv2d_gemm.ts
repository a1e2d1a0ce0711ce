/**
 * The forward convolution as an implicit GEMM through the tiled matmul's shared-memory loop
 * ({@link tiledCore}): the real-GPU ("gpu" kind) path of {@link conv2d}. Per image b,
 * out[b] (Cout x Ho*Wo) = W (Cout x Cin*KH*KW) times im2col(x[b]) (Cin*KH*KW x Ho*Wo), where
 * im2col is never written: each stage load gathers its element from x (stride, zero padding, the
 * nearest-2x upsample and the GroupNorm(+SiLU) prologue applied on the way), and the store adds
 * the bias and the residual. The lavapipe kernels of conv2d.ts (register tiles fed from textures,
 * no barriers) stay the "cpu" kind's path: there, workgroup barriers are emulated.
 *
 * The backward's GEMMs ({@link gemmConvDx}: the stride-1 input gradient as this forward with the
 * weights read rotated and transposed; {@link gemmConvDw}: dy times im2col(x)^T with split-K) are
 * the gpu kind's backward too (`conv2dTuning.gemmBackward`; on an H200 the tiny tokenizer training
 * step took 57.6 ms with them, 70.2 ms with the texture kernels).
 *
 * Measured on an NVIDIA H200 (tools/gpu_check.sh, `--profile`): see the README's GPU section.
 * @module
 */
import { type Gpu, Params, type Tensor } from "@lvm/gpu";
import { type TileConfig, tiledCore } from "./_matmul_kernels.ts";
import { splitPlan, sumSplits, unusedBinding } from "./_tiled.ts";
import { tiledConfig, tiledSplit } from "./matmul.ts";

/** A convolution's geometry as the GEMMs need it (conv2d.ts's Geom adds the bottom/right padding). */
export interface GemmConvGeom {
  /** Images, input channels, input extent, output channels, kernel extent, stride. */
  B: number;
  Cin: number;
  H: number;
  W: number;
  Cout: number;
  KH: number;
  KW: number;
  S: number;
  /** Top and left zero padding. */
  pt: number;
  pl: number;
  /** Upsample factor applied to x first (1 or 2), and x's extent after it. */
  up: number;
  Hu: number;
  Wu: number;
  Ho: number;
  Wo: number;
}

/** Compile-time shape of one GEMM conv kernel. */
interface Spec {
  tile: TileConfig;
  KH: number;
  KW: number;
  S: number;
  up: number;
  bias: boolean;
  res: boolean;
  /** Prologue: none, affine, or affine + SiLU. */
  pro: "" | "affine" | "silu";
  /**
   * The weights as the input gradient's conv takes them: rotated 180 degrees and transposed (A's
   * row m = an input channel of the forward, its k = (output channel, flipped tap)).
   */
  rot: boolean;
}

function kernel(s: Spec): string {
  const KHW = s.KH * s.KW;
  const pro = s.pro
    ? `let sc = ss[plane * 2u]; let sh = ss[plane * 2u + 1u]; v = v * sc + sh;${
      s.pro === "silu" ? " v = v / (1.0 + exp(-v));" : ""
    }`
    : "";
  // Every binding is referenced (the automatic layout drops unused ones); absent inputs are bound
  // to a one-element dummy and never read.
  const header = `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read> res: array<f32>;
@group(0) @binding(4) var<storage, read> ss: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
struct P { batch: u32, M: u32, N: u32, K: u32, Cin: u32, H: u32, W: u32, Hu: u32, Wu: u32, Wo: u32, pt: u32, pl: u32 }
@group(0) @binding(6) var<uniform> p: P;
fn tileA(bi: u32, m: u32, k: u32) -> f32 { ${
    s.rot
      ? `return w[((k / ${KHW}u) * p.M + m) * ${KHW}u + ${KHW - 1}u - k % ${KHW}u];`
      : "return w[m * p.K + k];"
  } }
// The output pixel's top-left input coordinate, once per invocation (its column of B is fixed).
fn colPre(n: u32) -> vec2i {
  let oy = n / p.Wo; let ox = n % p.Wo;
  return vec2i(i32(oy * ${s.S}u) - i32(p.pt), i32(ox * ${s.S}u) - i32(p.pl));
}
fn tileBCol(bi: u32, k: u32, n: u32, pre: vec2i) -> f32 {
  let ci = k / ${KHW}u; let r = k % ${KHW}u;
  let iy = pre.x + i32(r / ${s.KW}u); let ix = pre.y + i32(r % ${s.KW}u);
  if (iy < 0 || ix < 0 || iy >= i32(p.Hu) || ix >= i32(p.Wu)) { return 0.0; }
  let plane = bi * p.Cin + ci;
  var v = x[(plane * p.H + u32(iy) / ${s.up}u) * p.W + u32(ix) / ${s.up}u];
  ${pro}
  return v;
}
fn tileB(bi: u32, k: u32, n: u32) -> f32 { return tileBCol(bi, k, n, colPre(n)); }
fn tileOut(bi: u32, m: u32, n: u32, v: f32) {
  let o = (bi * p.M + m) * p.N + n;
  var r = v;
  if (${s.bias}) { r += bias[m]; }
  if (${s.res}) { r += res[o]; }
  out[o] = r;
}`;
  const uses = `_ = bias[0]; _ = res[0]; _ = ss[0];`;
  return tiledCore({ tile: s.tile, aK: true, bN: true, header, prelude: uses, colPre: true });
}

/**
 * out (B, Cout, Ho, Wo) = conv(x, w) + bias + residual, x optionally upsampled 2x (nearest) and
 * passed through a per-plane affine (+ SiLU) `ss` (B*Cin, 2) first; shapes checked by the caller.
 * `rot`: w is the forward's (g.Cin, g.Cout, KH, KW) weight, read rotated and transposed (the input
 * gradient of a stride-1 conv: {@link gemmConvDx}).
 */
export function gemmConv(
  gpu: Gpu,
  x: Tensor,
  w: Tensor,
  bias: Tensor | undefined,
  residual: Tensor | undefined,
  out: Tensor,
  g: GemmConvGeom,
  prologue?: { ss: Tensor; silu: boolean },
  rot = false,
): void {
  const M = g.Cout, N = g.Ho * g.Wo, K = g.Cin * g.KH * g.KW;
  const tile = tiledConfig(gpu, M, N, g.B);
  const spec: Spec = {
    tile,
    KH: g.KH,
    KW: g.KW,
    S: g.S,
    up: g.up,
    bias: !!bias,
    res: !!residual,
    pro: prologue ? (prologue.silu ? "silu" : "affine") : "",
    rot,
  };
  const key =
    `conv2d_gemm|${tile.BM}x${tile.BN}x${tile.BK}/${tile.TM}x${tile.TN}|${g.KH}x${g.KW}|` +
    `${g.S}|${g.up}|${spec.bias}|${spec.res}|${spec.pro}|${rot}`;
  const dummy = unusedBinding(gpu);
  const p = new Params().u32(g.B).u32(M).u32(N).u32(K).u32(g.Cin).u32(g.H).u32(g.W).u32(g.Hu)
    .u32(g.Wu).u32(g.Wo).u32(g.pt).u32(g.pl);
  gpu.dispatch(
    gpu.pipeline(key, () => kernel(spec)),
    [x, w, bias ?? dummy, residual ?? dummy, prologue?.ss ?? dummy, out],
    p,
    [Math.ceil(N / tile.BN), Math.ceil(M / tile.BM), g.B],
  );
}

/**
 * The input gradient of a stride-1 conv (on the upsampled grid when the forward upsampled x):
 * dxu (B, Cin, Hu, Wu) = conv(dy, rot180(w)^T) with padding KH-1-top, KW-1-left, as the forward's
 * implicit GEMM with the weights read in place.
 */
export function gemmConvDx(
  gpu: Gpu,
  w: Tensor,
  dy: Tensor,
  dxu: Tensor,
  g: GemmConvGeom,
): void {
  gemmConv(
    gpu,
    dy,
    w,
    undefined,
    undefined,
    dxu,
    {
      B: g.B,
      Cin: g.Cout,
      H: g.Ho,
      W: g.Wo,
      Cout: g.Cin,
      KH: g.KH,
      KW: g.KW,
      S: 1,
      pt: g.KH - 1 - g.pt,
      pl: g.KW - 1 - g.pl,
      up: 1,
      Hu: g.Ho,
      Wu: g.Wo,
      Ho: g.Hu,
      Wo: g.Wu,
    },
    undefined,
    true,
  );
}

/**
 * The weight gradient as a GEMM: dW (Cout, Cin*KH*KW) = dy (Cout, B*Ho*Wo) times im2col(x)^T
 * (B*Ho*Wo, Cin*KH*KW), the sum over images and pixels split over workgroups (split-K, the slices
 * added in order by a second pass: deterministic) since the output is small and K is long.
 */
export function gemmConvDw(gpu: Gpu, x: Tensor, dy: Tensor, g: GemmConvGeom): Tensor {
  const KHW = g.KH * g.KW, HoWo = g.Ho * g.Wo;
  const M = g.Cout, N = g.Cin * KHW, K = g.B * HoWo;
  const tile = tiledConfig(gpu, M, N);
  const tiles = Math.ceil(M / tile.BM) * Math.ceil(N / tile.BN);
  const S = tiledSplit(tiles, K);
  const { kChunk, nSplit } = splitPlan(K, S, tile);
  const split = nSplit > 1;
  const dw = gpu.empty([g.Cout, g.Cin, g.KH, g.KW]);
  const key = `conv2d_gemm_dw|${tile.BM}x${tile.BN}x${tile.BK}/${tile.TM}x${tile.TN}|` +
    `${g.KH}x${g.KW}|${g.S}|${g.up}|${split}`;
  const pipe = gpu.pipeline(key, () => dwKernel(tile, g, split));
  const parts = split ? gpu.empty([nSplit * M * N]) : dw;
  const p = new Params().u32(1).u32(M).u32(N).u32(K).u32(HoWo).u32(g.Wo).u32(g.H).u32(g.W)
    .u32(g.Hu).u32(g.Wu).u32(g.pt).u32(g.pl).u32(kChunk).u32(nSplit);
  gpu.dispatch(pipe, [dy, x, parts], p, [
    Math.ceil(N / tile.BN),
    Math.ceil(M / tile.BM),
    nSplit,
  ]);
  if (split) sumSplits(gpu, parts, dw, { total: M * N, N, nSplit });
  return dw;
}

/** {@link gemmConvDw}'s kernel: dy as A, x gathered under each tap as B (k = image, pixel). */
function dwKernel(tile: TileConfig, g: GemmConvGeom, split: boolean): string {
  const KHW = g.KH * g.KW;
  const header = `@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct P { batch: u32, M: u32, N: u32, K: u32, HoWo: u32, Wo: u32, H: u32, W: u32, Hu: u32, Wu: u32,
           pt: u32, pl: u32, kChunk: u32, nSplit: u32 }
@group(0) @binding(3) var<uniform> p: P;
// A (m = output channel, k = (image, pixel)): dy read in place.
fn tileA(bi: u32, m: u32, k: u32) -> f32 { return dy[((k / p.HoWo) * p.M + m) * p.HoWo + k % p.HoWo]; }
// B (k = (image, pixel), n = (input channel, tap)): x under that tap, zero in the padding.
fn tileB(bi: u32, k: u32, n: u32) -> f32 {
  let b = k / p.HoWo; let q = k % p.HoWo;
  let ci = n / ${KHW}u; let r = n % ${KHW}u;
  let iy = i32((q / p.Wo) * ${g.S}u + r / ${g.KW}u) - i32(p.pt);
  let ix = i32((q % p.Wo) * ${g.S}u + r % ${g.KW}u) - i32(p.pl);
  if (iy < 0 || ix < 0 || iy >= i32(p.Hu) || ix >= i32(p.Wu)) { return 0.0; }
  return x[((b * (p.N / ${KHW}u) + ci) * p.H + u32(iy) / ${g.up}u) * p.W + u32(ix) / ${g.up}u];
}
fn tileOut(bi: u32, m: u32, n: u32, v: f32) { out[m * p.N + n] = v; }`;
  return tiledCore({ tile, aK: true, bN: false, split, header });
}
