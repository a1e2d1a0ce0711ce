/**
 * GroupNorm over NCHW f32 images (PyTorch `nn.GroupNorm(groups, C, eps, affine=True)`), with the
 * SiLU that follows it in every VQGAN res block optionally fused, and its backward.
 *
 * In NCHW the channels of one group are consecutive, so each (batch, group) is one contiguous block of
 * n = C/groups * H * W floats.
 *
 * Forward, two passes:
 * 1. stats: one workgroup of 256 per (b, g); two-pass mean then variance (sum of squared deviations,
 *    biased, as PyTorch) over the block, each invocation striding over vec4s, then a tree reduction.
 *    Saves mean and rstd = 1/sqrt(var + eps) per (b, g) for the backward.
 * 2. apply: y = (x - mean) * rstd * gamma[c] + beta[c], then silu(y) if fused; 4 elements per
 *    invocation.
 *
 * Backward (g = dy, or dy * silu'(y) with y recomputed from x when SiLU is fused):
 * 1. per (b, c) workgroup reductions s1 = sum g, s2 = sum g * xhat over the channel's pixels;
 * 2. a small pass: dgamma[c] = sum_b s2, dbeta[c] = sum_b s1, and per (b, g) the group means
 *    m1 = sum_c gamma_c s1 / n, m2 = sum_c gamma_c s2 / n;
 * 3. dx = rstd * (gamma * g - m1 - xhat * m2), elementwise.
 * Deterministic: every sum has a fixed order, no atomics.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";

/** Options of {@link groupNorm} / {@link groupNormBackward}. */
export interface GroupNormOptions {
  /** Apply SiLU after the affine transform (default false). */
  silu?: boolean;
  /** Where to write y (must not alias x). */
  out?: Tensor;
}

/** Result of {@link groupNorm}. */
export interface GroupNormResult {
  /** (B, C, H, W) */
  y: Tensor;
  /** (B, groups): the mean of each group. */
  mean: Tensor;
  /** (B, groups): 1 / sqrt(var + eps) of each group. */
  rstd: Tensor;
}

/** Options of {@link groupNormBackward}. */
export interface GroupNormBackwardOptions {
  /** The forward fused SiLU (default false); then `beta` is required to recompute its input. */
  silu?: boolean;
  /** The forward's beta (C), needed when `silu` is set. */
  beta?: Tensor;
}

/** Gradients of {@link groupNormBackward}. */
export interface GroupNormGrads {
  /** (B, C, H, W) */
  dx: Tensor;
  /** (C) */
  dgamma: Tensor;
  /** (C) */
  dbeta: Tensor;
}

function shape4(fn: string, x: Tensor): [number, number, number, number] {
  if (x.shape.length !== 4 || x.dtype !== "f32") {
    throw new RangeError(`${fn}: x must be an f32 (B,C,H,W) tensor, got [${x.shape}] ${x.dtype}`);
  }
  return x.shape as [number, number, number, number];
}

function checkVec(fn: string, name: string, t: Tensor | undefined, n: number) {
  if (!t || t.dtype !== "f32" || t.size !== n) {
    throw new RangeError(
      `${fn}: ${name} must be f32 with ${n} elements, got ${
        t ? `[${t.shape}] ${t.dtype}` : "nothing"
      }`,
    );
  }
}

// Why this shape: on lavapipe every storage-buffer load whose address differs across invocations
// costs a per-lane loop (~10 ns), vec4 or scalar alike, so every pass reads vec4s; values that are
// the same for a whole workgroup (a plane's mean, rstd, gamma, beta) are loaded once at the top of
// the kernel, before any branch, where lavapipe does one scalar load for all invocations.

/** Per-invocation Welford state (count, mean, M2) merged with Chan's formula: one pass, stable. */
const WELFORD = `
fn merge(a: vec3f, b: vec3f) -> vec3f {
  let n = a.x + b.x;
  if (n == 0.0) { return a; }
  let d = b.y - a.y;
  return vec3f(n, a.y + d * (b.x / n), a.z + b.z + d * d * (a.x * b.x / n));
}`;

