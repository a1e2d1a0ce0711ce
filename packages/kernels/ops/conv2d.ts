/**
 * 2-D convolution of NCHW f32 images (PyTorch `F.conv2d` semantics, weights [out, in, kh, kw]) and its
 * backward, as the VQGAN tokenizer needs them: 3x3 pad 1, 1x1, and the downsample's 3x3 stride 2 on an
 * input zero-padded (top 0, bottom 1, left 0, right 1); any kernel size, stride and padding work.
 *
 * Why textures: on lavapipe (Mesa 22.3) every storage-buffer load inside a loop becomes a per-lane
 * scalar loop with a bounds check, even when the address is uniform, while `textureLoad` of an
 * rgba32float texel is one vectorised gather. Measured on a 3x3 128->128 conv at 64x64: both operands
 * in buffers ~2 GFLOP per CPU-second, weights in a texture ~6, both in textures ~12, and ~15 with the
 * chained accumulation below. So both operands are staged into textures by passes that cost one read
 * and one write of each tensor:
 *
 * 1. `pad` pass: x -> rgba32float texture, each (batch, channel) plane zero-padded to (Hp, Wp) with
 *    Wp a multiple of 4 (one texel = 4 consecutive pixels of a row) and laid out so that every texel
 *    the main kernel reads exists: no bounds checks or selects in the inner loop. Planes are stacked
 *    in columns to fit the 2-D texture size limit. The same pass can nearest-upsample (the weight
 *    gradient of the decoder's Upsample + conv reads x that way) and apply a per-plane affine and
 *    SiLU (a GroupNorm folded in, {@link Conv2dPrologue}: inference and training alike).
 * 2. `wt` pass: W -> texture of [ci][kh][kw] rows x [co] texels (4 output channels per texel).
 * 3. main kernel, an implicit GEMM: each invocation computes COT output channels x PY rows x PX
 *    pixels in registers (COT*PY*PX accumulators) and per input channel reads COT/4*KH*KW weight texels
 *    and ((PY-1)*S+KH) * ceil((S*(PX-1)+KW)/4) input texels: 4x8x8 = 2304 FMAs per 39 loads. Every
 *    accumulator is assigned once per input channel by one chained fma expression (lavapipe turns each
 *    assignment to a loop-carried variable into a masked load/blend/store). A 1-D workgroup of 64
 *    invocations shares one block of output channels when the image has at least 64 tiles (uniform
 *    weight reads); smaller images put several channel blocks in one workgroup. No shared memory, no
 *    barriers. Bias and an optional residual (the res block's skip) are added on the way out.
 *    The channel loop's layout arithmetic divides by reciprocals (lavapipe divides integers lane by
 *    lane: `_udivf.ts`). An input with no prologue to apply and no stash to keep is read unpadded
 *    from one copy of x ({@link flatPlanes}; each tile's window coordinates computed once, taps
 *    outside the plane reading a zero column): no pad pass (tiny's downsample 5.67 -> 4.41 ms).
 *    A conv on a nearest-2x-upsampled input (the decoder's Upsample + conv) runs as four convs of
 *    the source, one per output phase, with the taps that read the same source pixel summed: 2x2
 *    for 3x3, 2.25x fewer FMAs (measured 1.7x faster than the fused upsampling pad), each writing
 *    every other pixel of the output.
 *
 * Backward:
 * - dx = the same forward kernel on dy padded by k-1-pad with W rotated by 180 degrees and
 *   transposed: for stride 1 read from W's rows as they lie in memory (one buffer-to-texture copy,
 *   the rotation and transposition constant component choices, {@link stageWeightRows}), and dy
 *   read unpadded where its planes are whole 256-byte texture rows ({@link flatPlanes}: one copy,
 *   which the weight gradient reads too; each tile's window coordinates are computed once, and a
 *   tap outside the plane reads a zero column, so the channel loop is as before with one more input
 *   texel per window row). With
 *   stride S > 1 it runs once per output phase (S*S stride-1 convs with the
 *   kernel's taps of that phase, each writing every S-th pixel of dx, all reading the one flat
 *   copy of dy): no FMAs on the zeros a dilated
 *   dy would hold (the VQGAN's 4 downsample convs; 2.1x faster than the dilated form at 32x32).
 *   At stride 2 one kernel per row phase computes both column phases from one window of dy and
 *   stores their pixels interleaved as whole vec4s ({@link FwdCfg.colPh}; 2 kernels and 2 weight
 *   stagings instead of 4): tiny's downsample dx 0.78-0.90x -> 0.94-1.09x and `lvm`'s 0.80-0.99x
 *   -> 1.02-1.21x the matmul's GFLOP/s (every round of `deno task bench --torch --rounds 3`'s
 *   `conv2d 3x3 vs matmul` rows: one run before, two after).
 *   The decoder's upsampled 3x3 convs take dx on the source grid as one stride-2 4x4 conv of dy
 *   with summed taps ({@link upsampledDx}: 16 products per source pixel instead of 36).
 * - dW[co, ci, kh, kw] = sum over (b, pixel) of dy * xpad: an invocation owns 2 input channels and a
 *   block of 8 output channels (144 accumulators for 3x3) and walks segments of 2 rows x 8 pixels in
 *   one flat loop, reading dy and x as texels; dbias is summed from the same dy texels. The segments
 *   are split over workgroups when there are too few (split-K), and the slices are summed by a
 *   second pass in a fixed order: deterministic, no float atomics (one slice: written in place).
 *   dy is copied into its texture as it lies in memory where its rows are whole texels
 *   ({@link flatDy}); x is the forward's staging when a {@link Conv2dStash} kept it, else, with no
 *   prologue, read unpadded from one copy like the forward's ({@link flatPlanes}; tiny's
 *   downsample's dW 0.77-0.79x -> 0.92-1.02x the matmul's GFLOP/s in `deno task bench --torch
 *   --rounds 3`'s `conv2d 3x3 vs matmul` row).
 *   A 1x1 conv's dW over a batch (stride 1, no padding) is the GEMM itself: the batched matmul
 *   dY_b X_b^T and one pass summing the batch's products, with dbias ({@link dwByMatmul}; tiny's
 *   128 -> 64 at 16x16 from 0.63-0.67x to 0.79-0.86x the matmul's GFLOP/s in `deno task bench
 *   --torch --rounds 3`'s `conv2d 1x1 vs matmul` row).
 * - dbias alone (no dW asked): a workgroup tree reduction per channel.
 *
 * Winograd F(4x4,3x3) ({@link w43Conv}): stride-1 3x3 convs of 128-768 channels on images of
 * 32x32 and larger with enough work (channels x pixels x batch >= 128 x 64 x 64; forward, dx, and
 * the decoder's upsampled convs from 256 channels at 64x64 outputs, from 512 at 32x32) run as an
 * input transform, 36 GEMMs by the 1x1 kernel above (4x fewer multiply-adds than the direct
 * kernel) and an output transform with the bias and residual (gathering the output's GroupNorm
 * statistics on request, {@link Conv2dGroupStats}): 1.2-1.65x faster there on lavapipe (`deno task
 * bench --filter "vs matmul"`: forward and dx of `lvm`'s 128-512-channel shapes at 1.35-2.0x the
 * matmul's GFLOP/s, counted as the direct conv's FLOPs). The transforms write buffers that are copied into
 * textures ({@link copyRows}); the input transform reads x itself (with the prologue, the zero
 * padding and the nearest upsampling) when x's width is a multiple of 4, skipping the pad pass
 * (6-8% faster per conv from 64x64, about even at 32x32; the `lvm` decode 8.6% faster). On 16x16
 * images and below 128 channels the transforms (2.25x the input and output, written and read
 * again) and the weight transform cost more than the GEMM saves ({@link useW43}). A fused
 * F(2x2,3x3) kernel (transforms in registers, per output channel block) was tried before and ran
 * 1.3-1.7x slower than the direct kernel. Outputs from 96x96 take F(8x8,3x3) instead (10x10
 * patches, 100 products: 0.70x F(4x4)'s GEMM work and stores per output; per conv 25-30% faster
 * than F(4x4) at 128x128 and 14-23% faster than F(6x6) at 256x256; {@link winoFor}), at ~6x F(6x6)'s
 * rounding error (rms 3e-5 of the output's scale; the `lvm` decode's image within 3.2e-5 of the
 * F(4x4)/F(6x6) one, its encode's codes the same). F(6x6,3x3) (8x8 patches, 64 products) is kept as
 * an option ({@link conv2dTuning}'s `wino`).
 *
 * Variants per adapter: the tile table ({@link conv2dTile}) is tuned on lavapipe, where the main
 * kernels bind their textures as read-only storage textures ({@link texDecl}); on a real GPU the same
 * kernels run on sampled textures (texture reads are fast there too) with smaller tiles for
 * occupancy. A shared-memory GPU variant is not written. Figures beside the matmul at the same FLOPs:
 * tools/bench/conv.ts (`deno task bench --filter "vs matmul"`).
 * @module
 */
import { gemmConv, gemmConvDw, gemmConvDx, type GemmConvGeom } from "./conv2d_gemm.ts";
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { TexturePool, textureView } from "@lvm/gpu";
import { upsampleNearest2xBackward } from "./upsample.ts";
import { UDIVF } from "./_udivf.ts";
import { matmul } from "./matmul.ts";

/** Register tile of the forward kernel: output channels x rows x pixels per invocation. */
export interface ConvTile {
  /** Output channels per invocation: 4, 8 or 16. */
  cot: number;
  /** Output rows per invocation (1..8). */
  py: number;
  /** Output pixels per row per invocation: 4, 8 or 16. */
  px: number;
}

/** Options of {@link conv2d} and {@link conv2dBackward}. */
export interface Conv2dOptions {
  /** Stride in both directions (default 1). */
  stride?: number;
  /** Zero padding: one number for all sides, or [top, bottom, left, right] (default 0). */
  pad?: number | readonly [number, number, number, number];
  /** Nearest-upsample x by 2 before the conv (fused into the padding pass; default false). */
  upsample2x?: boolean;
}

/**
 * A forward conv's staged input (x padded into a texture), kept for the backward's weight gradient,
 * which reads x in the same layout: the backward then skips one pass over x. Made empty by the
 * caller, filled by {@link conv2d} (when x fits one texture of at most `maxBytes`), emptied by
 * {@link conv2dBackward} or {@link Conv2dStash.release}. Holding it costs a padded copy of x.
 */
export class Conv2dStash {
  /** The staged input and how it was staged (internal to conv2d.ts). */
  staged: (Staged & { x: Tensor; offT: number; offL: number; pro?: Conv2dPrologue }) | null = null;

  /** @param maxBytes the largest texture kept (default 32 MiB). */
  constructor(readonly maxBytes: number = 32 * 2 ** 20) {}

  /** Gives the kept texture back to conv2d's pool (no-op when empty). */
  release(gpu: Gpu): void {
    if (this.staged) texPool.put(gpu, this.staged.tex);
    this.staged = null;
  }
}

/**
 * Staged weights (the textures {@link conv2d} reads: the plain kernel's layout, the upsampled conv's
 * phase taps, the Winograd transform U = G g G^T) kept across calls, for weights that do not change
 * between them (inference). Without one, every forward call stages its weights again: on lavapipe
 * 6% of an `lvm` VQGAN encode or decode (a 768 -> 768 conv's Winograd weights: 31 ms of ~85).
 * Entries are keyed by the weight tensor and how it was staged; after changing a weight's values,
 * {@link Conv2dWeightCache.release} the cache. Holding it costs the staged bytes ({@link bytes}):
 * the weights' size for direct convs, 4x for Winograd ones.
 */
export class Conv2dWeightCache {
  #m = new Map<Tensor, Map<string, StagedW>>();
  #bytes = 0;

  /** The staged weights of `w` under `key`, made by `make` on the first call. */
  get(w: Tensor, key: string, make: () => StagedW): StagedW {
    let per = this.#m.get(w);
    if (!per) this.#m.set(w, per = new Map());
    let st = per.get(key);
    if (!st) {
      st = make();
      per.set(key, st);
      this.#bytes += st.tex.width * st.tex.height * 16;
    }
    return st;
  }

