/**
 * The global L2 norm of a list of gradient tensors, on the GPU, and the clipping factor derived from
 * it, as `torch.nn.utils.clip_grad_norm_`: norm = sqrt(sum_i sum(g_i^2)) and
 * scale = min(1, maxNorm / (norm + 1e-6)). Both stay (1) tensors on the GPU: `adamw` reads the scale
 * as its `gradScale`, so clipping costs no CPU readback and no extra pass over the gradients.
 *
 * A plain f32 sum of squares underflows for |g| below ~1e-19 (squares under the smallest normal
 * f32; GPUs flush them to 0) and overflows for |g| above ~1.8e19. So the squares go into three
 * accumulators by magnitude, each scaled by a power of two so it can neither underflow nor overflow
 * (Blue's algorithm, as in reference LAPACK's nrm2 since 3.10: E. Anderson, "Algorithm 978: Safe
 * Scaling in the Level 1 BLAS", ACM TOMS 44(1), 2017). Power-of-two scaling is exact. Each segment
 * first takes the plain sum of squares (as fast as before) and only a segment whose sum is out of
 * the safe range (tiny, huge, non-finite or zero) is read again with the three accumulators.
 *
 * Each tensor's accumulators are split into segments written to slots of one partial buffer (one
 * dispatch per tensor, its own slot range, no atomics), then one workgroup sums the partials and
 * combines the three sums. Variants ("rows", "tex", "wg") follow `segmentReduce` (reduce.ts).
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
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
  segmentLength,
  wgslBlocks,
  wgslSegmentMain,
} from "./reduce.ts";

/** Options of {@link gradNorm}. */
export interface GradNormOptions {
  /** Output (1) f32. */
  out?: Tensor;
  variant?: RowVariant;
  /**
   * Sum the partials of several tensors in one dispatch (default true; on the cpu kind only those
   * under 65536 elements; the same sums bit for bit: each tensor keeps its segments, kernel
   * arithmetic and slots).
   */
  group?: boolean;
}

/** Most tensors one grouped partial dispatch reads: one storage buffer each, 8 at most. */
function groupSize(gpu: Gpu): number {
  return Math.max(1, Math.min(8, gpu.limits.maxStorageBuffersPerShaderStage - 1));
}

/**
 * On the cpu kind, tensors from this size on keep a dispatch of their own (their "tex" partials
 * read textures, faster on llvmpipe than the grouped kernel's buffer loads); on GPUs all group.
 */
const GROUP_BELOW = 65536;

/**
 * Segments for a tensor of `n` elements: enough lanes/workgroups to fill the adapter. "wg" (real
 * GPUs): a workgroup of 256 per 8192 elements (32 per invocation); with 65536 per workgroup, a
 * (1664, 640) gradient took 16 workgroups and ~80 us on an H200, most of its SMs idle.
 */
function segmentsFor(n: number, variant: RowVariant): number {
  return variant !== "wg"
    ? Math.max(1, Math.min(256, Math.ceil(n / 16384)))
    : Math.max(1, Math.min(4096, Math.ceil(n / 8192)));
}

/**
 * Blue's constants for f32 (LAPACK la_constants: minexponent -125, maxexponent 128, 24 digits):
 * |g| < TSML are summed as (g SSML)^2, |g| > TBIG as (g SBIG)^2, the rest as g^2, so no square is
 * subnormal and no sum of up to 2^24 squares overflows.
 */
const WGSL_BLUE = `const TSML = 0x1p-63f;
const TBIG = 0x1p52f;
const SSML = 0x1p75f;
const SBIG = 0x1p-76f;
fn blue(v: f32) -> vec3f {
  let a = abs(v);
  let small = a < TSML;
  let big = a > TBIG;
  let s = select(0.0, a * SSML, small);
  let m = select(a, 0.0, small || big); // NaN lands here (both tests false) and propagates
  let b = select(0.0, a * SBIG, big);
  return vec3f(s * s, m * m, b * b);
}
fn blue4(v: vec4f) -> vec3f {
  let a = abs(v);
  let small = a < vec4f(TSML);
  let big = a > vec4f(TBIG);
  let s = select(vec4f(0.0), a * SSML, small);
  let m = select(a, vec4f(0.0), small | big);
  let b = select(vec4f(0.0), a * SBIG, big);
  return vec3f(dot(s, s), dot(m, m), dot(b, b));
}`;