const STATS_WGSL = (vec: boolean) => `
@group(0) @binding(0) var<storage, read> x: array<${vec ? "vec4f" : "f32"}>;
@group(0) @binding(1) var<storage, read_write> mean: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
struct P { n: u32, eps: f32, count: u32 }
@group(0) @binding(3) var<uniform> p: P;
var<workgroup> sh: array<vec3f, 256>;
${WELFORD}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let bg = ${WG_INDEX};
  if (bg >= p.count) { return; }        // uniform per workgroup: the grid may round up
  let m = p.n / ${vec ? 4 : 1}u;        // elements (vec4s) in the block
  let base = bg * m;
  var st = vec3f(0.0);
  for (var i = li; i < m; i += 256u) {
    let v = x[base + i];
    ${
  vec
    ? `let mu = (v.x + v.y + v.z + v.w) * 0.25;
    let d = v - vec4f(mu);
    st = merge(st, vec3f(4.0, mu, dot(d, d)));`
    : "st = merge(st, vec3f(1.0, v, 0.0));"
}
  }
  sh[li] = st;
  workgroupBarrier();
  for (var w = 128u; w > 0u; w >>= 1u) {
    if (li < w) { sh[li] = merge(sh[li], sh[li + w]); }
    workgroupBarrier();
  }
  if (li == 0u) {
    let t = sh[0];
    mean[bg] = t.y;
    rstd[bg] = inverseSqrt(t.z / t.x + p.eps);
  }
}`;

const SILU = (v: string) => `(${v} / (1.0 + exp(-${v})))`;

/** Per-plane uniforms of the elementwise passes: workgroup y = plane b*C + c, x = chunk of it. */
const PLANE_HEAD = `
  let plane = wg.y + wg.z * 65535u;   // b * C + c
  let c = plane % p.C;
  let bg = (plane / p.C) * (p.C / p.cpg) + c / p.cpg;
  let i = wg.x * 256u + li;           // element (vec4) within the plane
  let at = plane * p.HWv + i;`;

const APPLY_WGSL = (silu: boolean, vec: boolean) => {
  const T = vec ? "vec4f" : "f32";
  return `
@group(0) @binding(0) var<storage, read> x: array<${T}>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<${T}>;
struct P { C: u32, HWv: u32, cpg: u32, planes: u32 }
@group(0) @binding(6) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u) {
  ${PLANE_HEAD}
  let scale = rstd[bg] * gamma[c];
  let shift = beta[c] - mean[bg] * scale;
  if (i >= p.HWv || plane >= p.planes) { return; }
  let v = x[at] * ${T}(scale) + ${T}(shift);
  y[at] = ${silu ? SILU("v") : "v"};
}`;
};

/** Workgroups for the per-plane passes: (chunks of 256, planes split over y and z). */
function planeGrid(planes: number, HWv: number): [number, number, number] {
  return [Math.ceil(HWv / 256), Math.min(planes, 65535), Math.ceil(planes / 65535)];
}

/**
 * GroupNorm: x (B,C,H,W), gamma/beta (C) -> y (B,C,H,W) (then SiLU when `silu`), plus the per-group
 * mean and rstd (B, groups) the backward needs. `groups` must divide C.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { groupNorm } from "./groupnorm.ts";
 * const gpu = await getGpu();
 * const x = gpu.upload(new Float32Array(64).map((_, i) => i), [1, 4, 4, 4]);
 * const ones = gpu.upload([1, 1, 1, 1], [4]), zeros = gpu.upload([0, 0, 0, 0], [4]);
 * const { y } = groupNorm(gpu, x, ones, zeros, 2, 1e-6, { silu: true }); // (1, 4, 4, 4)
 * ```
 */
/**
 * The statistics of {@link groupNorm} alone: mean and rstd (B, groups) of x (B, C, H, W), one
 * workgroup per (image, group).
 */
export function groupNormStats(
  gpu: Gpu,
  x: Tensor,
  groups: number,
  eps: number,
): { mean: Tensor; rstd: Tensor } {
  const [B, C, H, W] = shape4("groupNormStats", x);
  if (!Number.isInteger(groups) || groups < 1 || C % groups !== 0) {
    throw new RangeError(
      `groupNormStats: groups must be a positive divisor of C = ${C}, got ${groups}`,
    );
  }
  const n = (C / groups) * H * W;
  const mean = gpu.empty([B, groups]);
  const rstd = gpu.empty([B, groups]);
  const vec = n % 4 === 0;
  gpu.dispatch(
    gpu.pipeline(`groupnorm_stats|${vec}`, () => STATS_WGSL(vec)),
    [x, mean, rstd],
    new Params().u32(n).f32(eps).u32(B * groups),
    grid(B * groups),
  );
  return { mean, rstd };
}