  /** Bytes of the textures held. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Destroys the held textures (after work already recorded with them). */
  release(gpu: Gpu): void {
    if (this.#m.size) gpu.submit();
    for (const per of this.#m.values()) for (const st of per.values()) st.tex.destroy();
    this.#m.clear();
    this.#bytes = 0;
  }
}

/**
 * Statistics of a conv's output for a following GroupNorm, gathered as the output is written (by the
 * Winograd output transform or the direct kernel's epilogue), so the norm need not read it again:
 * `part` holds, per output plane (image, channel) and per tile of the path, (count, mean, M2, 0) of
 * the values written (bias and residual included), `tiles` tiles per plane. Left empty (null) by the
 * upsampled conv's direct phase convs; `groupNormAffineFromStats` (groupnorm_rows.ts) merges it.
 * Made empty by the caller, filled by {@link conv2d}; release it after use.
 */
export class Conv2dGroupStats {
  /** (planes * tiles, 4) partials, or null when the conv did not gather them. */
  part: Tensor | null = null;
  /** Partials per output plane. */
  tiles = 0;

  /** Frees the partials. */
  release(): void {
    this.part?.release();
    this.part = null;
  }
}

/**
 * A per-channel affine (and SiLU) applied to x as the forward stages it: the conv sees
 * act(x * scale + shift) per (image, channel) plane, with the zero padding added after. This is a
 * GroupNorm(+SiLU) before the conv without its normalized copy of x (`groupNormPlaneAffine` in
 * groupnorm_rows.ts makes `ss`). For training, pass the same prologue to {@link conv2dBackward}:
 * its weight gradient is then taken against act(x * scale + shift) (the forward's staged input when
 * a {@link Conv2dStash} kept it), and its dx is the gradient of that activation.
 */
export interface Conv2dPrologue {
  /** (B*Cin, 2): scale and shift of each plane of x. */
  ss: Tensor;
  /** SiLU after the affine. */
  silu: boolean;
}

/** Options of {@link conv2d}'s forward: adds the fused residual, an output tensor, a tile override. */
export interface Conv2dForwardOptions extends Conv2dOptions {
  /** Convolve act(x * scale + shift) ({@link Conv2dPrologue}). */
  prologue?: Conv2dPrologue;
  /**
   * Keep the staged input here for {@link conv2dBackward}'s weight gradient (pass the same stash
   * in its options); ignored by the nearest-2x-upsampled conv.
   */
  stash?: Conv2dStash;
  /** Added to the output (same shape as it): out = conv(x) + bias + residual. */
  residual?: Tensor;
  /** Where to write the output (must not alias an input). */
  out?: Tensor;
  /** Register tile to use instead of the table's choice (benchmarks). */
  tile?: ConvTile;
  /** Keep the staged weights here and reuse them ({@link Conv2dWeightCache}: inference). */
  weights?: Conv2dWeightCache;
  /** Gather the output's statistics here where the path can ({@link Conv2dGroupStats}). */
  stats?: Conv2dGroupStats;
}

/** Options of {@link conv2dBackward}: the forward's options plus which gradients to compute. */
export interface Conv2dBackwardOptions extends Conv2dOptions {
  /** Compute dx (default true). */
  dx?: boolean;
  /** Compute dw (default true). */
  dw?: boolean;
  /** Compute dbias (default true). */
  dbias?: boolean;
  /** Register tile of the dx convolution instead of the table's choice (tests, benchmarks). */
  tile?: ConvTile;
  /** The forward's {@link Conv2dStash}: its staged x is used when it fits, then released. */
  stash?: Conv2dStash;
  /**
   * The forward's prologue: dw is then taken against act(x * scale + shift), the input the conv
   * saw, and dx is that activation's gradient (the caller takes it through the norm).
   */
  prologue?: Conv2dPrologue;
}

/** Gradients of {@link conv2dBackward}; null where not requested. */
export interface Conv2dGrads {
  /** (B, Cin, H, W) */
  dx: Tensor | null;
  /** (Cout, Cin, KH, KW) */
  dw: Tensor | null;
  /** (Cout) */
  dbias: Tensor | null;
}

const WG = 64;
const COMP = ["x", "y", "z", "w"];

/** The geometry of one convolution: the implicit GEMM's fields, plus the bottom and right padding. */
interface Geom extends GemmConvGeom {
  pb: number;
  pr: number;
}

function padOf(p: Conv2dOptions["pad"]): [number, number, number, number] {
  if (p === undefined) return [0, 0, 0, 0];
  if (typeof p === "number") return [p, p, p, p];
  return [p[0], p[1], p[2], p[3]];
}

function geometry(
  fn: string,
  xShape: readonly number[],
  wShape: readonly number[],
  o: Conv2dOptions,
): Geom {
  const [B, Cin, H, W] = xShape;
  const [Cout, Cin2, KH, KW] = wShape;
  if (Cin2 !== Cin) {
    throw new RangeError(
      `${fn}: w has ${Cin2} input channels but x has ${Cin} (x [${xShape}], w [${wShape}])`,
    );
  }
  const S = o.stride ?? 1;
  if (!Number.isInteger(S) || S < 1 || S > 4) {
    throw new RangeError(`${fn}: stride must be an integer in 1..4, got ${S}`);
  }
  const [pt, pb, pl, pr] = padOf(o.pad);
  for (const v of [pt, pb, pl, pr]) {
    if (!Number.isInteger(v) || v < 0 || v > Math.max(KH, KW)) {
      throw new RangeError(
        `${fn}: padding must be integers in 0..${Math.max(KH, KW)}, got [${[pt, pb, pl, pr]}]`,
      );
    }
  }
  const up = o.upsample2x ? 2 : 1;
  const Hu = H * up, Wu = W * up;
  const Ho = Math.floor((Hu + pt + pb - KH) / S) + 1;
  const Wo = Math.floor((Wu + pl + pr - KW) / S) + 1;
  if (Ho < 1 || Wo < 1 || KH < 1 || KW < 1 || KH > 16 || KW > 16) {
    throw new RangeError(
      `${fn}: a ${KH}x${KW} kernel (at most 16x16) must fit the padded ${Hu}x${Wu} input`,
    );
  }
  return { B, Cin, H, W, Cout, KH, KW, S, pt, pb, pl, pr, up, Hu, Wu, Ho, Wo };
}

function check(fn: string, name: string, t: Tensor | undefined, shape: readonly number[]) {
  if (!t) return;
  const n = shape.reduce((a, b) => a * b, 1);
  if (t.dtype !== "f32" || t.size !== n) {
    throw new RangeError(
      `${fn}: ${name} must be f32 of shape [${shape}], got [${t.shape}] ${t.dtype}`,
    );
  }
}

function check4d(fn: string, name: string, t: Tensor, what: string) {
  if (t.shape.length !== 4 || t.dtype !== "f32") {
    throw new RangeError(
      `${fn}: ${name} must be an f32 ${what} tensor, got [${t.shape}] ${t.dtype}`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// Textures: a small pool (sizes rounded up so that shapes reuse each other) and the plane layout.

const texPool = new TexturePool("conv2d");

function takeTexture(gpu: Gpu, w: number, h: number): GPUTexture {
  const max = gpu.limits.maxTextureDimension2D;
  return texPool.take(
    gpu,
    Math.min(max, Math.ceil(w / 16) * 16),
    Math.min(max, Math.ceil(h / 64) * 64),
  );
}

/**
 * Destroys the textures conv2d keeps for reuse (staged inputs and weights; the largest is one padded
 * input, e.g. 69 MB for 256 channels at 256x256). They are made again when needed.
 */
export function conv2dReleaseTextures(gpu: Gpu): void {
  texPool.release(gpu);
  flatPool.release(gpu);
}

/** Planes of (Hp rows x Wp4 texels) packed P per band, bands stacked: texel (u, v) of a texture. */
interface PlaneLayout {
  Hp: number;
  Wp4: number;
  P: number;
  bands: number;
}

function planeLayout(gpu: Gpu, planes: number, Hp: number, Wp4: number): PlaneLayout | null {
  // As few planes side by side as fit: texture rows are stored linearly, so a narrow texture keeps the
  // rows one invocation reads close together in memory (fewer cache lines and TLB entries).
  const max = gpu.limits.maxTextureDimension2D;
  const perColumn = Math.floor(max / Hp);
  if (perColumn < 1) return null;
  const P = Math.ceil(planes / perColumn);
  if (P * Wp4 > max) return null;
  return { Hp, Wp4, P, bands: Math.ceil(planes / P) };
}

/** Largest batch chunk whose `chans`-channel planes of this size fit one texture. */
function batchChunk(
  fn: string,
  gpu: Gpu,
  B: number,
  chans: number,
  Hp: number,
  Wp4: number,
): number {
  let bc = B;
  while (bc > 0 && !planeLayout(gpu, bc * chans, Hp, Wp4)) bc = Math.floor(bc / 2);
  if (bc === 0) {
    throw new RangeError(
      `${fn}: ${chans} planes of ${Hp}x${
        Wp4 * 4
      } (padded) do not fit one ${gpu.limits.maxTextureDimension2D}^2 texture`,
    );
  }
  return bc;
}

// ---------------------------------------------------------------------------------------------------
// Pass 1: zero-pad (and upsample) planes into a texture.

/**
 * Entry point of both pad kernels: invocation i writes texel (c4, r) of padded plane `plane`
 * (p.Hp rows of p.Wp4 texels).
 */
const PAD_MAIN = `@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;
  if (i >= p.N4) { return; }
  let c4 = i % p.Wp4;
  let pr = i / p.Wp4;            // plane * Hp + r
  let r = pr % p.Hp;
  let plane = pr / p.Hp;`;

const PAD_WGSL = (pro: Prologue) => `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
struct P {
  N4: u32, H: u32, W: u32, Hp: u32, Wp4: u32, offT: i32, offL: i32, up: u32, P: u32, plane0: u32,
}
${proDecl(pro, 2)}
${pro === "silu" ? SILU_FN(false) : ""}
// Padded element (plane, r, c) is element (r - offT, c - offL) of the upsampled plane when that is
// inside it, else 0.
fn src(plane: u32, r: i32, c: i32) -> f32 {
  let yy = r - p.offT;
  let xx = c - p.offL;
  if (yy < 0 || xx < 0) { return 0.0; }
  let sy = u32(yy);
  let sx = u32(xx);
  if (sy >= p.H * p.up || sx >= p.W * p.up) { return 0.0; }
  return ${proApply(pro, "x[(plane * p.H + sy / p.up) * p.W + sx / p.up]", false)};
}
${PAD_MAIN}
  ${proLoad(pro)}
  let c = i32(c4 * 4u);
  let sp = p.plane0 + plane;
  let v = vec4f(src(sp, i32(r), c), src(sp, i32(r), c + 1), src(sp, i32(r), c + 2),
                src(sp, i32(r), c + 3));
  textureStore(tex, vec2u((plane % p.P) * p.Wp4 + c4, (plane / p.P) * p.Hp + r), v);
}`;

/**
 * The common case (no upsample, W a multiple of 4) reads the source as vec4s: two per
 * output texel, shuffled by k = (-offL) mod 4 (lavapipe pays per load instruction, not per byte).
 * The plane sizes are baked in, so the index divisions are multiply-shifts (on lavapipe integer
 * division is a per-lane loop; the pass ran 1.2x faster).
 */
/** The vec4 pad passes' bindings and bounds-checked source load (both variants below). */
const PAD_VEC_HEADER = (pro: Prologue) => `
@group(0) @binding(0) var<storage, read> x: array<vec4f>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
struct P { N4: u32, H: u32, W4: u32, Hp: u32, Wp4: u32, offT: i32, offL: i32, P: u32, plane0: u32 }
${proDecl(pro, 2)}
fn ld(rowbase: u32, a: i32) -> vec4f {
  if (a < 0 || a >= i32(p.W4)) { return vec4f(0.0); }
  return ${proApply(pro, "x[rowbase + u32(a)]", true)};
}`;

/**
 * A per-plane affine (and SiLU) applied to the source as it is staged ({@link Conv2dPrologue}):
 * "" = none, "affine", "silu" (affine then SiLU). Padding stays zero.
 */
type Prologue = "" | "affine" | "silu";

/** The prologue's bindings: the per-plane (scale, shift) at `b`, then the uniform. */
function proDecl(pro: Prologue, b: number): string {
  return pro
    ? `@group(0) @binding(${b}) var<storage, read> ss: array<vec2f>;
@group(0) @binding(${b + 1}) var<uniform> p: P;
var<private> sc: vec2f;`
    : `@group(0) @binding(${b}) var<uniform> p: P;`;
}

/** Loads the plane's (scale, shift) (the pad kernels' \`plane\`, from plane0). */
function proLoad(pro: Prologue): string {
  return pro ? "sc = ss[p.plane0 + plane];" : "";
}

/** The source value `v` (a vec4f when `vec`, else f32) with the prologue applied. */
function proApply(pro: Prologue, v: string, vec: boolean): string {
  if (!pro) return v;
  const t = vec ? `fma(${v}, vec4f(sc.x), vec4f(sc.y))` : `fma(${v}, sc.x, sc.y)`;
  return pro === "silu" ? `silu_(${t})` : t;
}

/** SiLU (x * sigmoid(x), as the GroupNorm kernels compute it) for the prologue. */
const SILU_FN = (vec: boolean) =>
  vec
    ? "fn silu_(t: vec4f) -> vec4f { return t / (vec4f(1.0) + exp(-t)); }"
    : "fn silu_(t: f32) -> f32 { return t / (1.0 + exp(-t)); }";

/** act(x * scale + shift) per plane written out ({@link applyPrologue}). */
const PRO_APPLY_WGSL = (silu: boolean) => `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> ss: array<vec2f>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
struct P { N: u32, HW: u32 }
@group(0) @binding(3) var<uniform> p: P;
${silu ? SILU_FN(false) : ""}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;
  if (i >= p.N) { return; }
  let sc = ss[i / p.HW];
  let t = fma(x[i], sc.x, sc.y);
  y[i] = ${silu ? "silu_(t)" : "t"};
}`;

/** The activation a prologue stands for, act(x * scale + shift), as a tensor (the GEMM's dw). */
function applyPrologue(gpu: Gpu, x: Tensor, pro: Conv2dPrologue): Tensor {
  const y = gpu.empty(x.shape);
  gpu.dispatch(
    gpu.pipeline(`conv2d_pro_apply|${pro.silu}`, () => PRO_APPLY_WGSL(pro.silu)),
    [x, pro.ss, y],
    new Params().u32(x.size).u32(x.shape[2] * x.shape[3]),
    grid(Math.ceil(x.size / 256)),
  );
  return y;
}

const PAD_VEC_WGSL = (k: number, lay: PlaneLayout, pro: Prologue) =>
  `${PAD_VEC_HEADER(pro)}
${pro === "silu" ? SILU_FN(true) : ""}
${PAD_MAIN.replaceAll("p.Wp4", `${lay.Wp4}u`).replaceAll("p.Hp", `${lay.Hp}u`)}
  ${proLoad(pro)}
  let yy = i32(r) - p.offT;
  var v = vec4f(0.0);
  if (yy >= 0 && yy < i32(p.H)) {
    let rowbase = ((p.plane0 + plane) * p.H + u32(yy)) * p.W4;
    let a = (i32(c4 * 4u) - p.offL - ${k}) / 4;  // exact: the difference is a multiple of 4
    let lo = ld(rowbase, a);
    ${
    k === 0 ? "v = lo;" : `let hi = ld(rowbase, a + 1);
    v = vec4f(${
      ["lo.x", "lo.y", "lo.z", "lo.w", "hi.x", "hi.y", "hi.z"].slice(k, k + 4).join(", ")
    });`
  }
  }
  textureStore(tex, vec2u((plane % ${lay.P}u) * ${lay.Wp4}u + c4, (plane / ${lay.P}u) * ${lay.Hp}u + r), v);
}`;

/**
 * The row passes' common part: invocation = padded row r of a plane; its texel coordinates (u0, v)
 * and source row `sy` (r - offT, over the upsampling factor `up`), or a zero row outside the source.
 */
function rowPadHead(
  lay: PlaneLayout,
  pro: Prologue,
  up: 1 | 2,
  baked?: { H: number; offT: number },
): string {
  const offT = baked ? `(${baked.offT})` : "p.offT", H = baked ? `${baked.H}` : "i32(p.H)";
  return `${PAD_VEC_HEADER(pro)}
${pro === "silu" ? SILU_FN(true) : ""}
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let pr = ${WG_INDEX} * 64u + li;  // plane * Hp + r
  if (pr >= p.N4) { return; }
  let r = pr % ${lay.Hp}u;
  let plane = pr / ${lay.Hp}u;
  ${proLoad(pro)}
  let u0 = (plane % ${lay.P}u) * ${lay.Wp4}u;
  let v = (plane / ${lay.P}u) * ${lay.Hp}u + r;
  let yy = i32(r) - ${offT};
  if (yy < 0 || yy >= ${up === 2 ? "2 * " : ""}${H}) {
    for (var c = 0u; c < ${lay.Wp4}u; c++) { textureStore(tex, vec2u(u0 + c, v), vec4f(0.0)); }
    return;
  }
  let sy = u32(yy)${up === 2 ? " / 2u" : ""};`;
}

/**
 * {@link PAD_VEC_WGSL} with one invocation per padded row, for narrow planes (up to 17 texels, 64
 * pixels): the row's texels unrolled, each source vec4 loaded once (a texel's upper half is the next
 * one's lower half) and the index arithmetic paid once per row instead of once per texel. Measured
 * (timestamp replay, the 4 pads of a 3x3 conv's forward + backward, 8x64 planes of 32x32): 2.7 vs
 * 6.1 ms and 5.1 vs 10.1 ms; at 64x64 about even (14.8-15.3 vs 15.0-17.4 ms), at 128x128 slower.
 * The source's size and placement are baked in, so the loads outside the row are known zeros and the
 * rest go without a bounds check: per pass (best of 4 x 200, one process, alternating, a slow
 * phase of this machine) 8 x 64 planes of 16x16 0.486 -> 0.443 ms, 8 x 128 of 8x8 0.352 -> 0.322,
 * with the SiLU prologue at 32x32 1.639 -> 1.542, at 8x8 0.392 -> 0.384; 32x32 plain the same.
 */
const PAD_ROW_WGSL = (k: number, lay: PlaneLayout, pro: Prologue, b: PlaneGeom) => {
  const L: string[] = [];
  L.push(`${rowPadHead(lay, pro, 1, b)}
  let rowbase = ((p.plane0 + plane) * ${b.H}u + sy) * ${b.W4}u;`);
  const a0 = (-b.offL - k) / 4; // exact: source vec4 of texel 0
  const n = lay.Wp4 + (k === 0 ? 0 : 1);
  for (let j = 0; j < n; j++) {
    // The source vec4s outside the row are known here: zeros, no bounds check.
    const a = a0 + j;
    L.push(
      a < 0 || a >= b.W4
        ? `  let s${j} = vec4f(0.0);`
        : `  let s${j} = ${proApply(pro, `x[rowbase + ${a}u]`, true)};`,
    );
  }
  for (let c = 0; c < lay.Wp4; c++) {
    const val = k === 0 ? `s${c}` : `vec4f(${
      [0, 1, 2, 3].map((i) => {
        const e = k + i;
        return `s${c + (e >> 2)}.${COMP[e & 3]}`;
      }).join(", ")
    })`;
    L.push(`  textureStore(tex, vec2u(u0 + ${c}u, v), ${val});`);
  }
  L.push(`}`);
  return L.join("\n");
};

/**
 * {@link PAD_ROW_WGSL} for a nearest-2x-upsampled source (the weight gradient of the decoder's
 * upsampled convs): one invocation per padded row, the source row's W/4 vec4s loaded once and each
 * padded texel built from them with constant components (`offL` baked in), zero outside the
 * upsampled plane. In place of the per-texel scalar pass, whose index arithmetic (divisions by the
 * upsampling factor and the sizes) ran 3-4x slower on tiny's 16x16 -> 32x32 staging.
 */
const PAD_UP_ROW_WGSL = (offL: number, W: number, lay: PlaneLayout, pro: Prologue) => {
  const W4 = W / 4;
  const L: string[] = [];
  L.push(`${rowPadHead(lay, pro, 2)}
  let rowbase = ((p.plane0 + plane) * p.H + sy) * ${W4}u;`);
  for (let j = 0; j < W4; j++) L.push(`  let s${j} = ld(rowbase, ${j});`);
  for (let c = 0; c < lay.Wp4; c++) {
    const comps = [0, 1, 2, 3].map((i) => {
      const px = 4 * c + i - offL; // upsampled column
      if (px < 0 || px >= 2 * W) return "0.0";
      const sp = px >> 1;
      return `s${sp >> 2}.${COMP[sp & 3]}`;
    });
    L.push(`  textureStore(tex, vec2u(u0 + ${c}u, v), vec4f(${comps.join(", ")}));`);
  }
  L.push(`}`);
  return L.join("\n");
};

/**
 * Zeroes the border of planes copied into a padded layout ({@link stage}): of each plane (Hp rows
 * of Wp4 texels, P per band) the T rows above and the Bo rows below the H copied ones, and the L
 * texels left and the rest right of the W4 copied ones in between.
 */
const BORDER_WGSL = `
@group(0) @binding(0) var tex: texture_storage_2d<rgba32float, write>;
struct P { N: u32, per: u32, Wp4: u32, Hp: u32, P: u32, T: u32, Bo: u32, L: u32, W4: u32, H: u32 }
@group(0) @binding(1) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;
  if (i >= p.N) { return; }
  let plane = i / p.per;
  var k = i - plane * p.per;
  var r = 0u;
  var c = 0u;
  let rows = (p.T + p.Bo) * p.Wp4;
  if (k < rows) {
    r = k / p.Wp4;
    c = k - r * p.Wp4;
    if (r >= p.T) { r += p.H; }
  } else {
    k -= rows;
    let side = p.Wp4 - p.W4;
    let m = k / side;
    let s = k - m * side;
    r = p.T + m;
    c = select(s + p.W4, s, s < p.L);
  }
  let u = (plane % p.P) * p.Wp4 + c;
  let v = (plane / p.P) * p.Hp + r;
  textureStore(tex, vec2u(u, v), vec4f(0.0));
}`;

interface Staged {
  tex: GPUTexture;
  view: GPUTextureView;
  lay: PlaneLayout;
}

/**
 * Stages `planes` planes (from plane `plane0` of src, each H x W) into a texture of padded
 * (Hp, Wp4*4) planes with the source at (offT, offL) (either may be negative: the source's first
 * rows or columns are then cut), nearest-upsampled by `up`.
 */
function stage(
  gpu: Gpu,
  src: Tensor,
  plane0: number,
  planes: number,
  H: number,
  W: number,
  lay: PlaneLayout,
  offT: number,
  offL: number,
  up = 1,
  prologue?: Conv2dPrologue,
): Staged {
  const tex = takeTexture(gpu, Math.min(planes, lay.P) * lay.Wp4, lay.bands * lay.Hp);
  const view = textureView(tex);
  const W4 = W / 4, l4 = offL / 4;
  if (
    conv2dTuning.copyStage && up === 1 && !prologue && offT >= 0 && offL >= 0 && offL % 4 === 0 &&
    offT + H <= lay.Hp && l4 + W4 <= lay.Wp4 && (W * 4) % 256 === 0
  ) {
    // Padding (if any) a whole number of texels: each plane's rows go to texture rows by a copy
    // per plane (a memcpy in lavapipe) instead of the pass below, whose image stores go lane by
    // lane, and only the border around them is zeroed. Rows must be 256-byte multiples (WebGPU's
    // copy pitch): from 64 pixels wide. With no padding (a 1x1 conv's input, a dy read as it is),
    // the `lvm` decoder's 1x1 shortcuts (best of 4, alternating in one process): 256 -> 128 at
    // 256x256 153 -> 120 ms, 512 -> 256 at 128x128 123 -> 107; the decode 3529 -> 3445 ms (best
    // of 4). The downsample's bottom/right padding (`lvm`'s 128 channels from 256x256, too large
    // for the flat read): the forward 98.1 -> 89.0 ms (median of 6 alternating; the pad pass
    // alone 20 ms in a timestamp profile).
    const bytes = H * W * 4;
    for (let p = 0; p < planes; p++) {
      gpu.copyToTexture(
        src,
        { offset: (plane0 + p) * bytes, bytesPerRow: W * 4, rowsPerImage: H },
        {
          texture: tex,
          origin: [(p % lay.P) * lay.Wp4 + l4, Math.floor(p / lay.P) * lay.Hp + offT, 0],
        },
        [W4, H, 1],
      );
    }
    const below = lay.Hp - offT - H, side = lay.Wp4 - W4;
    const per = (offT + below) * lay.Wp4 + H * side; // border texels of a plane
    if (per > 0) {
      gpu.dispatch(
        gpu.pipeline("conv2d_border", BORDER_WGSL),
        [view],
        new Params().u32(planes * per).u32(per).u32(lay.Wp4).u32(lay.Hp).u32(lay.P).u32(offT)
          .u32(below).u32(l4).u32(W4).u32(H),
        grid(Math.ceil((planes * per) / 256)),
      );
    }
    return { tex, view, lay };
  }
  const N4 = planes * lay.Hp * lay.Wp4;
  const pro: Prologue = prologue ? (prologue.silu ? "silu" : "affine") : "";
  const binds = [src, view, ...(prologue ? [prologue.ss] : [])];
  if (up === 1 && W % 4 === 0) {
    const k = (((-offL) % 4) + 4) % 4;
    // Narrow planes: one invocation per padded row (PAD_ROW_WGSL), else one per texel.
    const row = lay.Wp4 <= 17;
    const n = row ? planes * lay.Hp : N4;
    const b: PlaneGeom = { H, W4: W / 4, offT, offL };
    gpu.dispatch(
      gpu.pipeline(
        row
          ? `conv2d_pad_row|${k}|${lay.Hp}|${lay.Wp4}|${lay.P}|${pro}|${H}x${W}+${offT}+${offL}`
          : `conv2d_pad_vec|${k}|${lay.Hp}|${lay.Wp4}|${lay.P}|${pro}`,
        () => (row ? PAD_ROW_WGSL(k, lay, pro, b) : PAD_VEC_WGSL(k, lay, pro)),
      ),
      binds,
      new Params().u32(n).u32(H).u32(W / 4).u32(lay.Hp).u32(lay.Wp4).i32(offT).i32(offL).u32(lay.P)
        .u32(plane0),
      grid(Math.ceil(n / (row ? 64 : 256))),
    );
    return { tex, view, lay };
  }
  if (up === 2 && W % 4 === 0 && lay.Wp4 <= 17 && offL >= 0) {
    const n = planes * lay.Hp;
    gpu.dispatch(
      gpu.pipeline(
        `conv2d_pad_uprow|${offL}|${W}|${lay.Hp}|${lay.Wp4}|${lay.P}|${pro}`,
        () => PAD_UP_ROW_WGSL(offL, W, lay, pro),
      ),
      binds,
      new Params().u32(n).u32(H).u32(W / 4).u32(lay.Hp).u32(lay.Wp4).i32(offT).i32(offL).u32(lay.P)
        .u32(plane0),
      grid(Math.ceil(n / 64)),
    );
    return { tex, view, lay };
  }
  gpu.dispatch(
    gpu.pipeline(`conv2d_pad|${pro}`, () => PAD_WGSL(pro)),
    binds,
    new Params().u32(N4).u32(H).u32(W).u32(lay.Hp).u32(lay.Wp4).i32(offT).i32(offL).u32(up)
      .u32(lay.P).u32(plane0),
    grid(Math.ceil(N4 / 256)),
  );
  return { tex, view, lay };
}

// ---------------------------------------------------------------------------------------------------
// Pass 2: weights -> texture. Row R = (cin, kh, kw) (or (cout, kh', kw') flipped for dx), texel c4
// holds output channels 4*c4..4*c4+3 (zero past the end). Rows wrap into bands of wH rows, wH a
// multiple of the taps per channel so that one input channel's taps never straddle bands.
// Modes ({@link WeightTaps}):
// 0 (plain): row = (ci, kh, kw), col = co.
// 1 (flipped sub-kernel, one output phase of a strided conv's dx, see dxPhase): row = (co, jh, jw),
//   col = ci, tap (jh, jw) of KHs x KWs is w[k0h + st*(KHs-1-jh), k0w + st*(KWs-1-jw)]; with st = 1,
//   k0 = 0 and the full size that is the kernel rotated by 180 degrees.
// 2 (combined taps, one output phase of a conv on a nearest-2x-upsampled input, see upPhase): row =
//   (ci, jh, jw), col = co, tap (jh, jw) sums the w[kh, kw] that read source pixel offset
//   (offH + jh, offW + jw), i.e. floor((rh + kh - pt) / 2) - offH == jh (likewise kw).

const WT_WGSL = `
@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
struct P {
  N: u32, Cout: u32, Cin: u32, KH: u32, KW: u32, CoP4: u32, mode: u32, wH: u32, KHs: u32, KWs: u32,
  taps: u32, k0h: u32, k0w: u32, st: u32, rh: i32, rw: i32, pt: i32, pl: i32, offH: i32, offW: i32,
}
@group(0) @binding(2) var<uniform> p: P;
fn at(row: u32, col: u32) -> f32 {
  let KHW = p.KH * p.KW;
  if (p.mode == 0u) {
    if (col >= p.Cout) { return 0.0; }
    return w[(col * p.Cin + row / KHW) * KHW + row % KHW];
  }
  let t = row % p.taps;
  if (p.mode == 1u) {
    if (col >= p.Cin) { return 0.0; }
    let kh = p.k0h + p.st * (p.KHs - 1u - t / p.KWs);
    let kw = p.k0w + p.st * (p.KWs - 1u - t % p.KWs);
    return w[((row / p.taps) * p.Cin + col) * KHW + kh * p.KW + kw];
  }
  if (col >= p.Cout) { return 0.0; }
  let jh = i32(t / p.KWs);
  let jw = i32(t % p.KWs);
  let base = (col * p.Cin + row / p.taps) * KHW;
  var s = 0.0;
  for (var kh = 0u; kh < p.KH; kh++) {
    // >> on i32 is arithmetic: a floor division by 2 for negative values too.
    if (((p.rh + i32(kh) - p.pt) >> 1u) - p.offH != jh) { continue; }
    for (var kw = 0u; kw < p.KW; kw++) {
      if (((p.rw + i32(kw) - p.pl) >> 1u) - p.offW != jw) { continue; }
      s += w[base + kh * p.KW + kw];
    }
  }
  return s;
}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;
  if (i >= p.N) { return; }
  let row = i / p.CoP4;
  let c4 = i % p.CoP4;
  let v = vec4f(at(row, c4 * 4u), at(row, c4 * 4u + 1u), at(row, c4 * 4u + 2u), at(row, c4 * 4u + 3u));
  textureStore(tex, vec2u((row / p.wH) * p.CoP4 + c4, row % p.wH), v);
}`;

interface StagedW extends Staged {
  CoP4: number;
  wH: number;
  /**
   * The row layout ({@link stageWeightRows}): texture row co holds w[co] as it lies in memory
   * (Cin*KH*KW floats, 4 per texel), read as the stride-1 dx's rotated, transposed kernel. Absent:
   * the layouts of {@link stageWeights}.
   */
  rows?: boolean;
}

/**
 * The plain layout when it is one band and rows come in quads (Cin*KH*KW % 4 == 0, every VQGAN
 * conv): texel (c4, r) = w[4*c4 .. 4*c4+3][r] is a 4x4 transpose, so each invocation reads four vec4
 * rows of w (output channels 4*c4+j, rows 4q..4q+3) and writes four texels: 4 vec4 loads where the
 * general kernel makes 16 strided scalar loads and divisions (the staging took 12% of an lvm
 * encode; this pass measured 3.5x faster there).
 */
const WT_QUAD_WGSL = `
@group(0) @binding(0) var<storage, read> w: array<vec4f>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
struct P { CoP4: u32, R4: u32, Cout: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let c4 = g.x;
  let q = g.y;
  if (c4 >= p.CoP4 || q >= p.R4) { return; }
  // Unrolled, constant component indices (see WT_ROT_QUAD_WGSL).
  let co = c4 * 4u;
  let v0 = select(vec4f(0.0), w[min(co, p.Cout - 1u) * p.R4 + q], co < p.Cout);
  let v1 = select(vec4f(0.0), w[min(co + 1u, p.Cout - 1u) * p.R4 + q], co + 1u < p.Cout);
  let v2 = select(vec4f(0.0), w[min(co + 2u, p.Cout - 1u) * p.R4 + q], co + 2u < p.Cout);
  let v3 = select(vec4f(0.0), w[min(co + 3u, p.Cout - 1u) * p.R4 + q], co + 3u < p.Cout);
  textureStore(tex, vec2u(c4, q * 4u), vec4f(v0.x, v1.x, v2.x, v3.x));
  textureStore(tex, vec2u(c4, q * 4u + 1u), vec4f(v0.y, v1.y, v2.y, v3.y));
  textureStore(tex, vec2u(c4, q * 4u + 2u), vec4f(v0.z, v1.z, v2.z, v3.z));
  textureStore(tex, vec2u(c4, q * 4u + 3u), vec4f(v0.w, v1.w, v2.w, v3.w));
}`;

/**
 * The rotated (dx) layout when Cin % 4 == 0: texel (c4, (co, t)) = w[co][4*c4 .. 4*c4+3][src[t]],
 * so one invocation per (c4, co) reads the 4*KHW contiguous floats of those 4 input channels as KHW
 * vec4s and writes one texel per staged tap: `src[t]` = KHW-1-t for the whole kernel rotated (a
 * stride-1 dx), or the taps of one output phase of a strided conv's dx ({@link dxPhase}).
 */
const WT_ROT_QUAD_WGSL = (KHW: number, src: readonly number[]) => {
  // Unrolled: every component index is a constant (a private array indexed by a loop variable is a
  // per-lane memory access on lavapipe).
  const L: string[] = [];
  for (let i = 0; i < KHW; i++) L.push(`  let v${i} = select(vec4f(0.0), w[base + ${i}u], ok);`);
  const T = src.length;
  for (let t = 0; t < T; t++) {
    // Channel j's tap k is float j*KHW + k of the block.
    const k = src[t];
    const comps = [0, 1, 2, 3].map((j) => {
      const f = j * KHW + k;
      return `v${f >> 2}.${COMP[f & 3]}`;
    });
    L.push(`  textureStore(tex, vec2u(c4, co * ${T}u + ${t}u), vec4f(${comps.join(", ")}));`);
  }
  return `
@group(0) @binding(0) var<storage, read> w: array<vec4f>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
struct P { CoP4: u32, Cout: u32, Cin: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let c4 = g.x;
  let co = g.y;
  if (c4 >= p.CoP4 || co >= p.Cout) { return; }
  let ok = c4 * 4u < p.Cin;
  let base = select(0u, (co * p.Cin + c4 * 4u) * ${KHW}u / 4u, ok);
${L.join("\n")}
}`;
};

/**
 * The combined-taps layout of one output phase of a conv on a nearest-2x-upsampled input (mode "up"
 * of WT_WGSL) unrolled: `taps[t]` lists the kernel taps (kh*KW + kw) summed into staged tap t, known
 * on the host, so one invocation per (c4, ci) loads the 4 output channels' KH*KW weights once and
 * writes their `taps.length` texels with constant sums (the generic kernel re-derives the tap
 * sets per element with loops and divisions: 8 ms per 512->512 phase in an lvm decode).
 */
const WT_UP_WGSL = (KHW: number, taps: number[][]) => {
  const L: string[] = [];
  for (let j = 0; j < 4; j++) {
    L.push(`  let ok${j} = c4 * 4u + ${j}u < p.Cout;`);
    L.push(`  let b${j} = (min(c4 * 4u + ${j}u, p.Cout - 1u) * p.Cin + ci) * ${KHW}u;`);
    for (let k = 0; k < KHW; k++) {
      L.push(`  let w${j}_${k} = select(0.0, w[b${j} + ${k}u], ok${j});`);
    }
  }
  taps.forEach((ks, t) => {
    const sum = (j: number) => (ks.length ? ks.map((k) => `w${j}_${k}`).join(" + ") : "0.0");
    L.push(`  {`);
    L.push(`    let r = ci * ${taps.length}u + ${t}u;`);
    L.push(
      `    textureStore(tex, vec2u((r / p.wH) * p.CoP4 + c4, r % p.wH), vec4f(${
        [0, 1, 2, 3].map(sum).join(", ")
      }));`,
    );
    L.push(`  }`);
  });
  return `
@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
struct P { CoP4: u32, Cout: u32, Cin: u32, wH: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let c4 = g.x;
  let ci = g.y;
  if (c4 >= p.CoP4 || ci >= p.Cin) { return; }
${L.join("\n")}
}`;
};

/**
 * Which taps a staged weight holds: the kernel as is, one output phase of a strided conv's dx
 * (flipped and transposed, {@link dxPhase}), or one output phase of a conv on a nearest-2x-upsampled
 * input (taps reading the same source pixel summed, {@link upPhase}).
 */
type WeightTaps =
  | { mode: "plain" }
  | {
    mode: "dx";
    KHs: number;
    KWs: number;
    k0h: number;
    k0w: number;
    st: number;
    /**
     * Both column phases of a row phase ({@link FwdCfg.colPh}): per row, phase 0's taps then phase
     * 1's (k0w is then unused, KWs = the sum of the n); only on the unrolled quad pass.
     */
    cols?: readonly { k0: number; n: number }[];
  }
  | {
    mode: "up";
    KHs: number;
    KWs: number;
    rh: number;
    rw: number;
    pt: number;
    pl: number;
    offH: number;
    offW: number;
  };

/** The whole kernel rotated by 180 degrees and transposed: the weights of a stride-1 conv's dx. */
function rotated(w: Tensor): WeightTaps {
  return { mode: "dx", KHs: w.shape[2], KWs: w.shape[3], k0h: 0, k0w: 0, st: 1 };
}

/** Texels per row of staged weights: `cols` output channels in whole blocks of `cot`. */
function weightTexels(cols: number, cot: number): number {
  return Math.ceil(cols / cot) * (cot / 4);
}

/**
 * A weight texture for `rows` rows (KHW taps per input channel, never split across bands) and
 * `cols` output channels in blocks of `cot`: texel columns CoP4 per band, rows wrapped into bands
 * of wH side by side.
 */
function weightTexture(
  gpu: Gpu,
  w: Tensor,
  rows: number,
  cols: number,
  cot: number,
  KHW: number,
): StagedW {
  const CoP4 = weightTexels(cols, cot);
  const max = gpu.limits.maxTextureDimension2D;
  const wH = Math.min(Math.floor(max / KHW) * KHW, rows);
  const bands = Math.ceil(rows / wH);
  if (bands * CoP4 > max) {
    throw new RangeError(`conv2d: weights [${w.shape}] are too large for one ${max}^2 texture`);
  }
  const tex = takeTexture(gpu, bands * CoP4, wH);
  return { tex, view: textureView(tex), lay: { Hp: wH, Wp4: CoP4, P: bands, bands: 1 }, CoP4, wH };
}

/** Where {@link stageWeightRows} applies: whole texels per row, a row no wider than a texture. */
function rowsFit(gpu: Gpu, w: Tensor): boolean {
  const [Cout, Cin, KH, KW] = w.shape;
  const max = gpu.limits.maxTextureDimension2D;
  return conv2dTuning.wRows && (Cin * KH * KW) % 4 === 0 &&
    (Math.ceil(Cin / 16) * 16 * KH * KW) / 4 <= max && Cout <= max;
}

/**
 * W in the row layout, for a stride-1 conv's dx: texture row co = w[co] as it lies in memory,
 * Cin*KH*KW floats as texels, so staging is one buffer-to-texture copy (a memcpy in lavapipe)
 * where a row is a whole number of 256-byte blocks (Cin a multiple of 64 for 3x3), else a pass of
 * one vec4 load and store per texel. The dx kernel reads, per input channel of its conv (an output
 * channel co of the forward), the taps of its block of COT output channels (the forward's input
 * channels) as COT*KH*KW/4 consecutive texels of row co, the rotation and transposition being
 * constant component choices: as many loads as the rotated column layout, from one row instead of
 * KH*KW, and no transposing pass (its image stores go lane by lane). The texture is wide enough for
 * 16-channel blocks; a block past Cin reads garbage there for outputs never stored. Measured
 * (best of 4, one process, alternating): dx of 8 x 64 at 32x32 14.1 -> 13.6 ms, at 16x16 3.9 ->
 * 3.6, 8 x 128 at 16x16 13.9 -> 12.7, at 8x8 4.1 -> 3.4. The forward reading this layout (4 input
 * channels per iteration, to keep component choices constant) ran 1.2x slower than the column
 * layout: so does the column kernel with 4 channels per iteration; the forward keeps its pass.
 */
function stageWeightRows(gpu: Gpu, w: Tensor): StagedW {
  const [Cout, Cin, KH, KW] = w.shape;
  const R4 = (Cin * KH * KW) / 4;
  const tex = takeTexture(gpu, (Math.ceil(Cin / 16) * 16 * KH * KW) / 4, Cout);
  const view = textureView(tex);
  if ((R4 * 16) % 256 === 0) {
    const rows = { offset: 0, bytesPerRow: R4 * 16, rowsPerImage: Cout };
    gpu.copyToTexture(w, rows, { texture: tex }, [R4, Cout, 1]);
  } else {
    gpu.dispatch(
      gpu.pipeline("conv2d_wt_rows", WT_ROWS_WGSL),
      [w, view],
      new Params().u32(R4).u32(Cout),
      [Math.ceil(R4 / 64), Cout, 1],
    );
  }
  return { tex, view, lay: { Hp: Cout, Wp4: R4, P: 1, bands: 1 }, CoP4: 0, wH: 0, rows: true };
}

/** {@link stageWeightRows}' pass where a row is not a whole number of 256-byte blocks. */
const WT_ROWS_WGSL = `
@group(0) @binding(0) var<storage, read> w: array<vec4f>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
struct P { R4: u32, Cout: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x >= p.R4) { return; }
  textureStore(tex, g.xy, w[g.y * p.R4 + g.x]);
}`;

function stageWeights(gpu: Gpu, w: Tensor, cot: number, k: WeightTaps): StagedW {
  const [Cout, Cin, KH, KW] = w.shape;
  const flip = k.mode === "dx";
  const KHW = k.mode === "plain" ? KH * KW : k.KHs * k.KWs;
  const rows = (flip ? Cout : Cin) * KHW;
  const st = weightTexture(gpu, w, rows, flip ? Cin : Cout, cot, KHW);
  const { view, CoP4, wH } = st;
  const bands = st.lay.P;
  const N = rows * CoP4;
  if (k.mode === "plain" && bands === 1 && rows % 4 === 0) {
    gpu.dispatch(
      gpu.pipeline("conv2d_wt_quad", WT_QUAD_WGSL),
      [w, view],
      new Params().u32(CoP4).u32(rows / 4).u32(Cout),
      [Math.ceil(CoP4 / 16), Math.ceil(rows / 16), 1],
    );
    return st;
  }
  if (k.mode === "dx" && bands === 1 && Cin % 4 === 0 && KH * KW <= 64) {
    // Staged tap t = (jh, jw) of the phase reads kernel tap (kh, kw), known here: the rotated
    // kernel (stride 1), or one phase of a strided conv's (the generic pass below took 0.2 ms per
    // phase for tiny's 64 channels, 4 per downsample's dx).
    const src: number[] = [];
    const cols = k.cols ?? [{ k0: k.k0w, n: k.KWs }];
    for (let jh = 0; jh < k.KHs; jh++) {
      for (const { k0, n } of cols) {
        for (let jw = 0; jw < n; jw++) {
          src.push((k.k0h + k.st * (k.KHs - 1 - jh)) * KW + k0 + k.st * (n - 1 - jw));
        }
      }
    }
    gpu.dispatch(
      gpu.pipeline(
        `conv2d_wt_rot_quad|${KH * KW}|${src.join(",")}`,
        () => WT_ROT_QUAD_WGSL(KH * KW, src),
      ),
      [w, view],
      new Params().u32(CoP4).u32(Cout).u32(Cin),
      [Math.ceil(CoP4 / 16), Math.ceil(Cout / 4), 1],
    );
    return st;
  }
  if (k.mode === "dx" && k.cols) throw new Error("conv2d: column-phase weights need the quad pass");
  if (k.mode === "up" && KHW <= 16 && KH * KW <= 25) {
    // Which kernel taps each staged tap sums (see upPhase).
    const taps: number[][] = Array.from({ length: KHW }, () => []);
    for (let kh = 0; kh < KH; kh++) {
      const jh = Math.floor((k.rh + kh - k.pt) / 2) - k.offH;
      for (let kw = 0; kw < KW; kw++) {
        const jw = Math.floor((k.rw + kw - k.pl) / 2) - k.offW;
        if (jh >= 0 && jh < k.KHs && jw >= 0 && jw < k.KWs) {
          taps[jh * k.KWs + jw].push(kh * KW + kw);
        }
      }
    }
    gpu.dispatch(
      gpu.pipeline(
        `conv2d_wt_up|${KH * KW}|${JSON.stringify(taps)}`,
        () => WT_UP_WGSL(KH * KW, taps),
      ),
      [w, view],
      new Params().u32(CoP4).u32(Cout).u32(Cin).u32(wH),
      [Math.ceil(CoP4 / 16), Math.ceil(Cin / 4), 1],
    );
    return st;
  }
  gpu.dispatch(
    gpu.pipeline("conv2d_wt", WT_WGSL),
    [w, view],
    new Params().u32(N).u32(Cout).u32(Cin).u32(KH).u32(KW).u32(CoP4)
      .u32(["plain", "dx", "up"].indexOf(k.mode)).u32(wH)
      .u32(k.mode === "plain" ? KH : k.KHs).u32(k.mode === "plain" ? KW : k.KWs).u32(KHW)
      .u32(k.mode === "dx" ? k.k0h : 0).u32(k.mode === "dx" ? k.k0w : 0).u32(
        k.mode === "dx" ? k.st : 1,
      )
      .i32(k.mode === "up" ? k.rh : 0).i32(k.mode === "up" ? k.rw : 0)
      .i32(k.mode === "up" ? k.pt : 0).i32(k.mode === "up" ? k.pl : 0)
      .i32(k.mode === "up" ? k.offH : 0).i32(k.mode === "up" ? k.offW : 0),
    grid(Math.ceil(N / 256)),
  );
  return st;
}

// ---------------------------------------------------------------------------------------------------
// Pass 3: the register-blocked implicit GEMM.

interface FwdCfg extends ConvTile {
  KH: number;
  KW: number;
  S: number;
  bias: boolean;
  res: boolean;
  /** Output rows are a multiple of 4 floats: vec4 stores. */
  vecOut: boolean;
  /**
   * The output is one phase of a larger tensor: pixel (oh, ow) goes to (oh*oS + oR, ow*oS + oC) of
   * (oHf, oWf) planes (scalar stores).
   */
  strided: boolean;
  /** Read the textures as read-only storage textures ({@link texDecl}). */
  storageRead: boolean;
  /**
   * Each run of `p.wDiv` images has its own weights (rows (image / wDiv) * Cin + ci): the Winograd
   * GEMM's 36 products ({@link w43Conv}).
   */
  wsets: boolean;
  /** With `wsets`: the lanes take (image, tile) pairs, not the tiles of image wg.z. */
  flat: boolean;
  /** Gather the output's statistics per (plane, tile) ({@link Conv2dGroupStats}; not `strided`). */
  stats: boolean;
  /** Input channels per loop iteration (divides Cin). */
  cpi: number;
  /** The weights are the dx's row layout ({@link StagedW.rows}), else the column layouts. */
  wRows: boolean;
  /**
   * x is read unpadded from a {@link flatPlanes} texture (row = plane, texel y*W4 + q, zeros from
   * column H*W4): its plane size and padding, else null (the padded planes of {@link stage}).
   */
  xFlat: PlaneGeom | null;
  /**
   * The output is one row phase of a stride-2 conv's dx with both of its column phases
   * ({@link dxStrided}): per input row the staged taps are column phase 0's `n` then phase 1's, and
   * phase c's tap j reads window column j + shift; each invocation keeps px pixels of each phase
   * and stores them interleaved, 2*px contiguous pixels of output row oh*oS + oR (vec4 stores). KW
   * is then the window's extent, max(shift + n). Null: one plain output.
   */
  colPh: readonly ColPhase[] | null;
}

/** One column phase of a {@link FwdCfg.colPh} kernel. */
interface ColPhase {
  shift: number;
  n: number;
}

/**
 * How the main kernels bind their input textures. On llvmpipe as read-only storage textures, like
 * the matmul's: the image-load path skips the sampler's level-of-detail handling (measured 1.1-1.5x
 * faster forward and weight-gradient kernels on 3x3 convs); elsewhere as sampled textures, which
 * every WebGPU implementation reads.
 */
function texDecl(storageRead: boolean): { type: string; lvl: string } {
  return storageRead
    ? { type: "texture_storage_2d<rgba32float, read>", lvl: "" }
    : { type: "texture_2d<f32>", lvl: ", 0" };
}

/** Texels one invocation reads per input row: positions S*px + kw for px < PX, kw < KW. */
function texelsPerRow(px: number, S: number, KW: number): number {
  return Math.ceil((S * (px - 1) + KW) / 4);
}

/**
 * The unpadded read's window ({@link PlaneGeom}, {@link flatPlanes}' layout), computed once per
 * tile or segment from `fy0` and `fq0` (its first row and texel, possibly outside the plane): R
 * rows of NVx texels, `xo{r}_{v}` = the texel's column in the plane's texture row, or the zero
 * column H*W4 outside the plane.
 */
function flatWindow(F: PlaneGeom, R: number, NVx: number, ind: string): string[] {
  const L: string[] = [];
  for (let r = 0; r < R; r++) {
    L.push(`${ind}let fr${r} = fy0 + ${r} >= 0 && fy0 + ${r} < ${F.H};`);
    for (let v = 0; v < NVx; v++) {
      const inside = `fr${r} && fq0 + ${v} >= 0 && fq0 + ${v} < ${F.W4}`;
      L.push(
        `${ind}let xo${r}_${v} = select(${
          F.H * F.W4
        }u, u32(fy0 + ${r}) * ${F.W4}u + u32(fq0 + ${v}), ${inside});`,
      );
    }
  }
  return L;
}

/** The forward kernels' bindings, parameters and tile/channel-block indexing (see fwdWgsl). */
function fwdHeader(c: FwdCfg, L: string[]) {
  const { type: TEX } = texDecl(c.storageRead);
  let b = 0;
  L.push(`@group(0) @binding(${b++}) var xt: ${TEX};`);
  L.push(`@group(0) @binding(${b++}) var wt: ${TEX};`);
  if (c.bias) L.push(`@group(0) @binding(${b++}) var<storage, read> bias: array<f32>;`);
  const ot = c.vecOut ? "vec4f" : "f32";
  if (c.res) L.push(`@group(0) @binding(${b++}) var<storage, read> res: array<${ot}>;`);
  L.push(`@group(0) @binding(${b++}) var<storage, read_write> out: array<${ot}>;`);
  if (c.stats) L.push(`@group(0) @binding(${b++}) var<storage, read_write> part: array<vec4f>;`);
  L.push(`struct P {
  Cin: u32, Cout: u32, Ho: u32, Wo: u32, nTx: u32, nTiles: u32, coBlocks: u32, P: u32, Wp4: u32,
  Hp: u32, wH: u32, CoP4: u32, b0: u32, T: u32, G: u32, oS: u32, oHf: u32, oWf: u32, oR: u32,
  oC: u32, wDiv: u32, nImg: u32,
}`);
  L.push(`@group(0) @binding(${b++}) var<uniform> p: P;`);
  L.push(UDIVF);
  L.push(`@compute @workgroup_size(${WG})`);
  L.push(`fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u) {`);
  // No early return: it would put the loop in divergent control flow. Dead invocations compute a
  // clamped tile and store nothing.
  // T invocations per channel block, G = 64 / T blocks per workgroup (T = 64 unless the image is small).
  // Channel blocks vary fastest over workgroups: consecutive workgroups read the same input region
  // (still in cache) with different weights (which fit in cache).
  L.push(`  let cb0 = wg.x * p.G + li / p.T;`);
  L.push(`  let cb = min(cb0, p.coBlocks - 1u);`);
  if (c.flat) {
    // (image, tile) pairs numbered across the lanes: a few tiles per image (the Winograd GEMM's
    // chunks) leave no lanes idle up to the next power of two.
    L.push(`  let f0 = wg.y * p.T + li % p.T;`);
    L.push(`  let live = f0 < p.nTiles * p.nImg && cb0 < p.coBlocks;`);
    L.push(`  let f = min(f0, p.nTiles * p.nImg - 1u);`);
    L.push(`  let bl = f / p.nTiles;`);
    L.push(`  let tile = f - bl * p.nTiles;`);
  } else {
    L.push(`  let tile0 = wg.y * p.T + li % p.T;`);
    L.push(`  let live = tile0 < p.nTiles && cb0 < p.coBlocks;`);
    L.push(`  let tile = min(tile0, p.nTiles - 1u);`);
    L.push(`  let bl = wg.z;`);
  }
  L.push(`  let ty = tile / p.nTx;`);
  L.push(`  let tx = tile - ty * p.nTx;`);
}

/**
 * The forward kernels' epilogue: accumulators (or lets) a{o}_{y}_{q} (vec4 of pixels 4q..4q+3 of
 * row y, output channel o of the tile) plus bias and residual, bounds-checked stores.
 */
function fwdEpilogue(c: FwdCfg, L: string[]) {
  const { cot, px, py } = c;
  const QN = px / 4;
  L.push(`  if (!live) { return; }`);
  L.push(`  let bi = p.b0 + bl;`);
  L.push(`  let ox0 = tx * ${px}u;`);
  if (c.stats) {
    fwdEpilogueStats(c, L);
    return;
  }
  if (c.colPh) {
    fwdEpiloguePair(c, L);
    return;
  }
  for (let o = 0; o < cot; o++) {
    L.push(`  {`);
    L.push(`    let co = cb * ${cot}u + ${o}u;`);
    L.push(`    if (co < p.Cout) {`);
    if (c.bias) L.push(`      let bv = bias[co];`);
    for (let y = 0; y < py; y++) {
      L.push(`      {`);
      L.push(`        let oh = ty * ${py}u + ${y}u;`);
      L.push(
        c.strided
          ? `        let ob = ((bi * p.Cout + co) * p.oHf + oh * p.oS + p.oR) * p.oWf + p.oC + ox0 * p.oS;`
          : `        let ob = ((bi * p.Cout + co) * p.Ho + oh) * p.Wo + ox0;`,
      );
      L.push(`        if (oh < p.Ho) {`);
      for (let q = 0; q < QN; q++) {
        let v = `a${o}_${y}_${q}`;
        if (c.bias) v = `(${v} + vec4f(bv))`;
        if (c.vecOut) {
          const idx = `ob / 4u + ${q}u`;
          if (c.res) v = `${v} + res[${idx}]`;
          L.push(`          if (ox0 + ${q * 4}u < p.Wo) { out[${idx}] = ${v}; }`);
        } else {
          L.push(`          {`);
          L.push(`            let s = ${v};`);
          for (let i = 0; i < 4; i++) {
            const idx = c.strided ? `ob + ${q * 4 + i}u * p.oS` : `ob + ${q * 4 + i}u`;
            const val = c.res ? `s.${COMP[i]} + res[${idx}]` : `s.${COMP[i]}`;
            L.push(`            if (ox0 + ${q * 4 + i}u < p.Wo) { out[${idx}] = ${val}; }`);
          }
          L.push(`          }`);
        }
      }
      L.push(`        }`);
      L.push(`      }`);
    }
    L.push(`    }`);
    L.push(`  }`);
  }
}

/**
 * {@link fwdEpilogue} of a {@link FwdCfg.colPh} kernel: pixel m of column phase c is output column
 * 2m + c of row oh*oS + oR, so the two phases' quads a..._0, a..._1 interleave into two vec4 stores
 * (p.Wo = the phases' common width, even; p.oWf = 2 * p.Wo).
 */
function fwdEpiloguePair(c: FwdCfg, L: string[]) {
  const { cot, px, py } = c;
  for (let o = 0; o < cot; o++) {
    L.push(`  {`);
    L.push(`    let co = cb * ${cot}u + ${o}u;`);
    L.push(`    if (co < p.Cout) {`);
    for (let y = 0; y < py; y++) {
      L.push(`      let oh${y} = ty * ${py}u + ${y}u;`);
      L.push(
        `      let ob${y} = (((bi * p.Cout + co) * p.oHf + oh${y} * p.oS + p.oR) * p.oWf) / 4u + ox0 / 2u;`,
      );
      L.push(`      if (oh${y} < p.Ho) {`);
      for (let q = 0; q < px / 4; q++) {
        const [e, f] = [`a${o}_${y}_${q}_0`, `a${o}_${y}_${q}_1`];
        L.push(
          `        if (ox0 + ${4 * q}u < p.Wo) { out[ob${y} + ${
            2 * q
          }u] = vec4f(${e}.x, ${f}.x, ${e}.y, ${f}.y); }`,
        );
        L.push(
          `        if (ox0 + ${4 * q + 2}u < p.Wo) { out[ob${y} + ${
            2 * q + 1
          }u] = vec4f(${e}.z, ${f}.z, ${e}.w, ${f}.w); }`,
        );
      }
      L.push(`      }`);
    }
    L.push(`    }`);
    L.push(`  }`);
  }
}

/**
 * {@link fwdEpilogue} gathering statistics: per output channel of the tile, its values (bias and
 * residual added) and validity masks, the stores, then (count, mean, M2) of the valid values about
 * their own mean, at part[(image * Cout + channel) * nTiles + tile].
 */
function fwdEpilogueStats(c: FwdCfg, L: string[]) {
  const { cot, px, py } = c;
  const QN = px / 4;
  const one = "vec4f(1.0)";
  for (let o = 0; o < cot; o++) {
    L.push(`  {`);
    L.push(`    let co = cb * ${cot}u + ${o}u;`);
    L.push(`    if (co < p.Cout) {`);
    if (c.bias) L.push(`      let bv = bias[co];`);
    const zs: string[] = [];
    for (let y = 0; y < py; y++) {
      L.push(`      let oh${y} = ty * ${py}u + ${y}u;`);
      L.push(`      let ob${y} = ((bi * p.Cout + co) * p.Ho + oh${y}) * p.Wo + ox0;`);
      for (let q = 0; q < QN; q++) {
        const k = `${y}_${q}`;
        zs.push(k);
        L.push(
          `      let c${k} = select(vec4f(0.0), vec4f(1.0), vec4<bool>(${
            [0, 1, 2, 3].map((j) => `ox0 + ${q * 4 + j}u < p.Wo`).join(", ")
          }) & vec4<bool>(oh${y} < p.Ho));`,
        );
        let v = `a${o}_${y}_${q}`;
        if (c.bias) v = `(${v} + vec4f(bv))`;
        if (c.vecOut) {
          const idx = `ob${y} / 4u + ${q}u`;
          if (c.res) v = `${v} + res[min(${idx}, arrayLength(&res) - 1u)]`;
          L.push(`      let z${k} = ${v};`);
          L.push(`      if (c${k}.x > 0.0) { out[${idx}] = z${k}; }`);
        } else {
          if (c.res) {
            const r = [0, 1, 2, 3].map((j) =>
              `res[min(ob${y} + ${q * 4 + j}u, arrayLength(&res) - 1u)]`
            );
            v = `${v} + vec4f(${r.join(", ")})`;
          }
          L.push(`      let z${k} = ${v};`);
          for (let j = 0; j < 4; j++) {
            L.push(
              `      if (c${k}.${COMP[j]} > 0.0) { out[ob${y} + ${q * 4 + j}u] = z${k}.${
                COMP[j]
              }; }`,
            );
          }
        }
      }
    }
    L.push(`      let cnt = dot(${zs.map((k) => `c${k}`).join(" + ")}, ${one});`);
    L.push(
      `      let mu = dot(${zs.map((k) => `z${k} * c${k}`).join(" + ")}, ${one}) / max(cnt, 1.0);`,
    );
    L.push(`      var sq = vec4f(0.0);`);
    for (const k of zs) {
      L.push(`      { let e = (z${k} - vec4f(mu)) * c${k}; sq = fma(e, e, sq); }`);
    }
    L.push(
      `      part[(bi * p.Cout + co) * p.nTiles + tile] = vec4f(cnt, mu, dot(sq, ${one}), 0.0);`,
    );
    L.push(`    }`);
    L.push(`  }`);
  }
}

function fwdWgsl(c: FwdCfg): string {
  const { cot, px, py, KH, KW, S } = c;
  const QN = px / 4; // output quads per row
  const NV = texelsPerRow(px, S, KW);
  const WV = cot / 4;
  const R = (py - 1) * S + KH; // input rows per invocation
  const { lvl: LVL } = texDecl(c.storageRead);
  const L: string[] = [];
  fwdHeader(c, L);
  // Column phases: one (the plain conv: every tap, no shift) or a dx row phase's two (colPh).
  const phs = c.colPh ?? [{ shift: 0, n: KW }];
  const sfx = (ph: number) => (c.colPh ? `_${ph}` : "");
  for (let o = 0; o < cot; o++) {
    for (let y = 0; y < py; y++) {
      for (let q = 0; q < QN; q++) {
        phs.forEach((_, ph) => L.push(`  var a${o}_${y}_${q}${sfx(ph)} = vec4f(0.0);`));
      }
    }
  }
  const CPI = c.cpi;
  const F = c.xFlat;
  // Flat x: window texel v of row r is source texel (fq0 + v) of row (fy0 + r), or the zero column.
  // Output pixel j of the tile reads window position S*j + kw - offL + 4*QOFF.
  const QOFF = F ? Math.ceil(F.offL / 4) + 0 : 0; // + 0: no -0 in the WGSL
  const NVx = F ? ((S * (px - 1) + KW - 1 - F.offL + 4 * QOFF) >> 2) + 1 : NV;
  if (F) {
    L.push(`  let fy0 = i32(ty * ${py * S}u) - (${F.offT});`);
    L.push(`  let fq0 = i32(tx * ${(px * S) / 4}u) - (${QOFF});`);
    L.push(...flatWindow(F, R, NVx, "  "));
  }
  L.push(`  let wc = cb * ${WV}u;`);
  // The layout's divisions in the channel loop by reciprocals ({@link UDIVF}).
  L.push(`  let rP = 1.0 / f32(p.P);`);
  if (!c.wRows) L.push(`  let rwH = 1.0 / f32(p.wH);`);
  L.push(`  for (var c0 = 0u; c0 < p.Cin; c0 += ${CPI}u) {`);
  // All texels of CPI input channels first (KH*KW*COT/4 weights, R*NV inputs each), then one
  // chained expression per accumulator: lavapipe turns every assignment to a loop-carried variable
  // into a masked load/blend/store, so each accumulator is assigned once per iteration (KH*KW*CPI
  // fused multiply-adds per assignment; 25% faster than assigning after each FMA for 3x3). For 3x3
  // two input channels per iteration measured no faster; a 1x1 conv takes 4 when they divide Cin
  // (the Winograd GEMM: 5-6% faster, one process, alternating).
  // Staged taps per input channel (per row: every phase's).
  const KWs = phs.reduce((a, ph) => a + ph.n, 0);
  const KHW = KH * KWs;
  if (c.wRows && c.colPh) throw new Error("conv2d: row-layout weights with column phases");
  if (c.wRows) {
    // Row c0 + k (an output channel of the forward) holds the taps of this block's cot channels.
    for (let k = 0; k < CPI; k++) {
      for (let j = 0; j < (cot * KHW) / 4; j++) {
        L.push(
          `    let wd${k}_${j} = textureLoad(wt, vec2u(cb * ${
            (cot * KHW) / 4
          }u + ${j}u, c0 + ${k}u)${LVL});`,
        );
      }
    }
  }
  for (let k = 0; k < CPI; k++) {
    L.push(`    let ci${k} = c0 + ${k}u;`);
    L.push(`    let plane${k} = bl * p.Cin + ci${k};`);
    if (F) L.push(`    let fp${k} = (p.b0 + bl) * p.Cin + ci${k};`);
    else {
      L.push(`    let pq${k} = udivf(plane${k}, p.P, rP);`);
      L.push(`    let xu${k} = (plane${k} - pq${k} * p.P) * p.Wp4 + tx * ${(px * S) / 4}u;`);
      L.push(`    let xv${k} = pq${k} * p.Hp + ty * ${py * S}u;`);
    }
    if (!c.wRows) {
      L.push(
        c.wsets
          ? `    let r0${k} = ((bl / p.wDiv) * p.Cin + ci${k}) * ${KHW}u;`
          : `    let r0${k} = ci${k} * ${KHW}u;`,
      );
      L.push(`    let wq${k} = udivf(r0${k}, p.wH, rwH);`);
      L.push(`    let wu${k} = wq${k} * p.CoP4 + wc;`);
      L.push(`    let wv${k} = r0${k} - wq${k} * p.wH;`);
      for (let t = 0; t < KHW; t++) {
        for (let j = 0; j < WV; j++) {
          L.push(
            `    let w${k}_${t}_${j} = textureLoad(wt, vec2u(wu${k} + ${j}u, wv${k} + ${t}u)${LVL});`,
          );
        }
      }
    }
    for (let r = 0; r < R; r++) {
      for (let v = 0; v < NVx; v++) {
        L.push(
          `    let v${k}_${r}_${v} = textureLoad(xt, ${
            F ? `vec2u(xo${r}_${v}, fp${k})` : `vec2u(xu${k} + ${v}u, xv${k} + ${r}u)`
          }${LVL});`,
        );
      }
    }
  }
  for (let o = 0; o < cot; o++) {
    for (let y = 0; y < py; y++) {
      for (let q = 0; q < QN; q++) {
        let t0 = 0; // the phase's first staged tap in a row
        phs.forEach(({ shift, n }, ph) => {
          let e = `a${o}_${y}_${q}${sfx(ph)}`;
          for (let k = 0; k < CPI; k++) {
            for (let kh = 0; kh < KH; kh++) {
              const r = y * S + kh;
              for (let j = 0; j < n; j++) {
                // Output pixel q*4+i of the row reads padded column S*(q*4+i) + kw.
                const kw = shift + j;
                const pos = [0, 1, 2, 3].map((i) =>
                  F ? S * (q * 4 + i) + kw - F.offL + 4 * QOFF : S * (q * 4 + i) + kw
                );
                const xs = S === 1 && pos[0] % 4 === 0
                  ? `v${k}_${r}_${pos[0] >> 2}`
                  : `vec4f(${pos.map((p) => `v${k}_${r}_${p >> 2}.${COMP[p & 3]}`).join(", ")})`;
                const t = kh * KWs + t0 + j;
                const f = o * KHW + KHW - 1 - t; // the rotated tap in the dx's row layout
                const wv = c.wRows
                  ? `wd${k}_${f >> 2}.${COMP[f & 3]}`
                  : `w${k}_${t}_${o >> 2}.${COMP[o & 3]}`;
                e = `fma(vec4f(${wv}), ${xs}, ${e})`;
              }
            }
          }
          L.push(`    a${o}_${y}_${q}${sfx(ph)} = ${e};`);
          t0 += n;
        });
      }
    }
  }
  L.push(`  }`);
  fwdEpilogue(c, L);
  L.push(`}`);
  return L.join("\n");
}

/**
 * The forward tile this adapter uses for a conv of `Cout` outputs of Ho x Wo with a KH x KW kernel
 * and stride S over a batch of B images (the table measured by tools/bench/tokenizer_ops.ts).
 */
export function conv2dTile(
  gpu: Gpu,
  Cout: number,
  Ho: number,
  Wo: number,
  KH: number,
  KW: number,
  S: number,
  B = 1,
): ConvTile {
  // Measured on lavapipe (GFLOP per CPU-second, 3x3 s1 at 16..256 px: 4x8x8 ~11-14 and best or
  // within noise of the best at every size; s2: 8x4x8; 1x1: 16x2x8). Bigger tiles compile for seconds.
  const cpu = gpu.kind === "cpu";
  const one = KH * KW === 1;
  // Large outputs of a strided conv, and of the 2x2/2x1/1x2 phase convs (a strided conv's dx, an
  // upsampled conv), take 16 output channels per invocation: few taps per input channel leave the
  // 4- and 8-channel tiles bound by their input loads. Measured (wall, best of 3, one process):
  // stride-2 128 channels from 256x256 139 -> 99 ms (16x4x8), its dx 128 -> 107 ms (16x2x8), the
  // upsampled 128-channel conv to 256x256 185 -> 141 ms; no faster on 16x16 outputs (tiny's).
  const big = cpu && Ho * Wo >= 32 * 32 && Cout > 8;
  const wide = one || (big && (S > 1 || KH * KW <= 4));
  const cot = Cout <= 4 ? 4 : wide ? 16 : S > 1 || !cpu ? 8 : 4;
  // A large 1x1 output takes 16-pixel rows, the Winograd GEMM's tile (wall, best of 3, one
  // process, alternating): 256 -> 128 at 256x256 139 -> 122 ms, 128 -> 256 at 128x128 34 -> 30,
  // 512 -> 256 at 64x64 30 -> 28, 768 -> 512 at 32x32 22 -> 20; the same on tiny's 16x16.
  const px = Wo <= 4 ? 4 : one && big && Wo >= 16 ? 16 : 8;
  const rows = 2 ** Math.floor(Math.log2(Math.max(1, Ho))); // the largest power of two <= Ho
  let py = Math.min(rows, !cpu || one || (wide && S === 1) ? 2 : S > 1 ? 4 : 8);
  // Batches of small images with up to 128 channels (the tiny tokenizer's training batch) run a 3x3
  // faster with 4 rows (half the accumulators). Measured (best of 4 x 2, one process, alternating;
  // forward / dx): 8 x 64 at 32x32 8.3 / 8.3 -> 7.3 / 7.2 ms, at 16x16 2.3 / 2.2 -> 1.8 / 2.0, 8 x 128
  // at 16x16 7.5 / 7.8 -> 7.3 / 6.8 (another run: 8.2 / 8.3 -> 8.1 / 8.0); one image of 256 at
  // 32x32 or 512 at 16x16 runs slower so (16.0 -> 17.4, 18.4 -> 19.8 ms). The tiny tokenizer step
  // (one process, ABBA, 8 rounds of 3 steps, three runs): mean 676 -> 682, 633 -> 600, 578 -> 550 ms.
  if (cpu && S === 1 && KH * KW === 9 && B >= 4 && Cout <= 128 && Ho * Wo <= 32 * 32) {
    py = Math.min(py, 4);
  }
  // A small image has fewer tiles than a workgroup has lanes: the lanes then take several channel
  // blocks, and where there are not enough blocks some lanes idle. Shorter tiles until every lane
  // has work (8x8 images, 128 channels: 4x4x8 ran 1.6-1.9x faster than 4x8x8).
  const coBlocks = Math.ceil(Cout / cot);
  const lanes = (py: number) => nextPow2(Math.ceil(Ho / py) * Math.ceil(Wo / px)) * coBlocks;
  while (py > 1 && lanes(py) < WG) py /= 2;
  return { cot, px, py };
}

function validTile(t: ConvTile) {
  if (![4, 8, 16].includes(t.cot) || ![4, 8, 16].includes(t.px) || !(t.py >= 1 && t.py <= 8)) {
    throw new RangeError(
      `conv2d: tile {cot ${t.cot}, py ${t.py}, px ${t.px}} is not one of cot 4|8|16, py 1..8, px 4|8|16`,
    );
  }
}

/** Padded plane (Hp, Wp4) that covers every texel the forward kernel reads for this tile. */
function fwdPlane(Ho: number, Wo: number, KH: number, KW: number, S: number, t: ConvTile) {
  const nTx = Math.ceil(Wo / t.px), nTy = Math.ceil(Ho / t.py);
  const Hp = (nTy * t.py - 1) * S + KH;
  const Wp4 = ((nTx - 1) * t.px * S) / 4 + texelsPerRow(t.px, S, KW);
  return { nTx, nTy, Hp, Wp4 };
}

function nextPow2(n: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, n)));
}

/**
 * Where a phase output goes in the full tensor: pixel (oh, ow) -> (oh*S + r, ow*S + c) of (H, W)
 * planes (see {@link FwdCfg.strided}).
 */
interface OutPhase {
  S: number;
  H: number;
  W: number;
  r: number;
  c: number;
}

/** Records the main kernel over a staged input chunk (batch b0..b0+bc) and staged weights. */
function launchFwd(
  gpu: Gpu,
  xs: Staged,
  ws: StagedW,
  bias: Tensor | undefined,
  res: Tensor | undefined,
  out: Tensor,
  g: { Cin: number; Cout: number; Ho: number; Wo: number; b0: number; bc: number },
  k: { KH: number; KW: number; S: number },
  tile: ConvTile,
  phase?: OutPhase,
  wDiv?: number,
  stats?: Tensor,
  xFlat?: PlaneGeom,
  colPh?: readonly ColPhase[],
) {
  const { nTx, nTy } = fwdPlane(g.Ho, g.Wo, k.KH, k.KW, k.S, tile);
  const nTiles = nTx * nTy;
  const coBlocks = Math.ceil(g.Cout / tile.cot);
  // With per-image weights and fewer tiles per image than a workgroup has lanes, but not a power
  // of two of them, the lanes take (image, tile) pairs (see fwdHeader): F(6x6)'s 9-tile chunks of
  // a 128x128 image left 7 of 16 lanes idle (GEMM 163 -> 90 ms, the F(4x4) one's 102). Measured
  // (wall, alternating): the same where the tiles are a power of two, and 2x slower at 2 tiles
  // (512 channels on 32x32), where a workgroup's lanes then share no weights.
  const flat = wDiv !== undefined && nTiles < WG && (nTiles & (nTiles - 1)) !== 0;
  const lanes = flat ? nTiles * g.bc : nTiles;
  const T = Math.min(WG, nextPow2(lanes));
  const strided = phase !== undefined && !colPh;
  if (colPh && (phase?.S !== 2 || phase.W !== 2 * g.Wo || g.Wo % 2 || bias || res || stats)) {
    throw new Error("conv2d: column phases need a stride-2 output of even width, no epilogue");
  }
  const cfg: FwdCfg = {
    ...tile,
    ...k,
    bias: !!bias,
    res: !!res,
    vecOut: !!colPh || (g.Wo % 4 === 0 && !strided),
    strided,
    storageRead: gpu.kind === "cpu",
    wsets: wDiv !== undefined,
    flat,
    stats: !!stats,
    cpi: k.KH * k.KW === 1 && g.Cin % W1_CPI === 0 ? W1_CPI : 1,
    wRows: !!ws.rows,
    xFlat: xFlat ?? null,
    colPh: colPh ?? null,
  };
  if (xFlat && wDiv !== undefined) throw new Error("conv2d: a flat input with weight sets");
  if (ws.rows && wDiv !== undefined) throw new Error("conv2d: row-layout weights with weight sets");
  // udivf's range (plane numbers, weight rows).
  const rows = (wDiv === undefined ? 1 : Math.ceil(g.bc / wDiv)) * g.Cin * k.KH * k.KW;
  if (g.bc * g.Cin >= 2 ** 22 || rows >= 2 ** 22) {
    throw new RangeError(`conv2d: ${g.bc} x ${g.Cin} planes of ${k.KH}x${k.KW} taps are too many`);
  }
  const key = [
    "conv2d_fwd",
    cfg.storageRead,
    tile.cot,
    tile.py,
    tile.px,
    k.KH,
    k.KW,
    k.S,
    cfg.bias,
    cfg.res,
    cfg.vecOut,
    cfg.strided,
    cfg.wsets,
    cfg.cpi,
    cfg.stats,
    cfg.wRows ? "rows" : "cols",
    xFlat ? flatKey(xFlat) : "xpad",
    colPh ? `ph${colPh.map((c) => `${c.shift}+${c.n}`).join(",")}` : "ph-",
    cfg.flat,
  ]
    .join("|");
  const pipe = gpu.pipeline(key, () => fwdWgsl(cfg));
  const binds = [
    xs.view,
    ws.view,
    ...(bias ? [bias] : []),
    ...(res ? [res] : []),
    out,
    ...(stats ? [stats] : []),
  ];
  gpu.dispatch(
    pipe,
    binds,
    new Params().u32(g.Cin).u32(g.Cout).u32(g.Ho).u32(g.Wo).u32(nTx).u32(nTiles).u32(coBlocks)
      .u32(xs.lay.P).u32(xs.lay.Wp4).u32(xs.lay.Hp).u32(ws.wH).u32(ws.CoP4).u32(g.b0).u32(T)
      .u32(WG / T).u32(phase?.S ?? 1).u32(phase?.H ?? g.Ho).u32(phase?.W ?? g.Wo).u32(phase?.r ?? 0)
      .u32(phase?.c ?? 0).u32(wDiv ?? 1).u32(g.bc),
    flat
      ? [Math.ceil(coBlocks / (WG / T)), Math.ceil(lanes / T), 1]
      : [Math.ceil(coBlocks / (WG / T)), Math.ceil(nTiles / T), g.bc],
  );
}

/**
 * Convolution of `x` (with Cin channels; `inShape` = its (B, Cin, H, W)) into `out`
 * (B, Cout, Ho, Wo): stages batch chunks of x and the weights into textures, runs the main kernel.
 */
function convCore(
  gpu: Gpu,
  fn: string,
  x: Tensor,
  inShape: { B: number; C: number; H: number; W: number },
  ws: StagedW,
  bias: Tensor | undefined,
  res: Tensor | undefined,
  out: Tensor,
  g: { Cout: number; Ho: number; Wo: number; KH: number; KW: number; S: number },
  pad: {
    offT: number;
    offL: number;
    up: number;
    pro?: Conv2dPrologue;
    /** x unpadded (all of the batch's planes, {@link flatPlanes}). */
    flat?: Staged;
  },
  tile: ConvTile,
  phase?: OutPhase,
  keep?: Conv2dStash,
  stats?: Conv2dGroupStats,
  colPh?: readonly ColPhase[],
) {
  const { Hp, Wp4, nTx, nTy } = fwdPlane(g.Ho, g.Wo, g.KH, g.KW, g.S, tile);
  const { B, C } = inShape;
  if (stats) {
    stats.tiles = nTx * nTy;
    stats.part = gpu.empty([B * g.Cout * stats.tiles, 4]);
  }
  const bc = batchChunk(fn, gpu, B, C, Hp, Wp4);
  keep?.release(gpu);
  for (let b0 = 0; b0 < B; b0 += bc) {
    const n = Math.min(bc, B - b0);
    // x read unpadded from its flat planes (all of the batch's: the kernel adds b0), else staged.
    const xs = pad.flat ?? stage(
      gpu,
      x,
      b0 * C,
      n * C,
      inShape.H,
      inShape.W,
      planeLayout(gpu, n * C, Hp, Wp4)!,
      pad.offT,
      pad.offL,
      pad.up,
      pad.pro,
    );
    const xFlat = pad.flat
      ? { H: inShape.H, W4: inShape.W / 4, offT: pad.offT, offL: pad.offL }
      : undefined;
    launchFwd(
      gpu,
      xs,
      ws,
      bias,
      res,
      out,
      { Cin: C, Cout: g.Cout, Ho: g.Ho, Wo: g.Wo, b0, bc: n },
      g,
      tile,
      phase,
      undefined,
      stats?.part ?? undefined,
      xFlat,
      colPh,
    );
    if (pad.flat) continue; // the caller's texture
    if (keep && bc === B && xs.tex.width * xs.tex.height * 16 <= keep.maxBytes) {
      keep.staged = { ...xs, x, offT: pad.offT, offL: pad.offL, pro: pad.pro };
    } else texPool.put(gpu, xs.tex);
  }
}

// ---------------------------------------------------------------------------------------------------
// Winograd F(4x4, 3x3) as a batched GEMM (Lavin & Gray 2015, "non-fused"; F(6x6, 3x3) and F(8x8, 3x3)
// the same with 8x8 and 10x10 patches, {@link Wino}): every 6x6 input patch d
// of a 4x4 output tile becomes V = B^T d B (a pass over the staged input), the weights U = G g G^T,
// and the 36 products M_xi = V_xi U_xi (xi = one of the 6x6 positions) are 36 GEMMs over input
// channels, run by the forward kernel as a 1x1 conv of 36 "images" of tiles, each with its own
// weights; a last pass turns M into the outputs, Y = A^T M A, adding bias and residual. The GEMM
// does 36 multiply-adds per 16 outputs and input channel instead of 144 (4x fewer); the two passes
// read and write 2.25x the input and output.

const W43_BT = [
  [4, 0, -5, 0, 1, 0],
  [0, -4, -4, 1, 1, 0],
  [0, 4, -4, -1, 1, 0],
  [0, -2, -1, 2, 1, 0],
  [0, 2, -1, -2, 1, 0],
  [0, 4, 0, -5, 0, 1],
];
const W43_AT = [
  [1, 1, 1, 1, 1, 0],
  [0, 1, -1, 2, -2, 0],
  [0, 1, 1, 4, 4, 0],
  [0, 1, -1, 8, -8, 1],
];

/**
 * One Winograd F(m x m, 3x3) variant: m x m outputs per tile from an a x a input patch (a = m + 2),
 * a^2 products; V = B^T d B, U = G g G^T, Y = A^T M A.
 */
interface Wino {
  m: number;
  a: number;
  BT: readonly (readonly number[])[];
  G: readonly (readonly number[])[];
  AT: readonly (readonly number[])[];
}

/** F(4x4,3x3), interpolation points 0, +-1, +-2 and infinity. */
const WINO4: Wino = {
  m: 4,
  a: 6,
  BT: W43_BT,
  G: [
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
  ],
  AT: W43_AT,
};

/**
 * F(6x6,3x3), points 0, +-1, +-2, +-1/2 and infinity (Lavin & Gray's choice): 64 products per 36
 * outputs instead of 36 per 16 (0.79x the GEMM's work per output), at ~5x F(4x4)'s rounding error
 * (f32: max |error| 1.2e-5 on one 8x8 patch of rms 2.7).
 */
const WINO6: Wino = {
  m: 6,
  a: 8,
  BT: [
    [1, 0, -21 / 4, 0, 21 / 4, 0, -1, 0],
    [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
    [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0],
    [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
    [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0],
    [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
    [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0],
    [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1],
  ],
  G: [
    [1, 0, 0],
    [-2 / 9, -2 / 9, -2 / 9],
    [-2 / 9, 2 / 9, -2 / 9],
    [1 / 90, 1 / 45, 2 / 45],
    [1 / 90, -1 / 45, 2 / 45],
    [32 / 45, 16 / 45, 8 / 45],
    [32 / 45, -16 / 45, 8 / 45],
    [0, 0, 1],
  ],
  AT: [
    [1, 1, 1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 1 / 2, -1 / 2, 0],
    [0, 1, 1, 4, 4, 1 / 4, 1 / 4, 0],
    [0, 1, -1, 8, -8, 1 / 8, -1 / 8, 0],
    [0, 1, 1, 16, 16, 1 / 16, 1 / 16, 0],
    [0, 1, -1, 32, -32, 1 / 32, -1 / 32, 1],
  ],
};

/**
 * F(8x8,3x3): 100 products per 64 outputs (0.88x F(6x6)'s GEMM work and stores per output).
 * Points 0, +-5/4, +-4/5, +-5/2, +-2/5 and infinity, among the least f32 rounding error of the
 * 4-pair sets drawn from 21 small fractions (`python3 tools/winograd_points.py --search`: rms
 * 3.0e-5, max 4.2e-4 over 128-channel patches of output rms 1, against F(6x6)'s 4.8e-6 and 4.0e-5;
 * the customary +-1, +-2, +-1/2, +-4 gives 3.9e-4 and 1.2e-2). Matrices from that script.
 */
// deno-fmt-ignore
const WINO8: Wino = {
  m: 8,
  a: 10,
  BT: [
    [1, 0, -689 / 80, 0, 644721 / 40000, 0, -689 / 80, 0, 1, 0],
    [0, 4 / 5, 16 / 25, -3189 / 500, -3189 / 625, 141 / 16, 141 / 20, -5 / 4, -1, 0],
    [0, -4 / 5, 16 / 25, 3189 / 500, -3189 / 625, -141 / 16, 141 / 20, 5 / 4, -1, 0],
    [0, -5 / 4, -25 / 16, 141 / 16, 705 / 64, -3189 / 500, -3189 / 400, 4 / 5, 1, 0],
    [0, 5 / 4, -25 / 16, -141 / 16, 705 / 64, 3189 / 500, -3189 / 400, -4 / 5, 1, 0],
    [0, -2 / 5, -4 / 25, 3381 / 1000, 3381 / 2500, -189 / 32, -189 / 80, 5 / 2, 1, 0],
    [0, 2 / 5, -4 / 25, -3381 / 1000, 3381 / 2500, 189 / 32, -189 / 80, -5 / 2, 1, 0],
    [0, 5 / 2, 25 / 4, -189 / 32, -945 / 64, 3381 / 1000, 3381 / 400, -2 / 5, -1, 0],
    [0, -5 / 2, 25 / 4, 189 / 32, -945 / 64, -3381 / 1000, 3381 / 400, 2 / 5, -1, 0],
    [0, 1, 0, -689 / 80, 0, 644721 / 40000, 0, -689 / 80, 0, 1],
  ],
  G: [
    [1, 0, 0],
    [32768 / 621027, 40960 / 621027, 51200 / 621027],
    [32768 / 621027, -40960 / 621027, 51200 / 621027],
    [390625 / 1242054, 156250 / 621027, 125000 / 621027],
    [390625 / 1242054, -156250 / 621027, 125000 / 621027],
    [512 / 1024947, 1280 / 1024947, 3200 / 1024947],
    [512 / 1024947, -1280 / 1024947, 3200 / 1024947],
    [781250 / 1024947, 312500 / 1024947, 125000 / 1024947],
    [781250 / 1024947, -312500 / 1024947, 125000 / 1024947],
    [0, 0, 1],
  ],
  AT: [
    [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
    [0, 5 / 4, -5 / 4, 4 / 5, -4 / 5, 5 / 2, -5 / 2, 2 / 5, -2 / 5, 0],
    [0, 25 / 16, 25 / 16, 16 / 25, 16 / 25, 25 / 4, 25 / 4, 4 / 25, 4 / 25, 0],
    [0, 125 / 64, -125 / 64, 64 / 125, -64 / 125, 125 / 8, -125 / 8, 8 / 125, -8 / 125, 0],
    [0, 625 / 256, 625 / 256, 256 / 625, 256 / 625, 625 / 16, 625 / 16, 16 / 625, 16 / 625, 0],
    [0, 3125 / 1024, -3125 / 1024, 1024 / 3125, -1024 / 3125, 3125 / 32, -3125 / 32, 32 / 3125, -32 / 3125, 0],
    [0, 15625 / 4096, 15625 / 4096, 4096 / 15625, 4096 / 15625, 15625 / 64, 15625 / 64, 64 / 15625, 64 / 15625, 0],
    [0, 78125 / 16384, -78125 / 16384, 16384 / 78125, -16384 / 78125, 78125 / 128, -78125 / 128, 128 / 78125, -128 / 78125, 1],
  ],
};

/** The variant of m outputs per tile side. */
function winoOf(m: number): Wino {
  return m === 8 ? WINO8 : m === 6 ? WINO6 : WINO4;
}

/** A WGSL f32 literal of c (exact for the dyadic coefficients, the nearest f32 for the others). */
function lit(c: number): string {
  return Number.isInteger(c) ? `${c}.0` : String(Math.fround(c));
}

/** The sum of coef * terms[j] over the nonzero coefficients, as WGSL. */
function lin(coefs: readonly number[], term: (j: number) => string): string {
  const parts: string[] = [];
  coefs.forEach((c, j) => {
    if (c === 0) return;
    const t = term(j);
    if (parts.length === 0) parts.push(c === 1 ? t : c === -1 ? `-${t}` : `${lit(c)} * ${t}`);
    else if (c === 1) parts.push(`+ ${t}`);
    else if (c === -1) parts.push(`- ${t}`);
    else parts.push(`${c < 0 ? "-" : "+"} ${lit(Math.abs(c))} * ${t}`);
  });
  return parts.length ? parts.join(" ") : "0.0";
}

/**
 * Weights: texel (c4, xi*Ci + ci) holds U_xi of output channels 4*c4..4*c4+3 and input channel ci,
 * U = G g G^T (6x6) with g the 3x3 kernel; `rot` (a stride-1 dx): g = w[ci][co] rotated by 180 degrees.
 */
const WT_W43_WGSL = (rot: boolean, wH: number, texW: number, W: Wino) => {
  const { a } = W;
  const L: string[] = [];
  L.push(`@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read_write> tb: array<vec4f>;
struct P { CoP4: u32, Co: u32, Ci: u32, wH: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let c4 = g.x;
  let ci = g.y;
  if (c4 >= p.CoP4 || ci >= p.Ci) { return; }`);
  // Straight-line code (lavapipe spills dynamically indexed arrays to memory).
  const G = (k: (j: number) => string) => W.G.map((row) => lin(row, k));
  for (let l = 0; l < 4; l++) {
    L.push(`  let ok${l} = c4 * 4u + ${l}u < p.Co;`);
    L.push(`  let co${l} = min(c4 * 4u + ${l}u, p.Co - 1u);`);
    for (let t = 0; t < 9; t++) {
      const idx = rot
        ? `(ci * p.Co + co${l}) * 9u + ${8 - t}u`
        : `(co${l} * p.Ci + ci) * 9u + ${t}u`;
      L.push(`  let k${l}_${t} = select(0.0, w[${idx}], ok${l});`);
    }
    // T = G g (a x 3), then U = T G^T (a x a).
    for (let c = 0; c < 3; c++) {
      G((j) => `k${l}_${3 * j + c}`).forEach((e, r) => L.push(`  let t${l}_${r}_${c} = ${e};`));
    }
    for (let r = 0; r < a; r++) {
      G((j) => `t${l}_${r}_${j}`).forEach((e, c) => L.push(`  let u${l}_${a * r + c} = ${e};`));
    }
  }
  for (let x = 0; x < a * a; x++) {
    L.push(`  {`);
    L.push(`    let r = ${x}u * p.Ci + ci;`);
    L.push(
      `    tb[(r % ${wH}u) * ${texW}u + (r / ${wH}u) * p.CoP4 + c4] = vec4f(u0_${x}, u1_${x}, u2_${x}, u3_${x});`,
    );
    L.push(`  }`);
  }
  L.push(`}`);
  return L.join("\n");
};

/**
 * Copies the first `rows` full rows of `tex` from `buf`, which holds them in the texture's row
 * layout (tex.width texels per row; a pool texture's width is a multiple of 16, so each row is a
 * multiple of 256 bytes), then releases `buf`. The Winograd passes write buffers and copy them:
 * on lavapipe the copy is a memcpy, while image stores go lane by lane.
 */
function copyRows(gpu: Gpu, buf: Tensor, tex: GPUTexture, rows: number) {
  const texW = tex.width;
  gpu.copyToTexture(buf, { bytesPerRow: texW * 16, rowsPerImage: rows }, { texture: tex }, [
    texW,
    rows,
    1,
  ]);
  buf.release();
}

/** Stages 3x3 weights as {@link WT_W43_WGSL}'s U, in blocks of `cot` output channels. */
function stageW43Weights(gpu: Gpu, w: Tensor, cot: number, rot: boolean, W: Wino): StagedW {
  const [Cout, Cin] = w.shape;
  const co = rot ? Cin : Cout, ci = rot ? Cout : Cin;
  const st = weightTexture(gpu, w, W.a * W.a * ci, co, cot, 1);
  // Written to a buffer in the texture's row layout, then copied ({@link copyRows}).
  const texW = st.tex.width;
  const tb = gpu.empty([st.wH * texW * 4]);
  gpu.dispatch(
    gpu.pipeline(
      `conv2d_wt_w${W.m}3|${rot}|${st.wH}|${texW}`,
      () => WT_W43_WGSL(rot, st.wH, texW, W),
    ),
    [w, tb],
    new Params().u32(st.CoP4).u32(co).u32(ci).u32(st.wH),
    [Math.ceil(st.CoP4 / 16), Math.ceil(ci / 4), 1],
  );
  copyRows(gpu, tb, st.tex, st.wH);
  return st;
}

/** Sizes of one {@link w43Conv} chunk, baked into its transform kernels. */
interface W43Dims {
  /** Outputs per tile side (the variant, {@link Wino}). */
  m: number;
  /** Images in the chunk, channels in (C) and out. */
  n: number;
  C: number;
  Cout: number;
  /** Tile rows (m output rows each) and tile quads (4m output columns each) per image. */
  nTy: number;
  nQ: number;
  /** Rows of the GEMM's pseudo-image ({@link W43_WQ} tile quads per row). */
  R: number;
}

/**
 * The transforms' entry point: invocation i = ((b * chans + c) * nTy + ty) * nQ + q (image b,
 * channel c, tile row ty, tile quad q) as `plane` = b * chans + c, `ch` = c, ty, q and the chunk's
 * quad index t = (b * nTy + ty) * nQ + q.
 */
function w43Main(L: string[], nQ: number, nTy: number, chans: number, plane: string, ch: string) {
  L.push(`@compute @workgroup_size(64)`);
  L.push(`fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {`);
  L.push(`  let i = ${WG_INDEX} * 64u + li;`);
  L.push(`  if (i >= p.n) { return; }`);
  L.push(`  let q = i % ${nQ}u;`);
  L.push(`  let ty = (i / ${nQ}u) % ${nTy}u;`);
  L.push(`  let ${plane} = i / ${nQ * nTy}u;`);
  L.push(`  let ${ch} = ${plane} % ${chans}u;`);
  L.push(`  let t = (${plane} / ${chans}u) * ${nTy * nQ}u + i % ${nTy * nQ}u;`);
}

/**
 * The input transform reading x itself (no staging pass; the source width a multiple of 4): the
 * source plane's height and width in vec4s, the left padding, the nearest upsampling (1 or 2) and
 * the prologue, baked into the kernel.
 */
interface W43Direct {
  H: number;
  W4: number;
  offL: number;
  up: number;
  pro: Prologue;
}

/**
 * Input transform (F(m x m), a = m + 2; shown for m = 4): invocation (image b, channel ci, tile
 * row ty, tile quad q) reads rows 4ty..4ty+5 of the staged plane, texels 4q..4q+4 (columns
 * 16q..16q+19: the 6x6 patches of 4 tiles side by side; with `direct`, the same padded rows and
 * columns from x, see {@link W43Direct}) and writes V_xi of the 4 tiles (a vec4, lane t = tile
 * 4q+t) to plane xi*C + ci of the GEMM's input, where the chunk's tile quads are numbered (b, ty, q)
 * and laid W43_WQ per row. Sizes are baked in (integer division by a non-constant is a per-lane
 * loop on lavapipe).
 */
const W43_IN_WGSL = (
  d: W43Dims,
  xl: PlaneLayout,
  vl: PlaneLayout,
  texW: number,
  storageRead: boolean,
  direct: W43Direct | null,
) => {
  const { type: TEX, lvl: LVL } = texDecl(storageRead);
  const { C, nTy, nQ, m } = d;
  const W = winoOf(m), a = W.a;
  const L: string[] = [];
  if (direct) {
    const pro = direct.pro;
    L.push(`@group(0) @binding(0) var<storage, read> x: array<vec4f>;`);
    L.push(`@group(0) @binding(1) var<storage, read_write> vb: array<vec4f>;`);
    L.push(`struct P { n: u32, offT: i32, plane0: u32 }`);
    L.push(proDecl(pro, 2));
    if (pro === "silu") L.push(SILU_FN(true));
    // Source vec4 a of a row (zero outside the plane, the prologue applied inside).
    L.push(`fn ld(ok: bool, rowbase: u32, a: i32) -> vec4f {
  if (!ok || a < 0 || a >= ${direct.W4}) { return vec4f(0.0); }
  return ${proApply(pro, "x[rowbase + u32(a)]", true)};
}`);
  } else {
    L.push(`@group(0) @binding(0) var xt: ${TEX};`);
    L.push(`@group(0) @binding(1) var<storage, read_write> vb: array<vec4f>;`);
    L.push(`struct P { n: u32 }`);
    L.push(`@group(0) @binding(2) var<uniform> p: P;`);
  }
  w43Main(L, nQ, nTy, C, "plane", "ci");
  L.push(`  let vu = t % ${W43_WQ}u;`);
  L.push(`  let vr = t / ${W43_WQ}u;`);
  // px(r, c): padded row r, column c (0..4m+1) of the quad's patches, as a scalar expression.
  let px: (r: number, c: number) => string;
  if (direct) {
    const { H, W4, offL, up } = direct;
    if (direct.pro) L.push(`  sc = ss[p.plane0 + plane];`);
    // Padded column c of quad q is (upsampled) source column 4mq + c - offL, source column
    // 4mq/up + floor((c - offL) / up): vec4 (m/up) q + floor(e / 4), component e mod 4.
    const e = (c: number) => Math.floor((c - offL) / up);
    const v0 = Math.floor(e(0) / 4), v1 = Math.floor(e(4 * m + 1) / 4);
    L.push(`  let a0 = i32(q * ${m / up}u) + ${v0};`);
    L.push(`  let pb = (p.plane0 + plane) * ${H}u;`);
    for (let r = 0; r < a; r++) {
      L.push(`  let yy${r} = i32(ty * ${m}u + ${r}u) - p.offT;  // row of the (upsampled) source`);
      L.push(`  let ok${r} = yy${r} >= 0 && yy${r} < ${H * up};`);
      L.push(`  let rb${r} = (pb + u32(clamp(yy${r}, 0, ${H * up - 1})) / ${up}u) * ${W4}u;`);
      for (let j = 0; j <= v1 - v0; j++) {
        L.push(`  let s${r}_${j} = ld(ok${r}, rb${r}, a0 + ${j});`);
      }
    }
    px = (r, c) => {
      const v = Math.floor(e(c) / 4);
      return `s${r}_${v - v0}.${COMP[e(c) - 4 * v]}`;
    };
  } else {
    L.push(`  let xu = (plane % ${xl.P}u) * ${xl.Wp4}u + q * ${m}u;`);
    L.push(`  let xv = (plane / ${xl.P}u) * ${xl.Hp}u + ty * ${m}u;`);
    px = (r, c) => `x${r}_${c >> 2}.${COMP[c & 3]}`;
  }
  for (let r = 0; r < a; r++) {
    if (!direct) {
      for (let v = 0; v <= m; v++) {
        L.push(`  let x${r}_${v} = textureLoad(xt, vec2u(xu + ${v}u, xv + ${r}u)${LVL});`);
      }
    }
    // d{r}_{j}: column j of the patches, lane t = tile t (column mt + j of the texels' span).
    for (let j = 0; j < a; j++) {
      const comps = [0, 1, 2, 3].map((t) => px(r, m * t + j));
      L.push(`  let d${r}_${j} = vec4f(${comps.join(", ")});`);
    }
  }
  // T = B^T d (rows), then V = T B (columns).
  for (let i = 0; i < a; i++) {
    for (let j = 0; j < a; j++) {
      L.push(`  let t${i}_${j} = ${lin(W.BT[i], (r) => `d${r}_${j}`)};`);
    }
  }
  for (let i = 0; i < a; i++) {
    for (let k = 0; k < a; k++) {
      L.push(`  {`);
      L.push(`    let pl = ${(a * i + k) * C}u + ci;`);
      L.push(
        `    vb[((pl / ${vl.P}u) * ${vl.Hp}u + vr) * ${texW}u + (pl % ${vl.P}u) * ${vl.Wp4}u + vu] = ${
          lin(W.BT[k], (j) => `t${i}_${j}`)
        };`,
      );
      L.push(`  }`);
    }
  }
  L.push(`}`);
  return L.join("\n");
};

/**
 * Output transform (shown for m = 4): invocation (image b, channel co, tile row ty, tile quad q)
 * reads M_xi of the 4 tiles of quad t = (b, ty, q) (the GEMM's output (a^2, Cout, R, 16) holds them
 * as the vec4 (xi*Cout + co) * 4R + t) and writes their m x m outputs Y = A^T M A, plus bias and
 * residual: rows 4ty..4ty+3, columns 16q..16q+15 of image b0 + b.
 */
const W43_OUT_WGSL = (
  d: W43Dims,
  mW: number,
  bias: boolean,
  res: boolean,
  vecOut: boolean,
  storageRead: boolean,
  stats: boolean,
) => {
  const { Cout, nTy, nQ, R, m } = d;
  const W = winoOf(m), a = W.a;
  const { type: TEX, lvl: LVL } = texDecl(storageRead);
  const L: string[] = [];
  let b = 0;
  L.push(`@group(0) @binding(${b++}) var mt: ${TEX};`);
  if (bias) L.push(`@group(0) @binding(${b++}) var<storage, read> bias: array<f32>;`);
  const ot = vecOut ? "vec4f" : "f32";
  if (res) L.push(`@group(0) @binding(${b++}) var<storage, read> res: array<${ot}>;`);
  L.push(`@group(0) @binding(${b++}) var<storage, read_write> out: array<${ot}>;`);
  if (stats) L.push(`@group(0) @binding(${b++}) var<storage, read_write> part: array<vec4f>;`);
  L.push(`struct P { n: u32, Ho: u32, Wo: u32, b0: u32, oh0: u32, ty0: u32, PT: u32 }`);
  L.push(`@group(0) @binding(${b++}) var<uniform> p: P;`);
  w43Main(L, nQ, nTy, Cout, "bco", "co");
  for (let xi = 0; xi < a * a; xi++) {
    L.push(`  let e${xi} = ${xi * Cout * W43_WQ * R}u + co * ${W43_WQ * R}u + t;`);
    L.push(`  let m${xi} = textureLoad(mt, vec2u(e${xi} % ${mW}u, e${xi} / ${mW}u)${LVL});`);
  }
  for (let i = 0; i < m; i++) {
    for (let c = 0; c < a; c++) {
      L.push(`  let s${i}_${c} = ${lin(W.AT[i], (r) => `m${a * r + c}`)};`);
    }
  }
  if (bias) L.push(`  let bv = bias[co];`);
  L.push(`  let base = (p.b0 * ${Cout}u + bco) * p.Ho * p.Wo;`);
  if (stats) {
    outStats(L, d, bias, res, vecOut);
    L.push(`}`);
    return L.join("\n");
  }
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < m; j++) {
      L.push(`  let y${i}_${j} = ${lin(W.AT[j], (c) => `s${i}_${c}`)};`);
    }
    L.push(`  let oh${i} = p.oh0 + ty * ${m}u + ${i}u;`);
    L.push(`  if (oh${i} < p.Ho) {`);
    for (let k = 0; k < m; k++) {
      // Pixels 4mq + 4k + u of row i: tile (4k + u) / m (a lane), its column (4k + u) % m.
      const pix = [0, 1, 2, 3].map((u) => 4 * k + u);
      let v = `vec4f(${pix.map((p) => `y${i}_${p % m}.${COMP[Math.floor(p / m)]}`).join(", ")})`;
      if (bias) v = `${v} + vec4f(bv)`;
      L.push(`    {`);
      L.push(`      let ow = q * ${4 * m}u + ${4 * k}u;`);
      L.push(`      let o = base + oh${i} * p.Wo + ow;`);
      if (vecOut) {
        L.push(`      if (ow < p.Wo) { out[o / 4u] = ${v}${res ? " + res[o / 4u]" : ""}; }`);
      } else {
        L.push(`      let s = ${v};`);
        for (let j = 0; j < 4; j++) {
          L.push(
            `      if (ow + ${j}u < p.Wo) { out[o + ${j}u] = s.${COMP[j]}${
              res ? ` + res[o + ${j}u]` : ""
            }; }`,
          );
        }
      }
      L.push(`    }`);
    }
    L.push(`  }`);
  }
  L.push(`}`);
  return L.join("\n");
};

/**
 * {@link W43_OUT_WGSL}'s body with the statistics ({@link Conv2dGroupStats}): every output vec4
 * z{i}_{k} and its validity mask first, then the stores, then (count, mean, M2) of the valid values
 * in two passes over the registers (M2 about the quad's own mean: no cancellation).
 */
function outStats(L: string[], d: W43Dims, bias: boolean, res: boolean, vecOut: boolean) {
  const { m, Cout, nQ } = d;
  const W = winoOf(m);
  const zs: string[] = [];
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < m; j++) {
      L.push(`  let y${i}_${j} = ${lin(W.AT[j], (c) => `s${i}_${c}`)};`);
    }
    L.push(`  let oh${i} = p.oh0 + ty * ${m}u + ${i}u;`);
    for (let k = 0; k < m; k++) {
      const pix = [0, 1, 2, 3].map((u) => 4 * k + u);
      let v = `vec4f(${pix.map((p) => `y${i}_${p % m}.${COMP[Math.floor(p / m)]}`).join(", ")})`;
      if (bias) v = `${v} + vec4f(bv)`;
      const z = `z${i}_${k}`;
      zs.push(`${i}_${k}`);
      L.push(`  let ow${i}_${k} = q * ${4 * m}u + ${4 * k}u;`);
      L.push(`  let o${i}_${k} = base + oh${i} * p.Wo + ow${i}_${k};`);
      // Lanes inside the image (a padded tile's rows and columns past the edge are not outputs).
      L.push(
        `  let c${i}_${k} = select(vec4f(0.0), vec4f(1.0), vec4<bool>(${
          [0, 1, 2, 3].map((j) => `ow${i}_${k} + ${j}u < p.Wo`).join(", ")
        }) & vec4<bool>(oh${i} < p.Ho));`,
      );
      if (vecOut) {
        L.push(
          `  let ${z} = ${v}${res ? ` + res[min(o${i}_${k} / 4u, arrayLength(&res) - 1u)]` : ""};`,
        );
        L.push(`  if (c${i}_${k}.x > 0.0) { out[o${i}_${k} / 4u] = ${z}; }`);
      } else {
        if (res) {
          const r = [0, 1, 2, 3].map((j) => `res[min(o${i}_${k} + ${j}u, arrayLength(&res) - 1u)]`);
          L.push(`  let ${z} = ${v} + vec4f(${r.join(", ")});`);
        } else L.push(`  let ${z} = ${v};`);
        for (let j = 0; j < 4; j++) {
          L.push(
            `  if (c${i}_${k}.${COMP[j]} > 0.0) { out[o${i}_${k} + ${j}u] = ${z}.${COMP[j]}; }`,
          );
        }
      }
    }
  }
  const one = "vec4f(1.0)";
  L.push(`  let cnt = dot(${zs.map((z) => `c${z}`).join(" + ")}, ${one});`);
  L.push(`  let mu = dot(${zs.map((z) => `z${z} * c${z}`).join(" + ")}, ${one}) / max(cnt, 1.0);`);
  L.push(`  var sq = vec4f(0.0);`);
  for (const z of zs) L.push(`  { let e = (z${z} - vec4f(mu)) * c${z}; sq = fma(e, e, sq); }`);
  L.push(
    `  part[(p.b0 * ${Cout}u + bco) * p.PT + (p.ty0 + ty) * ${nQ}u + q] = vec4f(cnt, mu, dot(sq, ${one}), 0.0);`,
  );
}

/**
 * Tile quads (texels) per row of the GEMM's pseudo-image: lanes then walk rows of one texel column
 * group. 16 and 64 (lanes along rows) measured the same on 128-256 channels and up to 4.6x slower
 * at 512 -> 512 on 32x32 (a partial last row of few tiles).
 */
const W43_WQ = 4;

/**
 * The most bytes of transformed tiles (V) or products (M) one chunk holds: bounds the working
 * memory (a buffer and a texture of each) to ~128 MiB. The lvm decoder's peak host memory: 2.39 GB
 * with the direct kernel, 2.53 GB with this cap, 2.87 GB with 128 MiB chunks, at the same speed.
 */
const W43_CHUNK_BYTES = 32 * 2 ** 20;

/** Texels per row of the products' texture (the output transform's input). */
const W43_MW = 4096;

/** Input channels per loop iteration of a 1x1 conv's kernel (when they divide Cin). */
const W1_CPI = 4;

/** The GEMM tile of {@link w43Conv} (a 1x1 conv over a pseudo-image 16 tiles wide). */
const W43_GEMM_TILE: ConvTile = { cot: 16, py: 2, px: 16 };

/**
 * The GEMM tile for Cout output channels and pseudo-images of R rows: {@link W43_GEMM_TILE}, or 12
 * output channels per invocation where that leaves fewer of a workgroup's 64 lanes idle. A pseudo-
 * image of a few tiles (a 16x16 image is one tile per product) puts 64 / tiles channel blocks in a
 * workgroup: 768 channels are 48 blocks of 16 (a quarter of the lanes idle) but 64 of 12. Measured
 * (768 -> 768 at 16x16, weights cached, GEMM kernel alone, alternating processes): 28.0-28.3 ms
 * with 16, 22.9-23.0 with 12, 29.0-30.5 with 8; the `lvm` decode (10 such convs) 3870 -> 3769 ms
 * and encode (7) 2121 -> 2037, best of 4 alternating in one process.
 */
function w43GemmTile(Cout: number, R: number): ConvTile {
  const py = gemmRows(R);
  const tiles = Math.ceil(R / py); // per product: the pseudo-image is one tile wide
  if (conv2dTuning.w43Cot) return { ...W43_GEMM_TILE, cot: conv2dTuning.w43Cot, py };
  // launchFwd's layout when the tiles are a power of two (otherwise it numbers (product, tile)
  // pairs across the lanes, and the channel blocks do not change how many idle).
  if (tiles >= WG || (tiles & (tiles - 1)) !== 0) return { ...W43_GEMM_TILE, py };
  const perGroup = WG / tiles; // channel blocks per workgroup
  const busy = (cot: number) => {
    const blocks = Math.ceil(Cout / cot);
    return (blocks * tiles) / (Math.ceil(blocks / perGroup) * WG);
  };
  return { ...W43_GEMM_TILE, cot: busy(12) > busy(16) ? 12 : 16, py };
}

/**
 * Rows per GEMM tile for a pseudo-image of R rows: 2, or 1 for a few odd rows, where a second row
 * would be mostly padding (one 16x16 image is a single row: 768 -> 768 F(4x4) with cached weights
 * 40 -> 27 ms per conv with 1; still not taken there: with the weights cached as F(4x4)'s U, 4x
 * their size, the `lvm` encoder's cache would grow from 0.45 to ~1 GB for 2% of an encode).
 */
function gemmRows(R: number): number {
  return R % 2 === 1 && R < 8 ? 1 : 2;
}

/**
 * Stride-1 3x3 conv by Winograd F(m x m,3x3) (`W`: m = 4, 6 or 8, see above) of x (B, C, H, W; nearest-upsampled by
 * `pad.up` first), padded by (offT, offL) on the top/left, into out (B, Cout, Ho, Wo), with staged
 * weights from {@link stageW43Weights}. The GEMM is a 1x1 conv of a^2 "images" (one per xi, its own
 * weights) of C planes, each the chunk's tile quads laid 4 per row: any image size fills its 16x2
 * register tiles. Chunks are batches of images, or bands of tile rows of one image when a whole
 * image's transformed tiles or products would not fit a texture or {@link W43_CHUNK_BYTES}. Returns false, having recorded nothing, when not even one tile row fits (the caller
 * then runs the direct kernel).
 */
function w43Conv(
  gpu: Gpu,
  x: Tensor,
  inShape: { B: number; C: number; H: number; W: number },
  w: Tensor,
  rot: boolean,
  bias: Tensor | undefined,
  res: Tensor | undefined,
  out: Tensor,
  g: { Cout: number; Ho: number; Wo: number },
  pad: { offT: number; offL: number; up: number; pro?: Conv2dPrologue },
  W: Wino,
  cache?: Conv2dWeightCache,
  stats?: Conv2dGroupStats,
): boolean {
  const { B, C } = inShape;
  const { Cout, Ho, Wo } = g;
  const { m } = W, NP = W.a * W.a; // products
  const nTyAll = Math.ceil(Ho / m), nQ = Math.ceil(Wo / (4 * m));
  const xWp4 = m * nQ + 1; // staged input planes: every texel a patch reads
  // A chunk: n images, or one image's band of nTy tile rows.
  const dims = (n: number, nTy: number): W43Dims => {
    const R = Math.ceil((n * nTy * nQ) / W43_WQ);
    return { m, n, C, Cout, nTy, nQ, R: Math.ceil(R / gemmRows(R)) * gemmRows(R) };
  };
  const fits = (n: number, nTy: number) => {
    const d = dims(n, nTy);
    const vl = planeLayout(gpu, NP * C, d.R, W43_WQ);
    const max = Math.min(gpu.limits.maxStorageBufferBindingSize, W43_CHUNK_BYTES);
    return !!vl && !!planeLayout(gpu, n * C, m * nTy + 2, xWp4) &&
      NP * Cout * d.R * W43_WQ * 16 <= max &&
      Math.ceil((NP * Cout * d.R * W43_WQ) / W43_MW) <= gpu.limits.maxTextureDimension2D &&
      Math.ceil((Math.min(NP * C, vl.P) * vl.Wp4) / 16) * 16 * vl.bands * d.R * 16 <= max;
  };
  let bc = B, band = Math.min(nTyAll, conv2dTuning.w43Rows ?? nTyAll);
  while (bc > 1 && !fits(bc, band)) bc = Math.floor(bc / 2);
  while (band > 1 && !fits(bc, band)) band = Math.ceil(band / 2);
  if (!fits(bc, band)) return false;
  const tile = w43GemmTile(Cout, dims(bc, band).R);
  // Keyed by the staged layout (texels per weight row), not the tile: 12- and 16-channel tiles of
  // 768 channels read the same texture.
  const ws = cache
    ? cache.get(
      w,
      `w${m}3|${weightTexels(Cout, tile.cot)}|${rot}`,
      () => stageW43Weights(gpu, w, tile.cot, rot, W),
    )
    : stageW43Weights(gpu, w, tile.cot, rot, W);
  const storageRead = gpu.kind === "cpu";
  if (stats) {
    // conv2d emptied it on entry (the one place; every path that gathers fills it afresh)
    stats.tiles = nTyAll * nQ;
    stats.part = gpu.empty([B * Cout * stats.tiles, 4]);
  }
  const direct: W43Direct | null = inShape.W % 4 === 0 && conv2dTuning.w43Direct
    ? {
      H: inShape.H,
      W4: inShape.W / 4,
      offL: pad.offL,
      up: pad.up,
      pro: pad.pro ? (pad.pro.silu ? "silu" : "affine") : "",
    }
    : null;
  for (let b0 = 0; b0 < B; b0 += bc) {
    for (let ty0 = 0; ty0 < nTyAll; ty0 += band) {
      const nTy = Math.min(band, nTyAll - ty0);
      const d = dims(Math.min(bc, B - b0), nTy);
      const xl = planeLayout(gpu, d.n * C, m * nTy + 2, xWp4)!;
      // Rows m*ty0.. of the output read padded rows m*ty0..: the source is cut by as many rows.
      const offT = pad.offT - m * ty0;
      const xs = direct ? null : stage(
        gpu,
        x,
        b0 * C,
        d.n * C,
        inShape.H,
        inShape.W,
        xl,
        offT,
        pad.offL,
        pad.up,
        pad.pro,
      );
      const vl = planeLayout(gpu, NP * C, d.R, W43_WQ)!;
      const vTex = takeTexture(gpu, Math.min(NP * C, vl.P) * vl.Wp4, vl.bands * vl.Hp);
      const vView = textureView(vTex);
      // V is written to a buffer in the texture's row layout, then copied ({@link copyRows}): a^2
      // image stores per invocation, scattered over a^2 planes, cost 10x the loads and arithmetic.
      const texW = vTex.width, vRows = vl.bands * vl.Hp;
      const vBuf = gpu.empty([vRows * texW * 4]);
      const nIn = d.n * C * nTy * nQ;
      gpu.dispatch(
        gpu.pipeline(
          `conv2d_w43_in|${storageRead}|${JSON.stringify([d, direct ? direct : xl, vl, texW])}`,
          () => W43_IN_WGSL(d, xl, vl, texW, storageRead, direct),
        ),
        xs ? [xs.view, vBuf] : [x, vBuf, ...(pad.pro ? [pad.pro.ss] : [])],
        xs ? new Params().u32(nIn) : new Params().u32(nIn).i32(offT).u32(b0 * C),
        grid(Math.ceil(nIn / 64)),
      );
      copyRows(gpu, vBuf, vTex, vRows);
      if (xs) texPool.put(gpu, xs.tex);
      // The products (a^2, Cout, R, 16), rounded up to whole rows of the texture they are copied to.
      const mRows = Math.ceil((NP * Cout * d.R * W43_WQ) / W43_MW);
      const mBuf = gpu.empty([mRows * W43_MW * 4]);
      launchFwd(
        gpu,
        { tex: vTex, view: vView, lay: vl },
        ws,
        undefined,
        undefined,
        mBuf,
        { Cin: C, Cout, Ho: d.R, Wo: 4 * W43_WQ, b0: 0, bc: NP },
        { KH: 1, KW: 1, S: 1 },
        { ...tile, py: gemmRows(d.R) },
        undefined,
        1,
      );
      texPool.put(gpu, vTex);
      // M as a texture of rows of W43_MW texels (a memcpy): the output transform's a^2 reads are then
      // vectorised gathers instead of bounds-checked buffer loads.
      const mTex = takeTexture(gpu, W43_MW, mRows);
      copyRows(gpu, mBuf, mTex, mRows);
      const vecOut = Wo % 4 === 0;
      const nOut = d.n * Cout * nTy * nQ;
      gpu.dispatch(
        gpu.pipeline(
          `conv2d_w43_out|${
            JSON.stringify(d)
          }|${!!bias}|${!!res}|${vecOut}|${storageRead}|${!!stats}`,
          () => W43_OUT_WGSL(d, W43_MW, !!bias, !!res, vecOut, storageRead, !!stats),
        ),
        [
          textureView(mTex),
          ...(bias ? [bias] : []),
          ...(res ? [res] : []),
          out,
          ...(stats?.part ? [stats.part] : []),
        ],
        new Params().u32(nOut).u32(Ho).u32(Wo).u32(b0).u32(m * ty0).u32(ty0)
          .u32(nTyAll * nQ),
        grid(Math.ceil(nOut / 64)),
      );
      texPool.put(gpu, mTex);
    }
  }
  if (!cache) texPool.put(gpu, ws.tex);
  return true;
}

/**
 * One output phase of a stride-1 conv on a nearest-2x-upsampled input, along one axis: output
 * o = 2m + r reads upsampled positions o + k - pad, i.e. source pixels floor((r + k - pad) / 2) + m,
 * which span n <= ceil(K/2) + 1 offsets from `off` = floor((r - pad) / 2): a conv of the source with n
 * taps (each the sum of the kernel taps that land on it), over `len` outputs.
 */
function upPhase(r: number, pad: number, K: number, extent: number) {
  const off = Math.floor((r - pad) / 2);
  const n = Math.floor((r + K - 1 - pad) / 2) - off + 1;
  return { off, n, len: Math.ceil((extent - r) / 2) };
}

/**
 * conv(upsample2x(x)) as four convs of x itself, one per output phase (row and column parity), each
 * with the taps that read the same source pixel summed (2x2 for a 3x3 kernel): 4*4 instead of 4*9
 * FMAs per output pixel quad, 2.25x fewer for the decoder's upsample convs, no upsampled copy.
 */
function upsampledConv(
  gpu: Gpu,
  x: Tensor,
  w: Tensor,
  bias: Tensor | undefined,
  res: Tensor | undefined,
  out: Tensor,
  g: Geom,
  tileOpt?: ConvTile,
  pro?: Conv2dPrologue,
  cache?: Conv2dWeightCache,
) {
  const { B, Cin, Cout, KH, KW, Ho, Wo } = g;
  for (let rh = 0; rh < 2; rh++) {
    const ph = upPhase(rh, g.pt, KH, Ho);
    for (let rw = 0; rw < 2; rw++) {
      const pw = upPhase(rw, g.pl, KW, Wo);
      if (ph.len <= 0 || pw.len <= 0) continue;
      const tile = tileOpt ?? conv2dTile(gpu, Cout, ph.len, pw.len, ph.n, pw.n, 1);
      validTile(tile);
      const taps = {
        mode: "up",
        KHs: ph.n,
        KWs: pw.n,
        rh,
        rw,
        pt: g.pt,
        pl: g.pl,
        offH: ph.off,
        offW: pw.off,
      } as const;
      const ws = cache
        ? cache.get(
          w,
          `${tile.cot}|${JSON.stringify(taps)}`,
          () => stageWeights(gpu, w, tile.cot, taps),
        )
        : stageWeights(gpu, w, tile.cot, taps);
      convCore(
        gpu,
        "conv2d",
        x,
        { B, C: Cin, H: g.H, W: g.W },
        ws,
        bias,
        res,
        out,
        { Cout, Ho: ph.len, Wo: pw.len, KH: ph.n, KW: pw.n, S: 1 },
        { offT: -ph.off, offL: -pw.off, up: 1, pro },
        tile,
        { S: 2, H: Ho, W: Wo, r: rh, c: rw },
      );
      if (!cache) texPool.put(gpu, ws.tex);
    }
  }
}

/**
 * 2-D convolution, NCHW: x (B,Cin,H,W), w (Cout,Cin,KH,KW), bias (Cout) -> (B,Cout,Ho,Wo) with
 * Ho = floor((H + top + bottom - KH) / stride) + 1 (likewise Wo). `residual` (B,Cout,Ho,Wo) is added to
 * the result (fused). `upsample2x` first nearest-upsamples x by 2 (fused; H, W above are then 2H, 2W).
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { conv2d } from "./conv2d.ts";
 * const gpu = await getGpu();
 * const x = gpu.upload(new Float32Array(2 * 3 * 8 * 8).fill(1), [2, 3, 8, 8]);
 * const w = gpu.upload(new Float32Array(5 * 3 * 3 * 3).fill(0.5), [5, 3, 3, 3]);
 * const y = conv2d(gpu, x, w, undefined, { pad: 1 }); // (2, 5, 8, 8)
 * const down = conv2d(gpu, x, w, undefined, { stride: 2, pad: [0, 1, 0, 1] }); // (2, 5, 4, 4)
 * ```
 */
export function conv2d(
  gpu: Gpu,
  x: Tensor,
  w: Tensor,
  bias?: Tensor,
  opts: Conv2dForwardOptions = {},
): Tensor {
  check4d("conv2d", "x", x, "(B,Cin,H,W)");
  check4d("conv2d", "w", w, "(Cout,Cin,KH,KW)");
  const g = geometry("conv2d", x.shape, w.shape, opts);
  const { B, Cin, Cout, KH, KW, S, Ho, Wo } = g;
  const outShape = [B, Cout, Ho, Wo];
  check("conv2d", "bias", bias, [Cout]);
  check("conv2d", "residual", opts.residual, outShape);
  const out = opts.out ?? gpu.empty(outShape); // (B,Cout,Ho,Wo)
  check("conv2d", "out", out, outShape);
  for (const t of [x, w, bias, opts.residual]) {
    if (t && t.buffer === out.buffer) throw new RangeError("conv2d: out aliases an input");
  }
  if (opts.prologue) {
    check("conv2d", "prologue.ss", opts.prologue.ss, [B * Cin, 2]);
  }
  opts.stats?.release(); // filled again only by a path that gathers them
  if (conv2dTuning.gemm ?? (gpu.kind === "gpu" && !opts.tile && !conv2dTuning.w43)) {
    // Real GPUs: the implicit GEMM (no staging, no Winograd); the stash and the statistics stay
    // empty (the backward stages x itself, the GroupNorm reads the output).
    opts.stash?.release(gpu);
    gemmConv(gpu, x, w, bias, opts.residual, out, g, opts.prologue);
    return out;
  }
  const wino = opts.tile ? null : winoFor(g, Cin, Cout, Ho, Wo, !!opts.weights);
  if (
    wino &&
    w43Conv(
      gpu,
      x,
      { B, C: Cin, H: g.H, W: g.W },
      w,
      false,
      bias,
      opts.residual,
      out,
      g,
      {
        offT: g.pt,
        offL: g.pl,
        up: g.up,
        pro: opts.prologue,
      },
      wino,
      opts.weights,
      opts.stats,
    )
  ) {
    opts.stash?.release(gpu);
    return out;
  }
  if (g.up === 2 && S === 1) {
    upsampledConv(gpu, x, w, bias, opts.residual, out, g, opts.tile, opts.prologue, opts.weights);
    return out;
  }
  const tile: ConvTile = opts.tile ?? conv2dTile(gpu, Cout, Ho, Wo, KH, KW, S, B);
  validTile(tile);
  const plain = () => stageWeights(gpu, w, tile.cot, { mode: "plain" });
  const ws = opts.weights ? opts.weights.get(w, `${tile.cot}|plain`, plain) : plain();
  // x read unpadded from one copy where nothing needs its staging: no prologue to apply and no
  // stash to keep for the weight gradient (training keeps the padded staging, which the dW reads).
  const flat = !opts.prologue && !opts.stash ? unpaddedX(gpu, x, g) : null;
  convCore(
    gpu,
    "conv2d",
    x,
    { B, C: Cin, H: g.H, W: g.W },
    ws,
    bias,
    opts.residual,
    out,
    g,
    { offT: g.pt, offL: g.pl, up: g.up, pro: opts.prologue, flat: flat?.st },
    tile,
    undefined,
    g.up === 1 ? opts.stash : undefined,
    opts.stats,
  );
  flat?.put();
  if (!opts.weights) texPool.put(gpu, ws.tex);
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Backward.

interface DwCfg {
  cot: number;
  /** Input channels per invocation. */
  cit: number;
  px: number;
  /** Output rows per segment (divides Ho). */
  py: number;
  KH: number;
  KW: number;
  S: number;
  /** Also sum dy per output channel (the bias gradient). */
  bias: boolean;
  /** Segments per row and per image. */
  nTx: number;
  nTy: number;
  /** The staged planes' layouts (x, dy). */
  xl: PlaneLayout;
  dl: PlaneLayout;
  /** dy copied flat ({@link flatDy}): texels per texture row, else 0 (dl's padded planes). */
  dFlat: number;
  /** One slice of one chunk: dw into `part` (the dw tensor) and dbias into its own binding. */
  direct: boolean;
  /** x read unpadded from a {@link flatPlanes} texture (as {@link FwdCfg.xFlat}), else xl's planes. */
  xFlat: PlaneGeom | null;
  /** Read the textures as read-only storage textures ({@link texDecl}). */
  storageRead: boolean;
}

/** Knobs for benchmarks and tuning (not for normal use). */
export const conv2dTuning: {
  /** Weight-gradient tile: output channels, input channels, pixels and rows per segment. */
  dw: Partial<{ cot: number; cit: number; px: number; py: number }> | null;
  /**
   * Winograd ({@link w43Conv}, F(4x4), F(6x6) or F(8x8): `wino`) for stride-1 3x3 convs (forward, dx, the
   * decoder's upsampled convs): true = always, false = never, null = where it is measured faster
   * ({@link useW43}).
   */
  w43: boolean | null;
  /**
   * The Winograd tile: 4 = F(4x4,3x3), 6 = F(6x6,3x3), 8 = F(8x8,3x3), null = {@link winoFor}'s
   * choice.
   */
  wino: 4 | 6 | 8 | null;
  /** The largest transformed weights (bytes) {@link winoFor} takes F(8x8) for (null: 64 MiB). */
  w8MaxBytes: number | null;
  /** The most tile rows (m output rows each) one Winograd chunk takes (tests: banded images). */
  w43Rows: number | null;
  /** Output channels per invocation of the Winograd GEMM: 4, 8, 12 or 16 (null: its choice). */
  w43Cot: number | null;
  /** The Winograd input transform reads x itself where it can (false: always staged; tests). */
  w43Direct: boolean;
  /** Inputs that need no padding are staged by buffer-to-texture copies (false: the pad pass). */
  copyStage: boolean;
  /**
   * The stride-1 dx reads its weights in the row layout where it fits ({@link stageWeightRows};
   * false: the rotated column layout).
   */
  wRows: boolean;
  /**
   * The forward as an implicit GEMM through the tiled matmul's loop (conv2d_gemm.ts): true =
   * always, false = never, null = on the "gpu" kernel kind (real GPUs) unless a tile or the
   * Winograd path (`w43: true`) is forced.
   */
  gemm: boolean | null;
  /**
   * The input gradient of the decoder's upsampled 3x3 convs as one stride-2 4x4 conv of dy on the
   * source grid ({@link upsampledDx}; false: a 3x3 conv on the upsampled grid, then a 2x2 sum).
   */
  upDx: boolean;
  /**
   * The backward's input gradient (stride 1; strided ones keep their phase convs) and weight
   * gradient as implicit GEMMs (conv2d_gemm.ts): true = always, false = never (the texture
   * kernels), null = on the "gpu" kernel kind unless a tile or Winograd is forced. Measured on an H200 (`deno task bench --filter
   * "vqgan train step"`, tools/gpu_check.sh): the tiny tokenizer step 70.2 -> 57.6 ms wall, GPU
   * time 48.5 -> 36.2 ms. On lavapipe the GEMMs run ~13x slower (emulated barriers).
   */
  gemmBackward: boolean | null;
  /**
   * The dx (stride 1, and each phase conv of a strided one) reads dy unpadded from one copy
   * ({@link flatPlanes}), which the weight gradient reads too (false: dy padded by the pad pass
   * for each dx conv).
   */
  flatDx: boolean;
  /**
   * The direct forward and the weight gradient read x unpadded from one copy ({@link flatPlanes})
   * where it needs no prologue and no stash is kept (false: x staged into padded planes by
   * {@link stage}).
   */
  flatX: boolean;
  /**
   * A 1x1 conv's weight gradient as the batched matmul dY_b X_b^T and a sum over the batch
   * ({@link dwByMatmul}): true = always (stride 1, no padding or upsampling), false = never, null =
   * where the matmul has work for every core ({@link useDwMatmul}).
   */
  dwMatmul: boolean | null;
  /**
   * A stride-2 conv's dx computes both column phases of each row phase in one kernel
   * ({@link FwdCfg.colPh}) where they fit ({@link pairCols}; false: one kernel per phase).
   */
  dxPair: boolean;
} = {
  dw: null,
  w43: null,
  wino: null,
  w8MaxBytes: null,
  w43Rows: null,
  w43Cot: null,
  w43Direct: true,
  copyStage: true,
  wRows: true,
  gemm: null,
  upDx: true,
  gemmBackward: null,
  flatDx: true,
  flatX: true,
  dwMatmul: null,
  dxPair: true,
};

/** The Winograd variant of a stride-1 3x3 conv ({@link useW43}), or null for the direct kernel. */
function winoFor(
  g: Geom,
  Cin: number,
  Cout: number,
  Ho: number,
  Wo: number,
  cached = false,
): Wino | null {
  if (!useW43(g, Cin, Cout, Ho, Wo, cached)) return null;
  if (conv2dTuning.wino) return winoOf(conv2dTuning.wino);
  // F(8x8) on outputs from 96x96, where its weights (U: 100 floats per weight pair) stay within 64
  // MiB. Measured (wall per conv, weights cached, best of 4, alternating in one process): against
  // F(6x6) at 256x256, 128 -> 128 187 -> 159 ms, 256 -> 128 299 -> 256, the upsampled 256 -> 256
  // 446 -> 343; against F(4x4) at 128x128, 256 -> 256 122 -> 91, 128 -> 128 58 -> 42, 128 -> 256
  // 98 -> 69, the upsampled 256 -> 256 130 -> 92; at 96x96 256 -> 256 88 -> 71; at 64x64 even (43
  // vs 42), so F(4x4) stays there. F(6x6) (once taken from 192x192: 9-11% faster than F(4x4)
  // there, slower from 128x128 down) is no longer a default.
  const u8 = Cin * Cout * WINO8.a ** 2 * 4;
  if (Ho >= 96 && Wo >= 96 && u8 <= (conv2dTuning.w8MaxBytes ?? 64 * 2 ** 20)) return WINO8;
  return WINO4;
}

/**
 * Whether a stride-1 3x3 conv of Cin -> Cout channels and Ho x Wo outputs takes the Winograd path
 * ({@link conv2dTuning}'s `w43`); `cached`: its transformed weights are kept between calls (a
 * {@link Conv2dWeightCache}), so the weight transform is paid once.
 */
function useW43(
  g: Geom,
  Cin: number,
  Cout: number,
  Ho: number,
  Wo: number,
  cached = false,
): boolean {
  if (g.KH !== 3 || g.KW !== 3 || g.S !== 1 || conv2dTuning.w43 === false) return false;
  if (conv2dTuning.w43) return true;
  // Measured on lavapipe (wall clock per conv, best of 4, alternating in one process): 1.2-1.65x
  // faster from 128 channels on 64x64 (128 -> 128 at 256x256: 277 -> 189 ms, 256 -> 256 at 64x64:
  // 83 -> 50 ms, 512 -> 512 at 32x32: 83 -> 64 ms, 768 -> 512 at 32x32: 115 -> 79 ms, a batch of 8
  // 128 -> 128 at 32x32: 44 -> 36 ms); the same at 256 -> 256 on one 32x32 image; slower on 16x16
  // images (768 channels: 57 -> 87 ms, the weight transform) and below 128 channels (64 at 32x32,
  // batch 8: 21 ms either way); the upsampled convs from 256 channels on 64x64 outputs (256
  // at 256x256: 724 -> 596 ms, 512 at 64x64 175 -> 141; 128 at 256x256 173 -> 205, slower) and
  // from 512 channels on 32x32 outputs (768: 123 -> 111 ms, 133 -> 73 with the weights cached;
  // 512: 59 -> 48; 256 at 64x64 even).
  const lo = Math.min(Cin, Cout), hi = Math.max(Cin, Cout), px = Ho * Wo;
  // With the weights cached, 768 channels at 16x16 (the `lvm` encoder's last level, the decoder's
  // first): 49.2 -> 31.8 ms per conv (F(4x4)); 768 at 8x8 twice as slow (both paths cached,
  // alternating in one process; `deno task bench --filter "768->768 16x16"` shows the cached
  // Winograd conv beside the uncached direct one). With the GEMM's 12-channel tiles (w43GemmTile)
  // 512 channels gain too (best of 5 x 4, alternating in one process): 512 -> 768 34.3 -> 21.4 ms
  // (the encoder's last level), 768 -> 512 35.5 -> 28.8, 512 -> 512 23.8 -> 20.1 (it was even).
  if (cached && g.up === 1 && lo >= 512 && hi <= 768 && px >= 16 * 16) return true;
  if (lo < 128 || hi > 768 || px < 32 * 32 || lo * g.B * px < 128 * 64 * 64) return false;
  return g.up === 1 || lo >= 512 || (lo >= 256 && px >= 64 * 64);
}

/**
 * dW (and dbias) partial sums. Invocation = (CIT input channels, block of COT output channels) with
 * COT*CIT*KH*KW accumulators; workgroup z = a slice of the segments (image, PY output rows, PX
 * pixels). Per segment it reads COT*PY*PX/4 dy texels (uniform across the workgroup when T >= 8) and
 * CIT*((PY-1)*S+KH)*NV x texels. One flat loop over segments with the layout's sizes baked in: on
 * lavapipe the same work in nested (row, segment) loops ran 1.4x slower at 32x32 and 5x at 8x8 (the
 * loop bookkeeping of every loop-carried accumulator is paid per inner iteration), and the
 * constant divisors become multiply-shifts.
 */
function dwWgsl(c: DwCfg): string {
  const { cot, cit, px, py, KH, KW, S, nTx, nTy, xl, dl } = c;
  const QN = px / 4;
  const NV = texelsPerRow(px, S, KW);
  const KHW = KH * KW;
  const R = (py - 1) * S + KH; // x rows per segment
  const { type: TEX, lvl: LVL } = texDecl(c.storageRead);
  const L: string[] = [];
  L.push(`@group(0) @binding(0) var xt: ${TEX};`);
  L.push(`@group(0) @binding(1) var dyt: ${TEX};`);
  L.push(`@group(0) @binding(2) var<storage, read_write> part: array<f32>;`);
  const db = c.direct && c.bias;
  if (db) L.push(`@group(0) @binding(3) var<storage, read_write> db: array<f32>;`);
  L.push(`struct P {
  Cin: u32, Cout: u32, segs: u32, segsPer: u32, coBlocks: u32, part0: u32, T: u32, G: u32,
}`);
  L.push(`@group(0) @binding(${db ? 4 : 3}) var<uniform> p: P;`);
  L.push(`@compute @workgroup_size(${WG})`);
  L.push(`fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u) {`);
  // T invocations (groups of CIT input channels) per channel block, G = 64 / T blocks per workgroup.
  L.push(`  let cg = wg.x * p.T + li % p.T;`);
  L.push(`  let cb0 = wg.y * p.G + li / p.T;`);
  L.push(`  let live = cg * ${cit}u < p.Cin && cb0 < p.coBlocks;`);
  L.push(`  let cb = min(cb0, p.coBlocks - 1u);`);
  L.push(`  let slice = wg.z;`);
  // Channels past the end read the last one (never stored).
  for (let j = 0; j < cit; j++) L.push(`  let ci${j} = min(cg * ${cit}u + ${j}u, p.Cin - 1u);`);
  for (let o = 0; o < cot; o++) L.push(`  let co${o} = min(cb * ${cot}u + ${o}u, p.Cout - 1u);`);
  for (let o = 0; o < cot; o++) {
    for (let j = 0; j < cit; j++) {
      for (let k = 0; k < KHW; k++) L.push(`  var a${o}_${j}_${k} = 0.0;`);
    }
    if (c.bias) L.push(`  var bs${o} = vec4f(0.0);`);
  }
  L.push(`  let s1 = min((slice + 1u) * p.segsPer, p.segs);`);
  L.push(`  for (var s = slice * p.segsPer; s < s1; s++) {`);
  L.push(`    let rt = s / ${nTx}u;`);
  L.push(`    let tx = s - rt * ${nTx}u;`);
  L.push(`    let bl = rt / ${nTy}u;`);
  L.push(`    let oh = (rt - bl * ${nTy}u) * ${py}u;`);
  const F = c.xFlat;
  // Flat x: window texel v of row r is source texel (fq0 + v) of row (fy0 + r), or the zero column;
  // output pixel j of the segment reads window position S*j + kw - offL + 4*QOFF.
  const QOFF = F ? Math.ceil(F.offL / 4) + 0 : 0; // + 0: no -0 in the WGSL
  const NVx = F ? ((S * (px - 1) + KW - 1 - F.offL + 4 * QOFF) >> 2) + 1 : NV;
  for (let j = 0; j < cit; j++) {
    L.push(`    let xp${j} = bl * p.Cin + ci${j};`);
    if (F) continue; // the plane's texture row
    L.push(`    let xu${j} = (xp${j} % ${xl.P}u) * ${xl.Wp4}u + tx * ${(px * S) / 4}u;`);
    L.push(`    let xv${j} = (xp${j} / ${xl.P}u) * ${xl.Hp}u + oh * ${S}u;`);
  }
  if (F) {
    L.push(`    let fy0 = i32(oh * ${S}u) - (${F.offT});`);
    L.push(`    let fq0 = i32(tx * ${(px * S) / 4}u) - (${QOFF});`);
    L.push(...flatWindow(F, R, NVx, "    "));
  }
  const TW = c.dFlat, W4 = nTx * QN; // flat dy: texel f of the tensor at (f % TW, f / TW)
  for (let o = 0; o < cot; o++) {
    L.push(`    let dp${o} = bl * p.Cout + co${o};`);
    if (TW) {
      // The segment's texels of a row lie in one texture row (TW is a multiple of the row's W4).
      L.push(`    let df${o} = (dp${o} * ${nTy * py}u + oh) * ${W4}u + tx * ${QN}u;`);
    } else {
      L.push(`    let du${o} = (dp${o} % ${dl.P}u) * ${dl.Wp4}u + tx * ${QN}u;`);
      L.push(`    let dv${o} = (dp${o} / ${dl.P}u) * ${dl.Hp}u + oh;`);
    }
    for (let y = 0; y < py; y++) {
      const at = TW
        ? (q: number) =>
          `vec2u(((df${o} + ${y * W4}u) % ${TW}u) + ${q}u, (df${o} + ${y * W4}u) / ${TW}u)`
        : (q: number) => `vec2u(du${o} + ${q}u, dv${o} + ${y}u)`;
      for (let q = 0; q < QN; q++) {
        L.push(`    let d${o}_${y}_${q} = textureLoad(dyt, ${at(q)}${LVL});`);
      }
    }
    if (c.bias) {
      const all = [];
      for (let y = 0; y < py; y++) for (let q = 0; q < QN; q++) all.push(`d${o}_${y}_${q}`);
      L.push(`    bs${o} += ${all.join(" + ")};`);
    }
  }
  for (let j = 0; j < cit; j++) {
    L.push(`    {`);
    for (let r = 0; r < R; r++) {
      for (let v = 0; v < NVx; v++) {
        L.push(
          `      let v${r}_${v} = textureLoad(xt, ${
            F ? `vec2u(xo${r}_${v}, xp${j})` : `vec2u(xu${j} + ${v}u, xv${j} + ${r}u)`
          }${LVL});`,
        );
      }
    }
    // Tap (kh, kw) of output pixel (y, 4q+i) reads x row y*S + kh, column S*(4q+i) + kw (of the
    // padded plane; of the flat window: shifted by 4*QOFF - offL).
    const xs = (r: number, kw: number, q: number) => {
      const pos = [0, 1, 2, 3].map((i) =>
        F ? S * (q * 4 + i) + kw - F.offL + 4 * QOFF : S * (q * 4 + i) + kw
      );
      return S === 1 && pos[0] % 4 === 0
        ? `v${r}_${pos[0] >> 2}`
        : `vec4f(${pos.map((p) => `v${r}_${p >> 2}.${COMP[p & 3]}`).join(", ")})`;
    };
    for (let kh = 0; kh < KH; kh++) {
      for (let kw = 0; kw < KW; kw++) {
        L.push(`      {`);
        for (let y = 0; y < py; y++) {
          for (let q = 0; q < QN; q++) L.push(`      let x${y}_${q} = ${xs(y * S + kh, kw, q)};`);
        }
        const k = kh * KW + kw;
        for (let o = 0; o < cot; o++) {
          const terms = [];
          for (let y = 0; y < py; y++) {
            for (let q = 0; q < QN; q++) terms.push(`dot(d${o}_${y}_${q}, x${y}_${q})`);
          }
          L.push(`      a${o}_${j}_${k} += ${terms.join(" + ")};`);
        }
        L.push(`      }`);
      }
    }
    L.push(`    }`);
  }
  L.push(`  }`);
  L.push(`  if (!live) { return; }`);
  const n2 = c.bias ? `p.Cout * p.Cin * ${KHW}u + p.Cout` : `p.Cout * p.Cin * ${KHW}u`;
  L.push(`  let sbase = (p.part0 + slice) * (${n2});`);
  for (let o = 0; o < cot; o++) {
    L.push(`  if (cb * ${cot}u + ${o}u < p.Cout) {`);
    for (let j = 0; j < cit; j++) {
      L.push(`    if (cg * ${cit}u + ${j}u < p.Cin) {`);
      L.push(`      let base = sbase + (co${o} * p.Cin + ci${j}) * ${KHW}u;`);
      for (let k = 0; k < KHW; k++) L.push(`      part[base + ${k}u] = a${o}_${j}_${k};`);
      L.push(`    }`);
    }
    if (c.bias) {
      L.push(`    if (cg == 0u) {`);
      L.push(
        `      ${
          db ? `db[co${o}]` : `part[sbase + p.Cout * p.Cin * ${KHW}u + co${o}]`
        } = bs${o}.x + bs${o}.y + bs${o}.z + bs${o}.w;`,
      );
      L.push(`    }`);
    }
    L.push(`  }`);
  }
  L.push(`}`);
  return L.join("\n");
}

const SUM_SLICES_WGSL = `
@group(0) @binding(0) var<storage, read> part: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
// out[i] = sum over slices k of part[k * stride + off + i], i < N.
struct P { N: u32, S: u32, stride: u32, off: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;
  if (i >= p.N) { return; }
  var s = 0.0;
  for (var k = 0u; k < p.S; k++) { s += part[k * p.stride + p.off + i]; }
  out[i] = s;
}`;

/**
 * {@link SUM_SLICES_WGSL} for dW and dbias together, 4 floats per invocation (n and Cout multiples
 * of 4): one pass where there were two, and vec4 loads (each storage load is paid per instruction
 * on lavapipe).
 */
const SUM_SLICES4_WGSL = (bias: boolean) => `
@group(0) @binding(0) var<storage, read> part: array<vec4f>;
@group(0) @binding(1) var<storage, read_write> dw: array<vec4f>;
${bias ? "@group(0) @binding(2) var<storage, read_write> db: array<vec4f>;" : ""}
// (dw | db)[i] = sum over slices k of part[k * stride4 + i], i < N4 (dw below n4, db above).
struct P { N4: u32, S: u32, stride4: u32, n4: u32 }
@group(0) @binding(${bias ? 3 : 2}) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 64u + li;
  if (i >= p.N4) { return; }
  var s = vec4f(0.0);
  for (var k = 0u; k < p.S; k++) { s += part[k * p.stride4 + i]; }
  ${bias ? "if (i < p.n4) { dw[i] = s; } else { db[i - p.n4] = s; }" : "dw[i] = s;"}
}`;

const DBIAS_WGSL = `
@group(0) @binding(0) var<storage, read> dy: array<f32>;
@group(0) @binding(1) var<storage, read_write> db: array<f32>;
struct P { B: u32, C: u32, HW: u32 }
@group(0) @binding(2) var<uniform> p: P;
var<workgroup> sh: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u) {
  let co = wg.x;
  var s = 0.0;
  for (var b = 0u; b < p.B; b++) {
    let base = (b * p.C + co) * p.HW;
    for (var i = li; i < p.HW; i += 256u) { s += dy[base + i]; }
  }
  sh[li] = s;
  workgroupBarrier();
  for (var w = 128u; w > 0u; w >>= 1u) {
    if (li < w) { sh[li] += sh[li + w]; }
    workgroupBarrier();
  }
  if (li == 0u) { db[co] = sh[0]; }
}`;

/**
 * One output phase of a strided conv's dx along one axis. dx[i] sums dy[oh] w[kh] over
 * oh*S + kh - pad = i, so the inputs i = S*m + r of phase r see only the taps kh = k0 + S*t with
 * k0 = (r + pad) mod S, and then oh = m + c - t, c = (r + pad - k0) / S: a stride-1 correlation of
 * dy (offset by `off` = n-1-c, possibly negative) with the n taps reversed, over `len` outputs.
 * Computing each phase apart skips the (S-1)/S of the FMAs that the dilated form spends on the
 * zeros between dy's pixels.
 */
function dxPhase(r: number, S: number, pad: number, K: number, extent: number): DxPhase {
  const k0 = (r + pad) % S;
  const n = k0 < K ? Math.ceil((K - k0) / S) : 0;
  const c = (r + pad - k0) / S;
  return { k0, n, off: n - 1 - c, len: Math.ceil((extent - r) / S) };
}

/** One axis's output phase of a strided conv's dx ({@link dxPhase}). */
interface DxPhase {
  /** First kernel tap of the phase. */
  k0: number;
  /** Taps of the phase (every S-th from k0). */
  n: number;
  /** dy's offset in the phase's stride-1 correlation. */
  off: number;
  /** Outputs of the phase. */
  len: number;
}

/** dx of a conv with stride S > 1 (on the upsampled grid): S*S stride-1 phase convs, see {@link dxPhase}. */
function dxStrided(
  gpu: Gpu,
  w: Tensor,
  dy: Tensor,
  g: Geom,
  tileOpt?: ConvTile,
  flat?: Staged,
): Tensor {
  const { B, Cin, Cout, KH, KW, S, Ho, Wo, Hu, Wu } = g;
  const rows = [...Array(S).keys()].map((r) => dxPhase(r, S, g.pt, KH, Hu));
  const cols = [...Array(S).keys()].map((r) => dxPhase(r, S, g.pl, KW, Wu));
  // A phase without taps (a kernel smaller than the stride) is zero: start from zeros then.
  const empty = [...rows, ...cols].some((p) => p.n === 0 && p.len > 0);
  const dxu = empty ? gpu.zeros([B, Cin, Hu, Wu]) : gpu.empty([B, Cin, Hu, Wu]);
  // One stride-1 conv of dy for row phase `rh`: `cols` output columns of `KW` taps read from
  // window column offL on, stored from column c (every S-th, or both phases interleaved).
  const phaseConv = (
    rh: number,
    ph: DxPhase,
    taps: WeightTaps,
    tile: ConvTile,
    o: { cols: number; KW: number; offL: number; c: number; colPh?: readonly ColPhase[] },
  ) => {
    validTile(tile);
    const ws = stageWeights(gpu, w, tile.cot, taps);
    convCore(
      gpu,
      "conv2dBackward",
      dy,
      { B, C: Cout, H: Ho, W: Wo },
      ws,
      undefined,
      undefined,
      dxu,
      { Cout: Cin, Ho: ph.len, Wo: o.cols, KH: ph.n, KW: o.KW, S: 1 },
      { offT: ph.off, offL: o.offL, up: 1, flat },
      tile,
      { S, H: Hu, W: Wu, r: rh, c: o.c },
      undefined,
      undefined,
      o.colPh,
    );
    texPool.put(gpu, ws.tex);
  };
  const pair = pairCols(gpu, g, rows, cols);
  for (const [rh, ph] of rows.entries()) {
    if (pair && ph.n > 0 && ph.len > 0) {
      // Both column phases at once: window column j + shift is dy column j + shift - off.
      const off = Math.max(...cols.map((p) => p.off));
      const colPh = cols.map((p) => ({ shift: off - p.off, n: p.n }));
      const len = cols[0].len;
      phaseConv(
        rh,
        ph,
        {
          mode: "dx",
          KHs: ph.n,
          KWs: cols[0].n + cols[1].n,
          k0h: ph.k0,
          k0w: 0,
          st: S,
          cols: cols.map((p) => ({ k0: p.k0, n: p.n })),
        },
        tileOpt ?? pairTile(Cin, ph.len, len),
        {
          cols: len,
          KW: Math.max(...colPh.map((c) => c.shift + c.n)),
          offL: off,
          c: 0,
          colPh,
        },
      );
      continue;
    }
    for (const [rw, pw] of cols.entries()) {
      if (ph.n === 0 || pw.n === 0 || ph.len <= 0 || pw.len <= 0) continue;
      const taps = { mode: "dx", KHs: ph.n, KWs: pw.n, k0h: ph.k0, k0w: pw.k0, st: S } as const;
      const tile = tileOpt ?? conv2dTile(gpu, Cin, ph.len, pw.len, ph.n, pw.n, 1);
      phaseConv(rh, ph, taps, tile, { cols: pw.len, KW: pw.n, offL: pw.off, c: rw });
    }
  }
  return dxu;
}

/**
 * Whether {@link dxStrided} computes both column phases of a row phase in one kernel
 * ({@link FwdCfg.colPh}): stride 2, both phases with taps and the same even width (then each output
 * row is whole vec4s), input channels in quads and the staged taps in one weight band.
 */
function pairCols(
  gpu: Gpu,
  g: Geom,
  rows: DxPhase[],
  cols: DxPhase[],
): boolean {
  if (!conv2dTuning.dxPair || g.S !== 2 || g.Cin % 4 || g.KH * g.KW > 64) return false;
  const [c0, c1] = cols;
  if (c0.n === 0 || c1.n === 0 || c0.len !== c1.len || c0.len % 2 || g.Wu !== 2 * c0.len) {
    return false;
  }
  const max = gpu.limits.maxTextureDimension2D;
  return rows.every((ph) => g.Cout <= Math.floor(max / (ph.n * (c0.n + c1.n))));
}

/**
 * The tile of a {@link pairCols} kernel with `Ho` rows of `Wo` pixels per column phase: 8 channels,
 * 2 rows, 8 pixels of each phase (16 output columns), fewer rows where lanes would idle (as
 * {@link conv2dTile}). Measured (one-off script, timestamp profile, best of 3): tiny's 64-channel dx from 32x32 (8
 * images) 3.0 ms in the two kernels against 3.9-4.5 for 4x8x4, 8x4x4, 8x4x8, 16x2x4, 16x2x8 and
 * 8x2x16; `lvm`'s 128 channels at 256x256 86-90 ms against 90-101 for those and 8x1x16.
 */
function pairTile(Cout: number, Ho: number, Wo: number): ConvTile {
  const cot = Cout <= 4 ? 4 : 8, px = Wo <= 4 ? 4 : 8;
  let py = Math.min(2, 2 ** Math.floor(Math.log2(Math.max(1, Ho))));
  const coBlocks = Math.ceil(Cout / cot);
  const lanes = (py: number) => nextPow2(Math.ceil(Ho / py) * Math.ceil(Wo / px)) * coBlocks;
  while (py > 1 && lanes(py) < WG) py /= 2;
  return { cot, py, px };
}

/** Whether {@link upsampledDx} takes the input gradient: the decoder's upsample (3x3, pad 1, 2x). */
function useUpDx(g: Geom): boolean {
  return g.up === 2 && g.S === 1 && g.KH === 3 && g.KW === 3 &&
    g.pt === 1 && g.pb === 1 && g.pl === 1 && g.pr === 1;
}

// Taps of the 3x3 kernel that offset t of the combined 4x4 kernel sums (see upsampledDx).
const UP_DX_TAPS = [[2], [1, 2], [0, 1], [0]];

/** w (Cout, Cin, 3, 3) -> the combined, transposed kernel (Cin, Cout, 4, 4) of {@link upsampledDx}. */
const UP_DX_W_WGSL = (() => {
  const L: string[] = [];
  for (let th = 0; th < 4; th++) {
    for (let tw = 0; tw < 4; tw++) {
      const terms = UP_DX_TAPS[th].flatMap((kh) => UP_DX_TAPS[tw].map((kw) => `v${kh * 3 + kw}`));
      L.push(`  out[i * 16u + ${th * 4 + tw}u] = ${terms.join(" + ")};`);
    }
  }
  return `
@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct P { Cout: u32, Cin: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 64u + li;  // ci * Cout + co
  if (i >= p.Cin * p.Cout) { return; }
  let ci = i / p.Cout;
  let co = i % p.Cout;
  let b = (co * p.Cin + ci) * 9u;
${[...Array(9).keys()].map((k) => `  let v${k} = w[b + ${k}u];`).join("\n")}
${L.join("\n")}
}`;
})();

/**
 * The input gradient of a 3x3 pad-1 conv on a nearest-2x-upsampled input, on the source grid: one
 * stride-2 4x4 conv of dy instead of a 3x3 conv on the upsampled grid and a 2x2 sum. Source pixel s
 * (per axis) is read by upsampled pixels 2s + d (d = 0, 1), which output q reads through tap
 * k = 2s + d + 1 - q, so dx[s] = sum over offsets t = 0..3 of W'[t] dy[2s + t - 1] with W'[t] the
 * sum of the taps UP_DX_TAPS[t] (w2, w1 + w2, w0 + w1, w0): 16 products per source pixel and
 * channel pair instead of 36 (9 on each of 4 upsampled pixels). Measured (best of 6 x 4, one
 * process, alternating): 8 x 64 channels from 16x16, 13.9 -> 5.4 ms; 8 x 128 from 8x8, 13.1 -> 6.3.
 */
function upsampledDx(gpu: Gpu, w: Tensor, dy: Tensor): Tensor {
  const [Cout, Cin] = w.shape;
  const wc = gpu.empty([Cin, Cout, 4, 4]);
  gpu.dispatch(
    gpu.pipeline("conv2d_up_dx_w", UP_DX_W_WGSL),
    [w, wc],
    new Params().u32(Cout).u32(Cin),
    grid(Math.ceil((Cin * Cout) / 64)),
  );
  const dx = conv2d(gpu, dy, wc, undefined, { stride: 2, pad: 1 });
  wc.release();
  return dx;
}

/**
 * Backward of {@link conv2d}: given x (B,Cin,H,W), w (Cout,Cin,KH,KW) and dy (B,Cout,Ho,Wo), returns
 * dx (B,Cin,H,W), dw (Cout,Cin,KH,KW) and dbias (Cout) (sums over batch and pixels, deterministic, no
 * float atomics). The options must be the forward's (stride, pad, upsample2x). A fused residual's
 * gradient is dy itself.
 */
export function conv2dBackward(
  gpu: Gpu,
  x: Tensor,
  w: Tensor,
  dy: Tensor,
  opts: Conv2dBackwardOptions = {},
): Conv2dGrads {
  const fn = "conv2dBackward";
  check4d(fn, "x", x, "(B,Cin,H,W)");
  check4d(fn, "w", w, "(Cout,Cin,KH,KW)");
  const g = geometry(fn, x.shape, w.shape, opts);
  const { B, Cin, Cout, KH, KW, S, Ho, Wo } = g;
  check(fn, "dy", dy, [B, Cout, Ho, Wo]);
  if (opts.prologue) check(fn, "prologue.ss", opts.prologue.ss, [B * Cin, 2]);
  const grads: Conv2dGrads = { dx: null, dw: null, dbias: null };
  let dyFlat: Staged | null = null;
  // The implicit GEMMs (conv2d_gemm.ts) on the gpu kind or where asked for; a forced register tile
  // or Winograd (`w43: true`) keeps the texture kernels, as in the forward.
  const gemmBwd = (conv2dTuning.gemmBackward ?? (gpu.kind === "gpu" && !conv2dTuning.w43)) &&
    !opts.tile;

  // The upsampled conv's dx on the source grid (unless a tile or Winograd is forced).
  const upDx = useUpDx(g) && !gemmBwd && !opts.tile && conv2dTuning.upDx && !conv2dTuning.w43;
  if (opts.dx !== false && upDx) {
    grads.dx = upsampledDx(gpu, w, dy);
  } else if (opts.dx !== false) {
    // dy unpadded from one copy, which the dx kernels (a strided conv's phase convs too) and the
    // weight gradient read (flatPlanes).
    const stageDyFlat = () =>
      conv2dTuning.flatDx && flatFits(gpu, B * Cout, Ho, Wo)
        ? flatPlanes(gpu, dy, B * Cout, Ho, Wo)
        : null;
    if (S > 1 && !gemmBwd) dyFlat = stageDyFlat();
    const dxu = S === 1
      ? gpu.empty([B, Cin, g.Hu, g.Wu])
      : dxStrided(gpu, w, dy, g, opts.tile, dyFlat ?? undefined);
    if (S === 1 && gemmBwd) gemmConvDx(gpu, w, dy, dxu, g);
    else if (S === 1) {
      // dx = conv(dy padded by (K-1-pad), rot180(W)^T), output extent = the (upsampled) input.
      // The dx conv runs on the upsampled grid: a plain conv there (the upsampled rule is the
      // forward's).
      const wino = opts.tile ? null : winoFor({ ...g, up: 1 }, Cout, Cin, g.Hu, g.Wu);
      const w43 = !!wino &&
        w43Conv(
          gpu,
          dy,
          { B, C: Cout, H: Ho, W: Wo },
          w,
          true,
          undefined,
          undefined,
          dxu,
          {
            Cout: Cin,
            Ho: g.Hu,
            Wo: g.Wu,
          },
          { offT: KH - 1 - g.pt, offL: KW - 1 - g.pl, up: 1 },
          wino,
        );
      if (!w43) {
        const tile: ConvTile = opts.tile ?? conv2dTile(gpu, Cin, g.Hu, g.Wu, KH, KW, 1, B);
        validTile(tile);
        const ws = rowsFit(gpu, w)
          ? stageWeightRows(gpu, w)
          : stageWeights(gpu, w, tile.cot, rotated(w));
        const offT = KH - 1 - g.pt, offL = KW - 1 - g.pl;
        dyFlat = stageDyFlat();
        convCore(
          gpu,
          fn,
          dy,
          { B, C: Cout, H: Ho, W: Wo },
          ws,
          undefined,
          undefined,
          dxu,
          { Cout: Cin, Ho: g.Hu, Wo: g.Wu, KH, KW, S: 1 },
          { offT, offL, up: 1, flat: dyFlat ?? undefined },
          tile,
        );
        texPool.put(gpu, ws.tex);
      }
    }
    if (g.up === 1) grads.dx = dxu;
    else {
      grads.dx = upsampleNearest2xBackward(gpu, dxu);
      dxu.release();
    }
  }

  const wantBias = opts.dbias !== false;
  if (opts.dw !== false && gemmBwd) {
    // The GEMM gathers x in place: with a prologue it reads the activation written out.
    const a = opts.prologue ? applyPrologue(gpu, x, opts.prologue) : x;
    grads.dw = gemmConvDw(gpu, a, dy, g);
    if (a !== x) a.release();
  } else if (opts.dw !== false && useDwMatmul(gpu, g, opts)) {
    const a = opts.prologue ? applyPrologue(gpu, x, opts.prologue) : x;
    const r = dwByMatmul(gpu, a, dy, g, wantBias);
    grads.dw = r.dw;
    grads.dbias = r.dbias;
    if (a !== x) a.release();
  } else if (opts.dw !== false) {
    const r = convDw(gpu, x, dy, g, wantBias, opts.stash, opts.prologue, dyFlat);
    grads.dw = r.dw;
    grads.dbias = r.dbias;
  }
  if (dyFlat) flatPool.put(gpu, dyFlat.tex);
  if (wantBias && !grads.dbias) {
    const db = gpu.empty([Cout]);
    gpu.dispatch(
      gpu.pipeline("conv2d_dbias", DBIAS_WGSL),
      [dy, db],
      new Params().u32(B).u32(Cout).u32(Ho * Wo),
      [Cout, 1, 1],
    );
    grads.dbias = db;
  }
  opts.stash?.release(gpu);
  return grads;
}

/**
 * Texels per texture row for dy copied flat ({@link flatDy}): 64 (1 KiB rows; doubled while the
 * rows would not fit one texture), or 0 where a row of `W4` texels could straddle texture rows
 * (W4 not dividing it) or the tensor does not fit: dy is then staged by the pad pass.
 */
function flatWidth(gpu: Gpu, n4: number, W4: number): number {
  if (!conv2dTuning.copyStage) return 0;
  const max = gpu.limits.maxTextureDimension2D;
  let tw = 64;
  while (tw < max && Math.ceil(n4 / tw) > max) tw *= 2;
  return tw % W4 === 0 && Math.ceil(n4 / tw) <= max ? tw : 0;
}

/**
 * dy texels [t0, t0 + n4) as they lie in memory, TW per texture row: buffer-to-texture copies (a
 * memcpy in lavapipe) in place of the pad pass, whose image stores go lane by lane. The weight
 * gradient reads dy unpadded, so any width whose rows are whole texels can be copied this way
 * (the planar copy in {@link stage} needs 256-byte plane rows: from 64 pixels). The tiny tokenizer
 * step (a batch of 8 at 32x32, 16x16, 8x8): 38 of its 630 dispatches become copies; 601 -> 587 ms
 * mean, 543 -> 499 best (one process, 8 rounds of 3 steps in ABBA order: a copy is a single-threaded
 * memcpy between dispatches, a pad pass runs on every core, so the gain is small).
 */
function flatDy(gpu: Gpu, dy: Tensor, t0: number, n4: number, TW: number): Staged {
  const rows = Math.floor(n4 / TW), rest = n4 - rows * TW;
  const tex = takeTexture(gpu, TW, rows + (rest ? 1 : 0));
  const src = { offset: t0 * 16, bytesPerRow: TW * 16 };
  if (rows) gpu.copyToTexture(dy, src, { texture: tex }, [TW, rows, 1]);
  if (rest) {
    gpu.copyToTexture(
      dy,
      { ...src, offset: (t0 + rows * TW) * 16 },
      { texture: tex, origin: [0, rows, 0] },
      [rest, 1, 1],
    );
  }
  // The layout is not read for a flat dy (DwCfg.dFlat); a placeholder of the right size.
  return { tex, view: textureView(tex), lay: { P: 1, Wp4: TW, Hp: rows + 1, bands: 1 } };
}

/**
 * A source plane's size (H rows of W4 texels) and where it sits in the padded plane a kernel reads
 * (offT rows and offL pixels in): what {@link PAD_ROW_WGSL} and the flat read ({@link FwdCfg.xFlat})
 * bake in.
 */
interface PlaneGeom {
  H: number;
  W4: number;
  offT: number;
  offL: number;
}

/** A kernel's pipeline-key field for x read through `g` (its size and padding are baked in). */
function flatKey(g: PlaneGeom): string {
  return `x${g.H}x${g.W4}+${g.offT}+${g.offL}`;
}

/**
 * Textures of {@link flatPlanes}: only ever written in their first H*W/4 columns, so the 16 after
 * them keep the zeros a new texture starts with (WebGPU zero-initializes resources).
 */
const flatPool = new TexturePool("conv2d flat");

/** Whether {@link flatPlanes} takes `planes` planes of H x W. */
function flatFits(gpu: Gpu, planes: number, H: number, W: number): boolean {
  const max = gpu.limits.maxTextureDimension2D;
  const HW4 = (H * W) / 4;
  return W % 4 === 0 && HW4 % 16 === 0 && HW4 + 16 <= max && planes <= max;
}

/**
 * All planes of `src` (planes of H x W) as texture rows, texel y*W/4 + q = the plane's pixels
 * 4q..4q+3 of row y, with zero texels from column H*W/4: one buffer-to-texture copy (a memcpy in
 * lavapipe) where the pad pass ({@link stage}) makes a padded copy lane by lane. The forward kernel
 * reads it unpadded ({@link FwdCfg.xFlat}: a tap outside the plane reads the zero column), and the
 * weight gradient reads it as its flat dy ({@link flatDy}'s layout with one plane per row). For the
 * stride-1 dx: its pad pass (0.25-0.9 ms per call at tiny's 8 x 64-128 channels of 8x8 to 32x32,
 * the image stores lane by lane) against one more texel per window row in the dx kernel (4 for 3
 * with 8-pixel tiles). Measured (one-off script, the tiny tokenizer step alternating per step in
 * one process, 24 steps each): median 435.7 -> 421.3 ms, 520 -> 487 dispatches per step.
 */
function flatPlanes(gpu: Gpu, src: Tensor, planes: number, H: number, W: number): Staged {
  const HW4 = (H * W) / 4;
  const max = gpu.limits.maxTextureDimension2D;
  const tex = flatPool.take(gpu, HW4 + 16, Math.min(max, Math.ceil(planes / 64) * 64));
  gpu.copyToTexture(src, { offset: 0, bytesPerRow: HW4 * 16, rowsPerImage: planes }, {
    texture: tex,
  }, [HW4, planes, 1]);
  return { tex, view: textureView(tex), lay: { P: 1, Wp4: HW4, Hp: planes, bands: 1 } };
}

/**
 * x staged unpadded for a kernel that reads it through {@link PlaneGeom} (all of its planes in
 * {@link flatPlanes}' layout), or null where they do not fit it (the caller pads). `put` gives the
 * texture back.
 */
function unpaddedX(
  gpu: Gpu,
  x: Tensor,
  g: Geom,
): { st: Staged; geom: PlaneGeom; put: () => void } | null {
  if (!conv2dTuning.flatX || g.up !== 1 || !flatFits(gpu, g.B * g.Cin, g.H, g.W)) return null;
  const st = flatPlanes(gpu, x, g.B * g.Cin, g.H, g.W);
  const geom = { H: g.H, W4: g.W / 4, offT: g.pt, offL: g.pl };
  return { st, geom, put: () => flatPool.put(gpu, st.tex) };
}

/**
 * Whether a conv's weight gradient goes through {@link dwByMatmul}: a 1x1 kernel at stride 1 with
 * no padding or upsampling (the GEMM itself), on the cpu kind (the gpu kind has its implicit GEMM),
 * for a batch of 2 or more. Measured against the conv kernel ({@link convDw}) as the ratio to the
 * matmul of the bench's `vs matmul` row in the same process, median of 5-10 alternating rounds
 * (one-off script):
 * tiny's 128 -> 64 at 16x16 (batch 8) 0.71 -> 0.87, 64 -> 128 at 8x8 0.71 -> 0.72, 32 -> 32 at
 * 8x8 2.96 -> 3.73; batch 2 at 32x32 0.68 -> 1.00, batch 4 128 -> 256 at 64x64 0.70 -> 1.21. A
 * batch of one is one long product with no sum to split it across the cores: 128 -> 256 at 64x64
 * 0.88 -> 0.52, 512 -> 256 at 16x16 0.74 -> 0.64 (the conv kernel slices its pixels).
 */
function useDwMatmul(gpu: Gpu, g: Geom, opts: Conv2dBackwardOptions): boolean {
  const plain = g.KH === 1 && g.KW === 1 && g.S === 1 && g.up === 1 && g.pt === 0 &&
    g.pl === 0 && g.Ho === g.H && g.Wo === g.W;
  if (!plain || opts.tile) return false;
  if (conv2dTuning.dwMatmul !== null) return conv2dTuning.dwMatmul;
  return gpu.kind === "cpu" && g.B >= 2;
}

/**
 * A 1x1 conv's dW = sum over the batch of dY_b X_b^T ((Cout, HW) x (HW, Cin)): one batched
 * {@link matmul} (the batch's products side by side) and a sum of the B products.
 */
function dwByMatmul(
  gpu: Gpu,
  x: Tensor,
  dy: Tensor,
  g: Geom,
  bias: boolean,
): { dw: Tensor; dbias: Tensor | null } {
  const { B, Cin, Cout } = g;
  const HW = g.H * g.W;
  const dw = gpu.empty([Cout, Cin, 1, 1]);
  const a = dy.view([B, Cout, HW]), b = x.view([B, Cin, HW]);
  if (B === 1) {
    matmul(gpu, a, b, { transB: true, out: dw });
    return { dw, dbias: null };
  }
  const part = matmul(gpu, a, b, { transB: true }); // (B, Cout, Cin)
  const n = Cout * Cin;
  let db: Tensor | null = null; // else conv2dBackward's dbias pass
  if (n % 4 === 0 && HW % 4 === 0) {
    db = bias ? gpu.empty([Cout]) : null;
    const lanes = (bias ? Cout : 0) + n / 4;
    gpu.dispatch(
      gpu.pipeline(`conv2d_sum_batch4|${bias}`, () => SUM_BATCH4_WGSL(bias)),
      [part, dw, ...(db ? [dy, db] : [])],
      new Params().u32(n / 4).u32(B).u32(bias ? Cout : 0).u32(HW / 4),
      grid(Math.ceil(lanes / 64)),
    );
  } else {
    gpu.dispatch(
      gpu.pipeline("conv2d_sum_slices", SUM_SLICES_WGSL),
      [part, dw],
      new Params().u32(n).u32(B).u32(n).u32(0),
      grid(Math.ceil(n / 256)),
    );
  }
  part.release();
  return { dw, dbias: db };
}

/**
 * dW = the sum of the batch's B products (vec4 lanes), and with `bias` dbias[co] = the sum of dy
 * over the batch and pixels, one lane per channel ahead of dW's lanes (its lanes run longest).
 */
const SUM_BATCH4_WGSL = (bias: boolean) => `
@group(0) @binding(0) var<storage, read> part: array<vec4f>;
@group(0) @binding(1) var<storage, read_write> dw: array<vec4f>;
${
  bias
    ? `@group(0) @binding(2) var<storage, read> dy: array<vec4f>;
@group(0) @binding(3) var<storage, read_write> db: array<f32>;`
    : ""
}
struct P { n4: u32, B: u32, C: u32, HW4: u32 }
@group(0) @binding(${bias ? 4 : 2}) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 64u + li;
  if (i < p.C) {${
  bias
    ? `
    var t = vec4f(0.0);
    for (var b = 0u; b < p.B; b++) {
      let base = (b * p.C + i) * p.HW4;
      for (var q = 0u; q < p.HW4; q++) { t += dy[base + q]; }
    }
    db[i] = t.x + t.y + t.z + t.w;`
    : ""
}
    return;
  }
  let j = i - p.C;
  if (j >= p.n4) { return; }
  var s = vec4f(0.0);
  for (var k = 0u; k < p.B; k++) { s += part[k * p.n4 + j]; }
  dw[j] = s;
}`;

/** dW (and, with `bias`, dbias, summed from the same dy texels) by {@link dwWgsl}. */
function convDw(
  gpu: Gpu,
  x: Tensor,
  dy: Tensor,
  g: Geom,
  bias: boolean,
  stash?: Conv2dStash,
  prologue?: Conv2dPrologue,
  dyFlat?: Staged | null,
): { dw: Tensor; dbias: Tensor | null } {
  const { B, Cin, Cout, KH, KW, S, Ho, Wo } = g;
  const tn = conv2dTuning.dw ?? {};
  // Measured on lavapipe (GFLOP per CPU-second beside the tex matmul at the same FLOPs): cot 8 x
  // cit 2 (144 accumulators for 3x3) and two rows per segment; 16x1, 4x4, 4x2 ran slower. Segments
  // of 4 pixels (one dy texel per row): 7-12% faster than 8 at 64 channels 32x32 (batch 8), 256 at
  // 64x64 and 512 at 32x32, the same at 128 on 256x256 (wall, one process, alternating); a 1x1
  // kernel keeps 8 (256 -> 512 at 32x32: 9.0 vs 10.6 ms).
  const px = tn.px ?? (KH * KW === 1 && Wo > 4 ? 8 : 4);
  // A strided conv's small output (tiny's 16x16 and 8x8 downsamples) takes one row per segment:
  // 8 x 64 channels from 32x32 40.7 -> 42.8-44.5 GFLOP/s, from 16x16 27.2 -> 28.4 (best of 5 x 60,
  // alternating in one process); from 256x256 (128 channels) two rows stay faster (49.7 vs 45.8).
  const py = tn.py ?? (Ho % 2 === 0 && !(S > 1 && Ho * Wo < 32 * 32) ? 2 : 1);
  // A strided conv's large dW takes 16 output channels (its x rows are read for fewer dy texels:
  // 128 channels from 256x256, 137 -> 119 ms; the same on tiny's 16x16 outputs).
  const cot = tn.cot ??
    (Cout <= 4 ? 4 : S > 1 && gpu.kind === "cpu" && Ho * Wo >= 32 * 32 && Cout > 8 ? 16 : 8);
  // A 1x1 kernel has 9x fewer taps: 8 input channels keep the work per segment up (8x8: 1.7x
  // faster than 8x2 at 128->64 channels).
  const cit = tn.cit ?? (Cin === 1 ? 1 : KH * KW === 1 ? Math.min(8, Cin) : 2);
  if (Ho % py !== 0) throw new RangeError(`conv2d dw: py ${py} must divide Ho ${Ho}`);
  const cGroups = Math.ceil(Cin / cit);
  const nTx = Math.ceil(Wo / px), nTy = Ho / py;
  // x planes as the forward reads them, for nTx segments of px pixels per output row.
  const xHp = (Ho - 1) * S + KH;
  const xWp4 = ((nTx - 1) * px * S) / 4 + texelsPerRow(px, S, KW);
  const dWp4 = (nTx * px) / 4;
  const bc = Math.min(
    batchChunk("conv2dBackward", gpu, B, Cin, xHp, xWp4),
    batchChunk("conv2dBackward", gpu, B, Cout, Ho, dWp4),
  );
  const coBlocks = Math.ceil(Cout / cot);
  const T = Math.min(WG, Math.max(8, nextPow2(cGroups)));
  const groups = Math.ceil(cGroups / T) * Math.ceil(coBlocks / (WG / T));
  const segs = Math.min(bc, B) * nTy * nTx;
  // Split the segments so that there are enough workgroups to keep every core (or SM) busy.
  const target = gpu.kind === "cpu" ? 16 : 256;
  const slices = Math.max(1, Math.min(segs, 64, Math.ceil(target / groups)));
  const segsPer = Math.ceil(segs / slices);
  const nSlices = Math.ceil(segs / segsPer);
  const chunks = Math.ceil(B / bc);
  const total = chunks * nSlices;
  const n = Cout * Cin * KH * KW;
  const n2 = n + (bias ? Cout : 0);
  const dw = gpu.empty([Cout, Cin, KH, KW]);
  const dbias: Tensor | null = bias ? gpu.empty([Cout]) : null;
  // One slice of one chunk (e.g. tiny's 8x8 level: 16 workgroups already): its sums are the
  // gradients, written in place (no summing pass).
  const direct = total === 1;
  const part = direct ? dw : gpu.empty([total, n2]);
  for (let c = 0; c < chunks; c++) {
    const b0 = c * bc;
    const nb = Math.min(bc, B - b0);
    // The forward's staged x when it covers these planes (the same x, padding and batch, a plane
    // at least as large): the kernel takes the layout as given.
    const st = stash?.staged;
    const kept = st && chunks === 1 && st.x === x && g.up === 1 &&
        st.offT === g.pt && st.offL === g.pl && st.lay.Hp >= xHp && st.lay.Wp4 >= xWp4 &&
        st.pro?.ss === prologue?.ss && !!st.pro?.silu === !!prologue?.silu
      ? st
      : null;
    // Else x unpadded from one copy (no prologue to apply; all of the batch in one chunk).
    const xFlat = !kept && !prologue && chunks === 1 ? unpaddedX(gpu, x, g) : null;
    const xl = kept ? kept.lay : xFlat ? xFlat.st.lay : planeLayout(gpu, nb * Cin, xHp, xWp4)!;
    const xGeom = xFlat?.geom ?? null;
    const dl = planeLayout(gpu, nb * Cout, Ho, dWp4)!;
    // The dx's flat dy (one plane per texture row) when it holds these planes as this kernel reads them.
    const shared = dyFlat && chunks === 1 && dWp4 * 4 === Wo ? dyFlat : null;
    const dFlat = shared
      ? Ho * dWp4
      : dWp4 * 4 === Wo
      ? flatWidth(gpu, nb * Cout * Ho * dWp4, dWp4)
      : 0;
    const storageRead = gpu.kind === "cpu";
    const shape = { cot, cit, px, py, KH, KW, S, bias, nTx, nTy };
    const cfg: DwCfg = { ...shape, xl, dl, dFlat, direct, storageRead, xFlat: xGeom };
    const key = [
      "conv2d_dw",
      direct ? "direct" : "parts",
      storageRead,
      ...Object.values(shape),
      ...(xGeom ? [flatKey(xGeom)] : [xl.P, xl.Wp4, xl.Hp]),
    ]
      .concat(dFlat ? [`flat${dFlat}`] : [dl.P, dl.Wp4, dl.Hp]).join("|");
    const pipe = gpu.pipeline(key, () => dwWgsl(cfg));
    const xs = kept ?? xFlat?.st ??
      stage(gpu, x, b0 * Cin, nb * Cin, g.H, g.W, xl, g.pt, g.pl, g.up, prologue);
    const ds = shared ??
      (dFlat
        ? flatDy(gpu, dy, b0 * Cout * Ho * dWp4, nb * Cout * Ho * dWp4, dFlat)
        : stage(gpu, dy, b0 * Cout, nb * Cout, Ho, Wo, dl, 0, 0));
    const cs = nb * nTy * nTx;
    gpu.dispatch(
      pipe,
      [xs.view, ds.view, part, ...(direct && dbias ? [dbias] : [])],
      new Params().u32(Cin).u32(Cout).u32(cs).u32(segsPer).u32(coBlocks).u32(c * nSlices).u32(T)
        .u32(WG / T),
      [Math.ceil(cGroups / T), Math.ceil(coBlocks / (WG / T)), nSlices],
    );
    if (xFlat) xFlat.put();
    else if (!kept) texPool.put(gpu, xs.tex); // a kept one goes back with the stash
    if (!shared) texPool.put(gpu, ds.tex); // a shared one goes back after the dx's call
  }
  // Every slice of every chunk writes its partial sums (zeros for an empty slice of a short chunk);
  // they are summed in a fixed order: deterministic, no float atomics.
  const sum = (out: Tensor, N: number, off: number) =>
    gpu.dispatch(
      gpu.pipeline("conv2d_sum_slices", SUM_SLICES_WGSL),
      [part, out],
      new Params().u32(N).u32(total).u32(n2).u32(off),
      grid(Math.ceil(N / 256)),
    );
  if (direct) return { dw, dbias };
  if (n % 4 === 0 && n2 % 4 === 0) {
    gpu.dispatch(
      gpu.pipeline(`conv2d_sum_slices4|${bias}`, () => SUM_SLICES4_WGSL(bias)),
      [part, dw, ...(dbias ? [dbias] : [])],
      new Params().u32(n2 / 4).u32(total).u32(n2 / 4).u32(n / 4),
      grid(Math.ceil(n2 / 4 / 64)),
    );
  } else {
    sum(dw, n, 0);
    if (dbias) sum(dbias, Cout, n);
  }
  part.release();
  return { dw, dbias };
}

// ---------------------------------------------------------------------------------------------------
// CPU references (direct loops, f64 accumulation).

/** Shapes and options of a CPU reference conv. */
export interface Conv2dCpuArgs extends Conv2dOptions {
  /** x shape (B, Cin, H, W). */
  xShape: readonly number[];
  /** w shape (Cout, Cin, KH, KW). */
  wShape: readonly number[];
}

/**
 * Calls `tap(xi, wi)` for every (x index, w index) pair that output (b, co, oh, ow) sums, in the
 * order ci, kh, kw (padding, stride and the nearest-neighbour upsample applied).
 */
function taps(
  g: ReturnType<typeof geometry>,
  b: number,
  co: number,
  oh: number,
  ow: number,
  tap: (xi: number, wi: number) => void,
): void {
  const { Cin, H, W, KH, KW, S, pt, pl, up, Hu, Wu } = g;
  for (let ci = 0; ci < Cin; ci++) {
    for (let kh = 0; kh < KH; kh++) {
      const yy = oh * S + kh - pt;
      if (yy < 0 || yy >= Hu) continue;
      for (let kw = 0; kw < KW; kw++) {
        const xx = ow * S + kw - pl;
        if (xx < 0 || xx >= Wu) continue;
        tap(
          ((b * Cin + ci) * H + Math.floor(yy / up)) * W + Math.floor(xx / up),
          ((co * Cin + ci) * KH + kh) * KW + kw,
        );
      }
    }
  }
}

/** CPU reference of {@link conv2d} (with optional bias and residual). Returns (B,Cout,Ho,Wo). */
export function conv2dCpu(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  a: Conv2dCpuArgs & { residual?: ArrayLike<number> },
): Float32Array {
  const g = geometry("conv2dCpu", a.xShape, a.wShape, a);
  const { B, Cout, Ho, Wo } = g;
  const out = new Float32Array(B * Cout * Ho * Wo);
  for (let b = 0; b < B; b++) {
    for (let co = 0; co < Cout; co++) {
      for (let oh = 0; oh < Ho; oh++) {
        for (let ow = 0; ow < Wo; ow++) {
          let s = 0;
          taps(g, b, co, oh, ow, (xi, wi) => (s += x[xi] * w[wi]));
          const o = ((b * Cout + co) * Ho + oh) * Wo + ow;
          out[o] = s + (bias ? bias[co] : 0) + (a.residual ? a.residual[o] : 0);
        }
      }
    }
  }
  return out;
}

/** CPU reference of {@link conv2dBackward}: the analytic gradients by direct loops. */
export function conv2dBackwardCpu(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  dy: ArrayLike<number>,
  a: Conv2dCpuArgs,
): { dx: Float32Array; dw: Float32Array; dbias: Float32Array } {
  const g = geometry("conv2dBackwardCpu", a.xShape, a.wShape, a);
  const { B, Cin, H, W, Cout, KH, KW, Ho, Wo } = g;
  const dx = new Float64Array(B * Cin * H * W);
  const dw = new Float64Array(Cout * Cin * KH * KW);
  const dbias = new Float64Array(Cout);
  for (let b = 0; b < B; b++) {
    for (let co = 0; co < Cout; co++) {
      for (let oh = 0; oh < Ho; oh++) {
        for (let ow = 0; ow < Wo; ow++) {
          const d = dy[((b * Cout + co) * Ho + oh) * Wo + ow];
          dbias[co] += d;
          taps(g, b, co, oh, ow, (xi, wi) => {
            dx[xi] += d * w[wi];
            dw[wi] += d * x[xi];
          });
        }
      }
    }
  }
  return { dx: Float32Array.from(dx), dw: Float32Array.from(dw), dbias: Float32Array.from(dbias) };
}