/**
 * Partial accumulators of one tensor: out[3 (offset + s) + k], k = small, mid, big, for each
 * segment s of L elements (texels for "tex"). "rows"/"tex": one invocation per segment, blocked
 * sums; "wg": one workgroup per segment, strided loop and tree reduction.
 *
 * Fast path: the plain sum of squares, as before (Blue's accumulators cost ~12 ops per element and
 * made the kernel ALU-bound on llvmpipe, 40% slower). When that sum lies in [2^-70, 2^104] it is
 * Blue's "mid" sum to within 2^-32: no square exceeded 2^104 (so no |x| > TBIG, and no inf or
 * NaN, which fail both tests), every square of |x| >= TSML is a normal f32, and the ones below
 * (each < 2^-126, however a GPU rounds or flushes them; at most 2^24 of them) add less than 2^-102.
 * Otherwise (tiny, huge, inf or NaN values, or all zeros) the segment is read again with Blue's
 * accumulators.
 */
/**
 * The body of one segment's partial sums (after `s`, `start`, `end` are set): `load` reads element
 * (texel for vec4) `j`; `put` stores the accumulators of the segment.
 */
function segmentBody(
  variant: RowVariant,
  vec4: boolean,
  load: string,
  put: (acc: string) => string,
): string {
  const sq = vec4 ? "dot(v, v)" : "v * v";
  const blue = vec4 ? "blue4" : "blue";
  if (variant !== "wg") {
    const block = vec4 ? REDUCE_BLOCK / 4 : REDUCE_BLOCK;
    const loop = (acc: string, zero: string, term: string) =>
      wgslBlocks({
        from: "start",
        to: "end",
        block,
        init: zero,
        step: `let v = ${load}; part += ${term};`,
        fold: `${acc} += part;`,
      });
    return `var sum = 0.0;
  ${loop("sum", "0.0", sq)}
  if (fast_ok(sum)) {
    ${put("vec3f(0.0, sum, 0.0)")};
    return;
  }
  var acc = vec3f(0.0);
  ${loop("acc", "vec3f(0.0)", `${blue}(v)`)}
  ${put("acc")};`;
  }
  return `var sum = 0.0;
  for (var j = start + li; j < end; j += ${REDUCE_WG}u) { let v = ${load}; sum += ${sq}; }
  sh[li] = vec3f(0.0, sum, 0.0);
  tree(li);
  let fast = workgroupUniformLoad(&sh[0]).y; // a barrier, and a value the branch may depend on
  if (fast_ok(fast)) {
    if (li == 0u) { ${put("vec3f(0.0, fast, 0.0)")}; }
    return;
  }
  var acc = vec3f(0.0);
  for (var j = start + li; j < end; j += ${REDUCE_WG}u) { acc += ${blue}(${load}); }
  sh[li] = acc;
  tree(li);
  if (li == 0u) { ${put("sh[0]")}; }`;
}

/** WGSL shared by the partial kernels: Blue's constants, the fast-path test, the "wg" tree. */
function partialCommon(variant: RowVariant): string {
  return `${WGSL_BLUE}
// Whether the plain sum of squares can stand for the segment (see partialKernel in grad_norm.ts).
fn fast_ok(sum: f32) -> bool { return sum >= 0x1p-70f && sum <= 0x1p104f; }
${
    variant === "wg"
      ? `var<workgroup> sh: array<vec3f, ${REDUCE_WG}>;
fn tree(li: u32) {
  for (var h = ${REDUCE_WG / 2}u; h > 0u; h >>= 1u) {
    workgroupBarrier();
    if (li < h) { sh[li] += sh[li + h]; }
  }
}`
      : ""
  }`;
}

