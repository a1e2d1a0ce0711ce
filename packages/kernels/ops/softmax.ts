/**
 * Row softmax over the last dimension, f32: y = softmax(scale * x) with columns >= validCols
 * masked to probability 0, and its backward dx = scale * y * (dy - sum(dy * y)).
 *
 * The forward reads x twice, not three times: the first pass keeps a running max m and a running
 * sum s of exp(z - m), rescaling s whenever m grows ("online softmax", Milakov & Gimelshein 2018);
 * the second writes exp(z - m) / s. -inf logits (and masked columns) give exact zeros; a row with
 * no finite logit gives all zeros (PyTorch gives NaN there).
 *
 * Variants (per `gpu.kind`, overridable; see reduce.ts):
 * - "rows": one invocation per row, no barriers; the running (m, s) is kept per block of 64
 *   columns and merged into the row's, which bounds the rounding error of s.
 * - "tex" (cpu default when C % 4 == 0): "rows" reading x (and y, dy) as vec4 texels of a
 *   texture copy (`texelCopy`), writing vec4s; llvmpipe's storage loads are per-lane loops.
 * - "wg" (gpu default): one workgroup of 256 per row, strided loops, (m, s) pairs merged in a tree.
 * @module
 */
import { type Gpu, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { texelCopy, wgslTexel } from "./elementwise.ts";
import {
  checkF32,
  pickRowVariant,
  REDUCE_BLOCK,
  REDUCE_ROWS_WG,
  REDUCE_WG,
  type RowVariant,
  segmentGrid,
  WGSL_EXP_SUB,
  WGSL_LOWEST,
  wgslBlocks,
} from "./reduce.ts";

/**
 * WGSL for a row's running max `m` and sum `s` of exp(z - m) over j in [0, n), where `z(j)` is a
 * WGSL expression of `j`. Returns module-scope declarations and a body that declares `m` and `s`.
 * The "wg" body contains barriers, so it must run in uniform control flow with `li` the local
 * invocation index. Needs {@link WGSL_EXP_SUB} in the module. Used by softmax and cross-entropy.
 */
export function wgslOnlineMaxSum(
  variant: RowVariant,
  z: (j: string) => string,
  n: string,
): { decls: string; body: string } {
  if (variant !== "wg") {
    // "rows" form; the "tex" kernels use wgslOnlineMaxSum4 instead.
    return {
      decls: "",
      body: `var m = ${WGSL_LOWEST};
  var s = 0.0;
  for (var b = 0u; b < ${n}; b += ${REDUCE_BLOCK}u) {
    let be = min(b + ${REDUCE_BLOCK}u, ${n});
    var bm = ${WGSL_LOWEST};
    var bs = 0.0;
    for (var j = b; j < be; j++) {
      let zj = ${z("j")};
      let nm = max(bm, zj);
      bs = bs * exp_sub(bm, nm) + exp_sub(zj, nm);
      bm = nm;
    }
    let nm = max(m, bm);
    s = s * exp_sub(m, nm) + bs * exp_sub(bm, nm);
    m = nm;
  }`,
    };
  }
  return {
    decls: `var<workgroup> shm: array<f32, ${REDUCE_WG}>;
var<workgroup> shs: array<f32, ${REDUCE_WG}>;`,
    body: `var m = ${WGSL_LOWEST};
  var s = 0.0;
  for (var j = li; j < ${n}; j += ${REDUCE_WG}u) {
    let zj = ${z("j")};
    let nm = max(m, zj);
    s = s * exp_sub(m, nm) + exp_sub(zj, nm);
    m = nm;
  }
  shm[li] = m;
  shs[li] = s;
  for (var h = ${REDUCE_WG / 2}u; h > 0u; h >>= 1u) {
    workgroupBarrier();
    if (li < h) {
      let m1 = shm[li];
      let m2 = shm[li + h];
      let nm = max(m1, m2);
      shs[li] = shs[li] * exp_sub(m1, nm) + shs[li + h] * exp_sub(m2, nm);
      shm[li] = nm;
    }
  }
  workgroupBarrier();
  m = shm[0];
  s = shs[0];`,
  };
}

/**
 * WGSL for a row's sum of `term(j)` over j in [0, n) into a declared `acc` (blocked in "rows",
 * strided + tree in "wg", which needs `var<workgroup> sha: array<f32, 256>` from `decls`).
 */
export function wgslRowSum(
  variant: RowVariant,
  term: (j: string) => string,
  n: string,
): { decls: string; body: string } {
  if (variant !== "wg") {
    return {
      decls: "",
      body: `var acc = 0.0;
  ${
        wgslBlocks({
          from: "0u",
          to: n,
          block: REDUCE_BLOCK,
          init: "0.0",
          step: `part += ${term("j")};`,
          fold: "acc += part;",
        })
      }`,
    };
  }
  return {
    decls: `var<workgroup> sha: array<f32, ${REDUCE_WG}>;`,
    body: `var acc = 0.0;
  for (var j = li; j < ${n}; j += ${REDUCE_WG}u) { acc += ${term("j")}; }
  sha[li] = acc;
  for (var h = ${REDUCE_WG / 2}u; h > 0u; h >>= 1u) {
    workgroupBarrier();
    if (li < h) { sha[li] += sha[li + h]; }
  }
  workgroupBarrier();
  acc = sha[0];`,
  };
}

/**
 * The "tex" form of {@link wgslOnlineMaxSum}: `z4(j4)` is a vec4 WGSL expression of texel `j4`
 * (elements 4*j4 .. 4*j4+3 of the row); elements >= `n` are masked out.
 */
export function wgslOnlineMaxSum4(z4: (j4: string) => string, n: string): string {
  return `var m = ${WGSL_LOWEST};
  var s = 0.0;
  let n4 = (${n} + 3u) / 4u;
  for (var b = 0u; b < n4; b += ${REDUCE_BLOCK / 4}u) {
    let be = min(b + ${REDUCE_BLOCK / 4}u, n4);
    var bm = ${WGSL_LOWEST};
    var bs = 0.0;
    for (var j4 = b; j4 < be; j4++) {
      var zj = ${z4("j4")};
      if (j4 * 4u + 4u > ${n}) {
        zj = select(zj, vec4f(${WGSL_LOWEST}), vec4u(j4 * 4u) + vec4u(0u, 1u, 2u, 3u) >= vec4u(${n}));
      }
      let nm = max(bm, max(max(zj.x, zj.y), max(zj.z, zj.w)));
      let e = exp_sub4(zj, nm);
      bs = bs * exp_sub(bm, nm) + ((e.x + e.y) + (e.z + e.w));
      bm = nm;
    }
    let nm = max(m, bm);
    s = s * exp_sub(m, nm) + bs * exp_sub(bm, nm);
    m = nm;
  }`;
}

/** The "tex" form of {@link wgslRowSum}: `acc` = sum of the components of `term4(j4)`, j4 < n4. */
export function wgslRowSum4(term4: (j4: string) => string, n4: string): string {
  return `var acc = 0.0;
  ${
    wgslBlocks({
      from: "0u",
      to: n4,
      block: REDUCE_BLOCK / 4,
      init: "vec4f(0.0)",
      step: `part += ${term4("j4")};`,
      fold: "acc += (part.x + part.y) + (part.z + part.w);",
      j: "j4",
    })
  }`;
}

/**
 * WGSL prologue of a row kernel: `r` is the row, `first`/`step` the column loop start and stride,
 * `lead` whether this invocation writes the row's scalar results.
 */
export function wgslRowMain(variant: RowVariant, rowsName = "p.R"): string {
  const lane = variant !== "wg"; // "rows" and "tex": one invocation per row
  const wg = lane ? REDUCE_ROWS_WG : REDUCE_WG;
  const row = lane ? `${WG_INDEX} * ${REDUCE_ROWS_WG}u + li` : WG_INDEX;
  return `@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let r = ${row};
  if (r >= ${rowsName}) { return; } // "wg": r is uniform, so this return is too
  let first = ${lane ? "0u" : "li"};
  let step = ${lane ? "1u" : `${REDUCE_WG}u`};
  let lead = ${lane ? "true" : "li == 0u"};`;
}

/** WGSL: `vec4u` of the element indices of texel `j4` (4*j4 + 0..3). */
export const wgslLanes4 = (j4: string) => `(vec4u(${j4} * 4u) + vec4u(0u, 1u, 2u, 3u))`;

function forwardKernelTex(): string {
  const z4 = (j4: string) => `${wgslTexel("xt", `o4 + ${j4}`)} * p.scale`;
  return `@group(0) @binding(0) var xt: texture_2d<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<vec4f>;
struct P { R: u32, C: u32, valid: u32, scale: f32 }
@group(0) @binding(2) var<uniform> p: P;
${WGSL_EXP_SUB}
${wgslRowMain("tex")}
  let C4 = p.C / 4u;
  let o4 = r * C4;
  ${wgslOnlineMaxSum4(z4, "p.valid")}
  let inv = select(1.0 / s, 0.0, s == 0.0); // no finite logit: all zeros
  for (var j4 = 0u; j4 < C4; j4++) {
    let v = exp_sub4(${z4("j4")}, m) * inv;
    y[o4 + j4] = select(v, vec4f(0.0), ${wgslLanes4("j4")} >= vec4u(p.valid));
  }
}`;
}

function backwardKernelTex(): string {
  const yv = (j4: string) => wgslTexel("yt", `o4 + ${j4}`);
  const dyv = (j4: string) => wgslTexel("dyt", `o4 + ${j4}`);
  return `@group(0) @binding(0) var yt: texture_2d<f32>;
@group(0) @binding(1) var dyt: texture_2d<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<vec4f>;
struct P { R: u32, C: u32, scale: f32 }
@group(0) @binding(3) var<uniform> p: P;
${wgslRowMain("tex")}
  let C4 = p.C / 4u;
  let o4 = r * C4;
  ${wgslRowSum4((j4) => `${dyv(j4)} * ${yv(j4)}`, "C4")}
  for (var j4 = 0u; j4 < C4; j4++) {
    dx[o4 + j4] = p.scale * ${yv("j4")} * (${dyv("j4")} - acc);
  }
}`;
}

function forwardKernel(variant: RowVariant): string {
  if (variant === "tex") return forwardKernelTex();
  const ms = wgslOnlineMaxSum(variant, (j) => `x[o + ${j}] * p.scale`, "p.valid");
  return `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
struct P { R: u32, C: u32, valid: u32, scale: f32 }
@group(0) @binding(2) var<uniform> p: P;
${WGSL_EXP_SUB}
${ms.decls}
${wgslRowMain(variant)}
  let o = r * p.C;
  ${ms.body}
  let inv = select(1.0 / s, 0.0, s == 0.0); // no finite logit: all zeros
  for (var j = first; j < p.valid; j += step) { y[o + j] = exp_sub(x[o + j] * p.scale, m) * inv; }
  for (var j = p.valid + first; j < p.C; j += step) { y[o + j] = 0.0; }
}`;
}

function backwardKernel(variant: RowVariant): string {
  if (variant === "tex") return backwardKernelTex();
  const dot = wgslRowSum(variant, (j) => `dy[o + ${j}] * y[o + ${j}]`, "p.C");
  return `@group(0) @binding(0) var<storage, read> y: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> dx: array<f32>;
struct P { R: u32, C: u32, scale: f32 }
@group(0) @binding(3) var<uniform> p: P;
${dot.decls}
${wgslRowMain(variant)}
  let o = r * p.C;
  ${dot.body}
  for (var j = first; j < p.C; j += step) {
    dx[o + j] = p.scale * y[o + j] * (dy[o + j] - acc);
  }
}`;
}

/** Options of {@link softmax}. */
export interface SoftmaxOptions {
  /** Multiplier of the logits before the softmax (e.g. 1/sqrt(head size)); must be > 0. Default 1. */
  scale?: number;
  /** Columns >= validCols get probability 0 and are not read. Default: all columns. */
  validCols?: number;
  /** Output (R,C) f32; must not be `x`. */
  out?: Tensor;
  variant?: RowVariant;
}

function rowsOf(op: string, x: Tensor): [number, number] {
  checkF32(op, "x", x);
  const C = x.shape[x.shape.length - 1];
  if (!x.shape.length || !C) {
    throw new RangeError(`${op}: x has shape [${x.shape}], expected (R,C)`);
  }
  return [x.size / C, C];
}

function checkSame(op: string, name: string, t: Tensor, ref: Tensor) {
  checkF32(op, name, t);
  if (t.shape.length !== ref.shape.length || t.shape.some((d, i) => d !== ref.shape[i])) {
    throw new RangeError(`${op}: ${name} has shape [${t.shape}], expected [${ref.shape}]`);
  }
}

function checkScale(op: string, scale: number) {
  if (!(scale > 0) || !Number.isFinite(scale)) {
    throw new RangeError(`${op}: scale must be a finite number > 0, got ${scale}`);
  }
}

/**
 * Softmax over the last dimension: x (R,C) -> y (R,C), y = softmax(scale * x[:, :validCols]) and
 * 0 in the columns >= validCols.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { softmax } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const y = softmax(gpu, gpu.upload([0, Math.log(3), 5], [1, 3]), { validCols: 2 });
 * console.log(await gpu.read(y)); // ~ [0.25, 0.75, 0]
 * ```
 */
export function softmax(gpu: Gpu, x: Tensor, options: SoftmaxOptions = {}): Tensor {
  const [R, C] = rowsOf("softmax", x);
  const { scale = 1, validCols = C } = options;
  checkScale("softmax", scale);
  if (!Number.isInteger(validCols) || validCols < 0 || validCols > C) {
    throw new RangeError(`softmax: validCols must be an integer in [0, ${C}], got ${validCols}`);
  }
  const y = options.out ?? gpu.empty(x.shape);
  checkSame("softmax", "out", y, x);
  if (y.buffer === x.buffer) throw new RangeError("softmax: out must not be x");
  const variant = pickRowVariant(gpu, options.variant, C);
  const pipe = gpu.pipeline(`softmax|${variant}`, () => forwardKernel(variant));
  gpu.dispatch(
    pipe,
    [variant === "tex" ? texelCopy(gpu, x, "softmax0").view : x, y],
    new Params().u32(R).u32(C).u32(validCols).f32(scale),
    segmentGrid(variant, R),
  );
  return y;
}

/** Options of {@link softmaxBackward}. */
export interface SoftmaxBackwardOptions {
  /** The forward's scale (dx is with respect to the unscaled x). Default 1. */
  scale?: number;
  /** Output (R,C) f32. */
  out?: Tensor;
  variant?: RowVariant;
}

/**
 * Backward of {@link softmax}: given y (R,C) and dy (R,C), dx = scale * y * (dy - sum_j(dy*y)).
 * Masked columns have y = 0 and so dx = 0.
 */
export function softmaxBackward(
  gpu: Gpu,
  y: Tensor,
  dy: Tensor,
  options: SoftmaxBackwardOptions = {},
): Tensor {
  const [R, C] = rowsOf("softmaxBackward", y);
  checkSame("softmaxBackward", "dy", dy, y);
  const { scale = 1 } = options;
  checkScale("softmaxBackward", scale);
  const dx = options.out ?? gpu.empty(y.shape);
  checkSame("softmaxBackward", "out", dx, y);
  if (dx.buffer === y.buffer || dx.buffer === dy.buffer) {
    throw new RangeError("softmaxBackward: out must not be y or dy");
  }
  const variant = pickRowVariant(gpu, options.variant, C);
  const pipe = gpu.pipeline(`softmaxBackward|${variant}`, () => backwardKernel(variant));
  const ins = variant === "tex"
    ? [texelCopy(gpu, y, "softmax0").view, texelCopy(gpu, dy, "softmax1").view]
    : [y, dy];
  gpu.dispatch(pipe, [...ins, dx], new Params().u32(R).u32(C).f32(scale), segmentGrid(variant, R));
  return dx;
}

/** CPU reference of {@link softmax} (f64 math). */
export function softmaxCpu(
  x: ArrayLike<number>,
  R: number,
  C: number,
  { scale = 1, validCols = C }: { scale?: number; validCols?: number } = {},
): Float32Array {
  const y = new Float32Array(R * C);
  for (let r = 0; r < R; r++) {
    let m = -Infinity;
    for (let c = 0; c < validCols; c++) m = Math.max(m, x[r * C + c] * scale);
    if (m === -Infinity) continue; // no finite logit: zeros
    let s = 0;
    for (let c = 0; c < validCols; c++) s += Math.exp(x[r * C + c] * scale - m);
    for (let c = 0; c < validCols; c++) y[r * C + c] = Math.exp(x[r * C + c] * scale - m) / s;
  }
  return y;
}

/** CPU reference of {@link softmaxBackward}. */
export function softmaxBackwardCpu(
  y: ArrayLike<number>,
  dy: ArrayLike<number>,
  R: number,
  C: number,
  scale = 1,
): Float32Array {
  const dx = new Float32Array(R * C);
  for (let r = 0; r < R; r++) {
    let dot = 0;
    for (let c = 0; c < C; c++) dot += dy[r * C + c] * y[r * C + c];
    for (let c = 0; c < C; c++) dx[r * C + c] = scale * y[r * C + c] * (dy[r * C + c] - dot);
  }
  return dx;
}