export function groupNorm(
  gpu: Gpu,
  x: Tensor,
  gamma: Tensor,
  beta: Tensor,
  groups: number,
  eps: number,
  opts: GroupNormOptions = {},
): GroupNormResult {
  const fn = "groupNorm";
  const [B, C, H, W] = shape4(fn, x);
  if (!Number.isInteger(groups) || groups < 1 || C % groups !== 0) {
    throw new RangeError(`${fn}: groups must be a positive divisor of C = ${C}, got ${groups}`);
  }
  checkVec(fn, "gamma", gamma, C);
  checkVec(fn, "beta", beta, C);
  const HW = H * W;
  const y = opts.out ?? gpu.empty([B, C, H, W]); // (B,C,H,W)
  if (y.size !== x.size || y.buffer === x.buffer) {
    throw new RangeError(
      `${fn}: out must be a separate tensor of shape [${x.shape}], got [${y.shape}]`,
    );
  }
  const { mean, rstd } = groupNormStats(gpu, x, groups, eps);
  const pv = HW % 4 === 0;
  const HWv = pv ? HW / 4 : HW;
  gpu.dispatch(
    gpu.pipeline(`groupnorm_apply|${!!opts.silu}|${pv}`, () => APPLY_WGSL(!!opts.silu, pv)),
    [x, gamma, beta, mean, rstd, y],
    new Params().u32(C).u32(HWv).u32(C / groups).u32(B * C),
    planeGrid(B * C, HWv),
  );
  return { y, mean, rstd };
}

// --- backward ---

/** The pre-activation gradient: dy, or dy * silu'(v) with v = xhat * gamma + beta recomputed. */
const GRAD = (silu: boolean, T: string) =>
  silu
    ? `fn grad(d: ${T}, xh: ${T}, ga: f32, be: f32) -> ${T} {
  let v = xh * ${T}(ga) + ${T}(be);
  let s = 1.0 / (1.0 + exp(-v));
  return d * s * (1.0 + v * (1.0 - s));
}`
    : `fn grad(d: ${T}, xh: ${T}, ga: f32, be: f32) -> ${T} { return d; }`;

/** Bindings x, dy, gamma, beta (silu only), mean, rstd of the backward passes; returns the next index. */
const BWD_BINDINGS = (silu: boolean, T: string) => `
@group(0) @binding(0) var<storage, read> x: array<${T}>;
@group(0) @binding(1) var<storage, read> dy: array<${T}>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
${silu ? "@group(0) @binding(3) var<storage, read> beta: array<f32>;" : ""}
@group(0) @binding(${silu ? 4 : 3}) var<storage, read> mean: array<f32>;
@group(0) @binding(${silu ? 5 : 4}) var<storage, read> rstd: array<f32>;`;

/** Per (b, c) workgroup: s1 = sum g, s2 = sum g * xhat over the channel's pixels. */
const SUMS_WGSL = (silu: boolean, vec: boolean) => {
  const T = vec ? "vec4f" : "f32";
  const hsum = (v: string) => (vec ? `(${v}.x + ${v}.y + ${v}.z + ${v}.w)` : v);
  return `${BWD_BINDINGS(silu, T)}
@group(0) @binding(${silu ? 6 : 5}) var<storage, read_write> sums: array<vec2f>;
struct P { C: u32, HWv: u32, cpg: u32, planes: u32 }
@group(0) @binding(${silu ? 7 : 6}) var<uniform> p: P;
var<workgroup> sh: array<vec2f, 256>;
${GRAD(silu, T)}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let bc = ${WG_INDEX};            // b * C + c
  if (bc >= p.planes) { return; }  // uniform per workgroup: the grid may round up
  let c = bc % p.C;
  let bg = (bc / p.C) * (p.C / p.cpg) + c / p.cpg;
  let mu = mean[bg];
  let rs = rstd[bg];
  let ga = gamma[c];
  let be = ${silu ? "beta[c]" : "0.0"};
  var s = vec2f(0.0);
  for (var k = li; k < p.HWv; k += 256u) {
    let i = bc * p.HWv + k;
    let xh = (x[i] - ${T}(mu)) * rs;
    let g = grad(dy[i], xh, ga, be);
    s += vec2f(${hsum("g")}, ${hsum("(g * xh)")});
  }
  sh[li] = s;
  workgroupBarrier();
  for (var w = 128u; w > 0u; w >>= 1u) {
    if (li < w) { sh[li] += sh[li + w]; }
    workgroupBarrier();
  }
  if (li == 0u) { sums[bc] = sh[0]; }
}`;
};