function partialKernel(variant: RowVariant): string {
  const tex = variant === "tex";
  return `${
    tex
      ? "@group(0) @binding(0) var xt: texture_2d<f32>;"
      : "@group(0) @binding(0) var<storage, read> x: array<f32>;"
  }
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct P { N: u32, L: u32, nSeg: u32, offset: u32 }
@group(0) @binding(2) var<uniform> p: P;
${partialCommon(variant)}
fn put(s: u32, acc: vec3f) {
  let o = 3u * (p.offset + s);
  out[o] = acc.x;
  out[o + 1u] = acc.y;
  out[o + 2u] = acc.z;
}
${wgslSegmentMain(variant === "wg" ? "wg" : "rows")}
  ${segmentBody(variant, tex, tex ? wgslTexel("xt", "j") : "x[j]", (a) => `put(s, ${a})`)}
}`;
}

/**
 * The partials of up to 8 small tensors in one dispatch: segment g of the dispatch (an invocation,
 * or a workgroup for "wg") belongs to tensor k (the last whose first segment is <= g), and runs
 * {@link partialKernel}'s arithmetic on x<k> ("rows4": vec4 loads from the buffer, the "tex"
 * variant's sums), writing tensor k's own slots: the same partials, bit for bit.
 */
function partialGroupKernel(variant: "rows" | "rows4" | "wg", K: number): string {
  const vec4 = variant === "rows4";
  const ks = [...Array(K).keys()];
  const at = (a: string, k: string) => `p.${a}[${k} / 4u][${k} % 4u]`;
  return `${
    ks.map((k) =>
      `@group(0) @binding(${k}) var<storage, read> x${k}: array<${vec4 ? "vec4f" : "f32"}>;`
    ).join("\n")
  }
@group(0) @binding(${K}) var<storage, read_write> out: array<f32>;
struct P { first: array<vec4u, 2>, N: array<vec4u, 2>, L: array<vec4u, 2>, offset: array<vec4u, 2>,
           total: u32 }
@group(0) @binding(${K + 1}) var<uniform> p: P;
${partialCommon(variant === "wg" ? "wg" : "rows")}
@compute @workgroup_size(${variant === "wg" ? REDUCE_WG : REDUCE_ROWS_WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let g = ${variant === "wg" ? WG_INDEX : `${WG_INDEX} * ${REDUCE_ROWS_WG}u + li`};
  if (g >= p.total) { return; }
  var k = 0u;
  for (var i = 1u; i < ${K}u; i++) {
    if (g >= ${at("first", "i")}) { k = i; }
  }
  let s = g - ${at("first", "k")};
  let start = s * ${at("L", "k")};
  let end = min(start + ${at("L", "k")}, ${at("N", "k")});
  let slot = 3u * (${at("offset", "k")} + s);
  switch k {
    ${
    ks.map((k) =>
      `case ${k}u: {
    ${segmentBody(variant === "wg" ? "wg" : "rows", vec4, `x${k}[j]`, (a) => `putAt(slot, ${a})`)}
    }`
    ).join("\n    ")
  }
    default: {}
  }
}
fn putAt(o: u32, acc: vec3f) {
  out[o] = acc.x;
  out[o + 1u] = acc.y;
  out[o + 2u] = acc.z;
}`;
}

/** WGSL `combine(small, mid, big)` -> the norm (LAPACK nrm2's final step, in f32). */
const WGSL_COMBINE =
  `// sqrt(a^2 + b^2) as LAPACK's nrm2 joins two sums: max * sqrt(1 + (min / max)^2). Each scaled
// sum is unscaled by one division of its sqrt, never by two constants in a row, which a compiler
// may fold into one factor that underflows (Dawn/SwiftShader turns (x / 2^75) / 2^75 into
// x * 2^-150 = 0). No max()/min(): a NaN in either must reach the result.
fn join2(a: f32, b: f32) -> f32 {
  if (b <= a) { let r = b / a; return a * sqrt(1.0 + r * r); }
  let r = a / b;
  return b * sqrt(1.0 + r * r);
}
fn combine(t: vec3f) -> f32 {
  if (t.z > 0.0) { return join2(sqrt(t.z) / SBIG, sqrt(t.y)); } // small ones are negligible
  if (t.y == 0.0) { return sqrt(t.x) / SSML; } // only small ones (or none)
  return join2(sqrt(t.y), sqrt(t.x) / SSML);
}`;

/** One workgroup: sums the P partial triples, combines them, sqrt -> out[0]. */
const FINAL_WG = 64;
function finalKernel(): string {
  return `@group(0) @binding(0) var<storage, read> parts: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct P { P: u32 }
@group(0) @binding(2) var<uniform> p: P;
${WGSL_BLUE}
${WGSL_COMBINE}
var<workgroup> sh: array<vec3f, ${FINAL_WG}>;
@compute @workgroup_size(${FINAL_WG})
fn main(@builtin(local_invocation_index) li: u32) {
  var acc = vec3f(0.0);
  for (var j = li; j < p.P; j += ${FINAL_WG}u) {
    acc += vec3f(parts[3u * j], parts[3u * j + 1u], parts[3u * j + 2u]);
  }
  sh[li] = acc;
  workgroupBarrier();
  if (li == 0u) {
    var t = vec3f(0.0);
    for (var k = 0u; k < ${FINAL_WG}u; k++) { t += sh[k]; }
    out[0] = combine(t);
  }
}`;
}

/**
 * Global L2 norm of `grads` (f32 tensors of any shapes) -> (1) f32 on the GPU, without underflow
 * or overflow for any finite f32 inputs whose norm is a finite f32.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { gradNorm } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const norm = gradNorm(gpu, [gpu.upload([3], [1]), gpu.upload([4, 0], [2])]);
 * console.log(await gpu.read(norm)); // Float32Array [5]
 * ```
 */
export function gradNorm(
  gpu: Gpu,
  grads: readonly Tensor[],
  options: GradNormOptions = {},
): Tensor {
  if (!grads.length) throw new RangeError("gradNorm: grads is empty, expected at least one tensor");
  grads.forEach((g, i) => checkF32("gradNorm", `grads[${i}]`, g));
  const family = pickRowVariant(gpu, options.variant);
  const out = options.out ?? gpu.empty([1]);
  checkF32("gradNorm", "out", out);
  if (out.size !== 1) throw new RangeError(`gradNorm: out has shape [${out.shape}], expected [1]`);
  const live = grads.filter((g) => g.size > 0);
  // Segment length per tensor, and the slots it then fills: ceil(n / L).
  const lens = live.map((g) => segmentLength(g.size, segmentsFor(g.size, family)));
  const P = live.reduce((a, g, i) => a + Math.ceil(g.size / lens[i]), 0);
  if (P === 0) {
    const zero = gpu.zeros([1]);
    gpu.copy(zero, out, 4);
    zero.release();
    return out;
  }
  const parts = gpu.empty([P, 3]); // (P,3) partial (small, mid, big) sums, one slot range per tensor
  // Small tensors' partials several to a dispatch (partialGroupKernel: the same sums in the same
  // slots), per kernel; the rest one dispatch each.
  const K = options.group === false ? 1 : groupSize(gpu);
  const groups = new Map<string, { t: Tensor; N: number; L: number; nSeg: number; at: number }[]>();
  let offset = 0;
  live.forEach((g, i) => {
    const N = g.size, L = lens[i], nSeg = Math.ceil(N / L);
    // "tex" needs whole texels: N and L multiples of 4 (else "rows", as segmentReduce does).
    const variant = pickRowVariant(gpu, options.variant, N % 4 === 0 && L % 4 === 0 ? 4 : 1);
    const tex = variant === "tex";
    if (K >= 2 && (gpu.kind === "gpu" || N < GROUP_BELOW)) {
      // "rows4" reads the texels' vec4s from the buffer itself: the "tex" kernel's arithmetic.
      const kind = tex ? "rows4" : variant;
      const list = groups.get(kind) ?? [];
      list.push({ t: g, N: tex ? N / 4 : N, L: tex ? L / 4 : L, nSeg, at: offset });
      groups.set(kind, list);
    } else {
      gpu.dispatch(
        gpu.pipeline(`gradnorm/partial/${variant}`, () => partialKernel(variant)),
        [tex ? texelCopy(gpu, g, "gradnorm0").view : g, parts],
        new Params().u32(tex ? N / 4 : N).u32(tex ? L / 4 : L).u32(nSeg).u32(offset),
        segmentGrid(variant, nSeg),
      );
    }
    offset += nSeg;
  });
  for (const [kind, list] of groups) {
    const v = kind as "rows" | "rows4" | "wg";
    for (let c = 0; c < list.length; c += K) {
      const chunk = list.slice(c, c + K);
      const first = chunk.map((_, j) => chunk.slice(0, j).reduce((a, e) => a + e.nSeg, 0));
      const total = chunk.reduce((a, e) => a + e.nSeg, 0);
      const params = new Params();
      for (let j = 0; j < 8; j++) params.u32(first[j] ?? 0xffffffff);
      for (const f of ["N", "L", "at"] as const) {
        for (let j = 0; j < 8; j++) params.u32(chunk[j]?.[f] ?? 0);
      }
      params.u32(total);
      gpu.dispatch(
        gpu.pipeline(
          `gradnorm/partialGroup/${v}/${chunk.length}`,
          () => partialGroupKernel(v, chunk.length),
        ),
        [...chunk.map((e) => e.t), parts],
        params,
        v === "wg" ? grid(total) : grid(Math.ceil(total / REDUCE_ROWS_WG)),
      );
    }
  }
  gpu.dispatch(gpu.pipeline("gradnorm/final", finalKernel), [parts, out], new Params().u32(P), 1);
  parts.release();
  return out;
}