const MIX_WGSL = `
@group(0) @binding(0) var<storage, read> sums: array<vec2f>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read_write> dgamma: array<f32>;
@group(0) @binding(3) var<storage, read_write> dbeta: array<f32>;
@group(0) @binding(4) var<storage, read_write> mm: array<vec2f>;
struct P { B: u32, C: u32, G: u32, cpg: u32, n: f32 }
@group(0) @binding(5) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let i = gid.x;
  if (i < p.C) {
    var s = vec2f(0.0);
    for (var b = 0u; b < p.B; b++) { s += sums[b * p.C + i]; }
    dbeta[i] = s.x;
    dgamma[i] = s.y;
  }
  if (i < p.B * p.G) {
    let b = i / p.G;
    let c0 = (i % p.G) * p.cpg;
    var m = vec2f(0.0);
    for (var c = c0; c < c0 + p.cpg; c++) { m += gamma[c] * sums[b * p.C + c]; }
    mm[i] = m / p.n;
  }
}`;

/**
 * The backward's reduction over channels and groups, shared by {@link groupNormBackward} and the
 * barrier-free backward of groupnorm_rows.ts: from the per-(b, c) sums `sums` (B*C, 2) of
 * s1 = sum g and s2 = sum g * xhat, dgamma[c] = sum_b s2 and dbeta[c] = sum_b s1 (C), and per
 * (b, g) mm = (sum_c gamma_c s1, sum_c gamma_c s2) / n (B*groups, 2), n the elements of a group.
 */
export function groupNormGradMix(
  gpu: Gpu,
  sums: Tensor,
  gamma: Tensor,
  B: number,
  groups: number,
  n: number,
): { dgamma: Tensor; dbeta: Tensor; mm: Tensor } {
  const C = sums.size / (2 * B), cpg = C / groups;
  const dgamma = gpu.empty([C]), dbeta = gpu.empty([C]);
  const mm = gpu.empty([B * groups, 2]);
  gpu.dispatch(
    gpu.pipeline("groupnorm_bwd_mix", MIX_WGSL),
    [sums, gamma, dgamma, dbeta, mm],
    new Params().u32(B).u32(C).u32(groups).u32(cpg).f32(n),
    Math.ceil(Math.max(C, B * groups) / 64),
  );
  return { dgamma, dbeta, mm };
}

/** dx = rstd * (gamma * g - m1 - xhat * m2), per-plane grid. */
const DX_WGSL = (silu: boolean, vec: boolean) => {
  const T = vec ? "vec4f" : "f32";
  return `${BWD_BINDINGS(silu, T)}
@group(0) @binding(${silu ? 6 : 5}) var<storage, read> mm: array<vec2f>;
@group(0) @binding(${silu ? 7 : 6}) var<storage, read_write> dx: array<${T}>;
struct P { C: u32, HWv: u32, cpg: u32, planes: u32 }
@group(0) @binding(${silu ? 8 : 7}) var<uniform> p: P;
${GRAD(silu, T)}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u) {
  ${PLANE_HEAD}
  let mu = mean[bg];
  let rs = rstd[bg];
  let ga = gamma[c];
  let be = ${silu ? "beta[c]" : "0.0"};
  let m = mm[bg];
  if (i >= p.HWv || plane >= p.planes) { return; }
  let xh = (x[at] - ${T}(mu)) * rs;
  let g = grad(dy[at], xh, ga, be);
  dx[at] = rs * (ga * g - ${T}(m.x) - xh * m.y);
}`;
};

/**
 * Backward of {@link groupNorm}: x (B,C,H,W), gamma (C), the forward's mean/rstd (B,groups) and
 * dy (B,C,H,W) -> dx, dgamma, dbeta. With `silu` the forward's fused SiLU is differentiated first
 * (its input is recomputed from x, which needs the forward's `beta`).
 */
export function groupNormBackward(
  gpu: Gpu,
  x: Tensor,
  gamma: Tensor,
  mean: Tensor,
  rstd: Tensor,
  dy: Tensor,
  opts: GroupNormBackwardOptions = {},
): GroupNormGrads {
  const fn = "groupNormBackward";
  const [B, C, H, W] = shape4(fn, x);
  checkVec(fn, "gamma", gamma, C);
  const G = mean.size / B;
  if (!Number.isInteger(G) || G < 1 || C % G !== 0 || rstd.size !== mean.size) {
    throw new RangeError(
      `${fn}: mean and rstd must be (B, groups) with groups dividing C = ${C}, got [${mean.shape}] and [${rstd.shape}]`,
    );
  }
  checkVec(fn, "dy", dy, x.size);
  const silu = !!opts.silu;
  if (silu) checkVec(fn, "beta (required with silu)", opts.beta, C);
  const HW = H * W, cpg = C / G;
  const sums = gpu.empty([B * C, 2]);
  const sb = silu ? [opts.beta!] : [];
  const pv = HW % 4 === 0;
  const HWv = pv ? HW / 4 : HW;
  gpu.dispatch(
    gpu.pipeline(`groupnorm_bwd_sums|${silu}|${pv}`, () => SUMS_WGSL(silu, pv)),
    [x, dy, gamma, ...sb, mean, rstd, sums],
    new Params().u32(C).u32(HWv).u32(cpg).u32(B * C),
    grid(B * C),
  );
  const { dgamma, dbeta, mm } = groupNormGradMix(gpu, sums, gamma, B, G, cpg * HW);
  const dx = gpu.empty([B, C, H, W]);
  gpu.dispatch(
    gpu.pipeline(`groupnorm_bwd_dx|${silu}|${pv}`, () => DX_WGSL(silu, pv)),
    [x, dy, gamma, ...sb, mean, rstd, mm, dx],
    new Params().u32(C).u32(HWv).u32(cpg).u32(B * C),
    planeGrid(B * C, HWv),
  );
  sums.release();
  mm.release();
  return { dx, dgamma, dbeta };
}