function clipKernel(): string {
  return `@group(0) @binding(0) var<storage, read> norm: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct P { maxNorm: f32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(1)
fn main() {
  out[0] = min(1.0, p.maxNorm / (norm[0] + 1e-6));
}`;
}

/**
 * The clipping factor min(1, maxNorm / (norm + 1e-6)) of a (1) norm tensor -> (1) f32 tensor, to
 * pass as `adamw`'s `gradScale`.
 */
export function clipScale(gpu: Gpu, norm: Tensor, maxNorm: number, out?: Tensor): Tensor {
  checkF32("clipScale", "norm", norm);
  if (norm.size !== 1) {
    throw new RangeError(`clipScale: norm has shape [${norm.shape}], expected [1]`);
  }
  if (!(maxNorm > 0) || !Number.isFinite(maxNorm)) {
    throw new RangeError(`clipScale: maxNorm must be a finite number > 0, got ${maxNorm}`);
  }
  const o = out ?? gpu.empty([1]);
  checkF32("clipScale", "out", o);
  const pipe = gpu.pipeline("clipscale", clipKernel);
  gpu.dispatch(pipe, [norm, o], new Params().f32(maxNorm), 1);
  return o;
}

/**
 * Global-norm clipping factors in one call: `{ norm, scale }`, both (1) tensors on the GPU
 * (`scale` for `adamw`'s `gradScale`; read `norm` with the loss for logging).
 */
export function clipGradNorm(
  gpu: Gpu,
  grads: readonly Tensor[],
  maxNorm: number,
): { norm: Tensor; scale: Tensor } {
  const norm = gradNorm(gpu, grads);
  return { norm, scale: clipScale(gpu, norm, maxNorm) };
}

/**
 * CPU reference of {@link gradNorm}: the plain sum of squares in f64, which neither underflows nor
 * overflows for f32 inputs.
 */
export function gradNormCpu(grads: readonly ArrayLike<number>[]): number {
  let s = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  return Math.sqrt(s);
}

/** CPU reference of {@link clipScale}. */
export function clipScaleCpu(norm: number, maxNorm: number): number {
  return Math.min(1, maxNorm / (norm + 1e-6));
}