// --- CPU references (f64) ---

const siluF = (v: number) => v / (1 + Math.exp(-v));

/** Mean and 1/sqrt(biased variance + eps) of x[base, base + n), two passes in f64. */
function groupStatsCpu(x: ArrayLike<number>, base: number, n: number, eps: number) {
  let s = 0;
  for (let i = 0; i < n; i++) s += x[base + i];
  const mu = s / n;
  let q = 0;
  for (let i = 0; i < n; i++) q += (x[base + i] - mu) ** 2;
  return { mu, rs: 1 / Math.sqrt(q / n + eps) };
}

/** CPU reference of {@link groupNorm} (f64 math and results, two-pass variance). */
export function groupNormCpu(
  x: ArrayLike<number>,
  [B, C, H, W]: readonly number[],
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  groups: number,
  eps: number,
  silu = false,
): { y: Float64Array; mean: Float64Array; rstd: Float64Array } {
  const HW = H * W, cpg = C / groups, n = cpg * HW;
  const y = new Float64Array(B * C * HW);
  const mean = new Float64Array(B * groups), rstd = new Float64Array(B * groups);
  for (let bg = 0; bg < B * groups; bg++) {
    const base = bg * n;
    const { mu, rs } = groupStatsCpu(x, base, n, eps);
    mean[bg] = mu;
    rstd[bg] = rs;
    for (let i = 0; i < n; i++) {
      const c = ((bg % groups) * cpg) + Math.floor(i / HW);
      const v = (x[base + i] - mu) * rs * gamma[c] + beta[c];
      y[base + i] = silu ? siluF(v) : v;
    }
  }
  return { y, mean, rstd };
}

/** CPU reference of {@link groupNormBackward} (f64 math, statistics recomputed from x). */
export function groupNormBackwardCpu(
  x: ArrayLike<number>,
  [B, C, H, W]: readonly number[],
  gamma: ArrayLike<number>,
  beta: ArrayLike<number>,
  groups: number,
  eps: number,
  dy: ArrayLike<number>,
  silu = false,
): { dx: Float32Array; dgamma: Float32Array; dbeta: Float32Array } {
  const HW = H * W, cpg = C / groups, n = cpg * HW;
  const dx = new Float32Array(B * C * HW);
  const dgamma = new Float64Array(C), dbeta = new Float64Array(C);
  for (let bg = 0; bg < B * groups; bg++) {
    const base = bg * n;
    const { mu, rs } = groupStatsCpu(x, base, n, eps);
    const xh = new Float64Array(n), g = new Float64Array(n);
    let m1 = 0, m2 = 0;
    for (let i = 0; i < n; i++) {
      const c = ((bg % groups) * cpg) + Math.floor(i / HW);
      xh[i] = (x[base + i] - mu) * rs;
      const v = xh[i] * gamma[c] + beta[c];
      const sg = 1 / (1 + Math.exp(-v));
      g[i] = silu ? dy[base + i] * sg * (1 + v * (1 - sg)) : dy[base + i];
      dbeta[c] += g[i];
      dgamma[c] += g[i] * xh[i];
      m1 += gamma[c] * g[i];
      m2 += gamma[c] * g[i] * xh[i];
    }
    m1 /= n;
    m2 /= n;
    for (let i = 0; i < n; i++) {
      const c = ((bg % groups) * cpg) + Math.floor(i / HW);
      dx[base + i] = rs * (gamma[c] * g[i] - m1 - xh[i] * m2);
    }
  }
  return { dx, dgamma: Float32Array.from(dgamma), dbeta: Float32Array.from(dbeta) };
}
