/**
 * GroupNorm (+ fused SiLU) forward and backward without workgroup barriers, for CPU adapters
 * (lavapipe): {@link groupNormFast} / {@link groupNormFastBackward} pick these kernels on CPU adapters
 * and groupnorm.ts's `groupNorm` / `groupNormBackward` (one workgroup per group, a tree reduction)
 * elsewhere, with the same results to f32 rounding. The VQGAN tokenizer uses them.
 *
 * Why: lavapipe runs a workgroup's invocations as SIMD lanes and emulates `workgroupBarrier` by
 * switching between them; a tree reduction of 256 lanes per (batch, group), 8 barriers deep, costs
 * far more than the arithmetic when there are hundreds of groups (training batches of small images:
 * 60-180 ms for a 2 MB activation, measured). Here every reduction is a per-invocation loop ("rows"
 * style, as reduce.ts does on CPUs), split into chunks so there are enough invocations, and the
 * chunks are merged by a second small pass in a fixed order (deterministic, no atomics).
 *
 * Forward: (1) per (b, g, chunk): mean and M2 of the chunk (two passes over it); (2) per (b, g): Chan's
 * merge of the chunks -> mean, rstd = 1/sqrt(M2/n + eps) (biased variance, as PyTorch); (3) apply,
 * y = (x - mean) * rstd * gamma + beta, then SiLU.
 * Backward (g = dy, or dy * silu'(y_pre) recomputed from x): (1) per (b, c, chunk): sum g, sum g*xhat;
 * (2) per (b, c): merge chunks; (3) per c: dgamma = sum_b s2, dbeta = sum_b s1; per (b, g):
 * m1 = sum_c gamma_c s1 / n, m2 = sum_c gamma_c s2 / n (groupnorm.ts's `groupNormGradMix`, the same
 * pass as the barrier version's); (4) dx = rstd * (gamma * g - m1 - xhat * m2).
 * CPU references: groupnorm.ts's `groupNormCpu` / `groupNormBackwardCpu`.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { groupNorm, groupNormBackward, groupNormGradMix, groupNormStats } from "./groupnorm.ts";
import type { Conv2dGroupStats } from "./conv2d.ts";
import { map } from "./elementwise.ts";

const WG = 64;
/** Invocations a reduction pass aims for (enough lanes for 2-16 cores). */
const TARGET = 512;

const SILU_GRAD = `
fn act_grad(dy: f32, v: f32) -> f32 {
  let s = 1.0 / (1.0 + exp(-v));
  return dy * s * (1.0 + v * (1.0 - s));
}`;

const SILU_GRAD4 = `
fn act_grad(dy: vec4f, v: vec4f) -> vec4f {
  let s = 1.0 / (1.0 + exp(-v));
  return dy * s * (1.0 + v * (1.0 - s));
}`;

const HEAD = `@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * ${WG}u + li;`;

// (1) chunk statistics: part[i] = (mean, M2) of elements [k*L, min((k+1)*L, n)) of group bg.
const STATS = (v4: boolean) => `
@group(0) @binding(0) var<storage, read> x: array<${v4 ? "vec4f" : "f32"}>;
@group(0) @binding(1) var<storage, read_write> part: array<vec2f>;
struct P { N: u32, n: u32, L: u32, P: u32 }
@group(0) @binding(2) var<uniform> p: P;
${HEAD}
  if (i >= p.N) { return; }
  let bg = i / p.P;
  let k = i % p.P;
  let a = bg * p.n + k * p.L;
  let e = bg * p.n + min((k + 1u) * p.L, p.n);
  ${
  v4
    ? `var s4 = vec4f(0.0);
  for (var j = a / 4u; j < e / 4u; j++) { s4 += x[j]; }
  let mu = (s4.x + s4.y + s4.z + s4.w) / f32(e - a);
  var q4 = vec4f(0.0);
  for (var j = a / 4u; j < e / 4u; j++) { let d = x[j] - vec4f(mu); q4 += d * d; }
  let q = q4.x + q4.y + q4.z + q4.w;`
    : `var s = 0.0;
  for (var j = a; j < e; j++) { s += x[j]; }
  let mu = s / f32(e - a);
  var q = 0.0;
  for (var j = a; j < e; j++) { let d = x[j] - mu; q += d * d; }`
}
  part[i] = vec2f(mu, q);
}`;

// (2) merge the P chunks of each group (Chan et al.) -> mean, rstd.
const MERGE = `
@group(0) @binding(0) var<storage, read> part: array<vec2f>;
@group(0) @binding(1) var<storage, read_write> mean: array<f32>;
@group(0) @binding(2) var<storage, read_write> rstd: array<f32>;
struct P { BG: u32, n: u32, L: u32, P: u32, eps: f32 }
@group(0) @binding(3) var<uniform> p: P;
${HEAD}
  if (i >= p.BG) { return; }
  var cnt = 0.0;
  var mu = 0.0;
  var m2 = 0.0;
  for (var k = 0u; k < p.P; k++) {
    let nb = f32(min((k + 1u) * p.L, p.n) - k * p.L);
    let t = part[i * p.P + k];
    let tot = cnt + nb;
    let d = t.x - mu;
    mu = mu + d * (nb / tot);
    m2 = m2 + t.y + d * d * (cnt * nb / tot);
    cnt = tot;
  }
  mean[i] = mu;
  rstd[i] = inverseSqrt(m2 / f32(p.n) + p.eps);
}`;

// (3) y = act((x - mean) * rstd * gamma + beta)
const APPLY = (silu: boolean, v4: boolean) => `
@group(0) @binding(0) var<storage, read> x: array<${v4 ? "vec4f" : "f32"}>;
@group(0) @binding(1) var<storage, read> mean: array<f32>;
@group(0) @binding(2) var<storage, read> rstd: array<f32>;
@group(0) @binding(3) var<storage, read> gamma: array<f32>;
@group(0) @binding(4) var<storage, read> beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<${v4 ? "vec4f" : "f32"}>;
struct P { N: u32, HW: u32, C: u32, n: u32 }
@group(0) @binding(6) var<uniform> p: P;
${HEAD}
  if (i >= p.N) { return; }
  let e = i * ${v4 ? 4 : 1}u;   // first element (a vec4 never straddles channels: HW % 4 == 0)
  let c = (e / p.HW) % p.C;
  let bg = e / p.n;
  // (x - mean) first: exact when x == mean (a one-element group), as the reference.
  let sc = rstd[bg] * gamma[c];
  let v = (x[i] - ${v4 ? "vec4f(mean[bg])" : "mean[bg]"}) * sc + ${
  v4 ? "vec4f(beta[c])" : "beta[c]"
};
  y[i] = ${silu ? "v / (1.0 + exp(-v))" : "v"};
}`;

// Backward (1): per (b, c, chunk) sums of g and g * xhat.
const BSTATS = (silu: boolean, v4: boolean) => `
alias T = ${v4 ? "vec4f" : "f32"};
@group(0) @binding(0) var<storage, read> x: array<${v4 ? "vec4f" : "f32"}>;
@group(0) @binding(1) var<storage, read> dy: array<${v4 ? "vec4f" : "f32"}>;
@group(0) @binding(2) var<storage, read> mean: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;
@group(0) @binding(5) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read_write> part: array<vec2f>;
struct P { N: u32, HW: u32, C: u32, cpg: u32, L: u32, P: u32 }
@group(0) @binding(7) var<uniform> p: P;
${silu ? (v4 ? SILU_GRAD4 : SILU_GRAD) : ""}
${HEAD}
  if (i >= p.N) { return; }
  let bc = i / p.P;
  let k = i % p.P;
  let c = bc % p.C;
  let bg = bc / p.cpg;    // (b * C + c) / cpg = b * G + c / cpg
  let mu = mean[bg];
  let rs = rstd[bg];
  let ga = gamma[c];
  let be = beta[c];
  let a = bc * p.HW + k * p.L;
  let e = bc * p.HW + min((k + 1u) * p.L, p.HW);
  var s1 = T(0.0);
  var s2 = T(0.0);
  for (var j = a / ${v4 ? 4 : 1}u; j < e / ${v4 ? 4 : 1}u; j++) {
    let xh = (x[j] - T(mu)) * rs;
    let g = ${silu ? "act_grad(dy[j], xh * ga + T(be))" : "dy[j]"};
    s1 += g;
    s2 += g * xh;
  }
  ${
  v4
    ? "part[i] = vec2f(s1.x + s1.y + s1.z + s1.w, s2.x + s2.y + s2.z + s2.w);"
    : "part[i] = vec2f(s1, s2);"
}
  _ = ga; _ = be;
}`;

// Backward (2): per (b, c) merge of the chunks.
const BMERGE = `
@group(0) @binding(0) var<storage, read> part: array<vec2f>;
@group(0) @binding(1) var<storage, read_write> sums: array<vec2f>;
struct P { BC: u32, P: u32 }
@group(0) @binding(2) var<uniform> p: P;
${HEAD}
  if (i >= p.BC) { return; }
  var s = vec2f(0.0);
  for (var k = 0u; k < p.P; k++) { s += part[i * p.P + k]; }
  sums[i] = s;
}`;

// Backward (4): dx = rstd * (gamma * g - m1 - xhat * m2). One invocation per (b, c, chunk), as
// (1): the plane's constants are read once and the loop has no index division (per element, the
// divisions by uniforms and the five constant loads cost more than the arithmetic on lavapipe).
// The same arithmetic as one invocation per element, which took 2.4-3.2 ms for 8 x 64 planes of
// 32x32 against 1.3-1.4 (timestamps, best of 5 x 10; 8 x 128 of 8x8: 0.36-0.59 against 0.21-0.24).
const BDX = (silu: boolean, v4: boolean, add: boolean) => `
alias T = ${v4 ? "vec4f" : "f32"};
@group(0) @binding(0) var<storage, read> x: array<${v4 ? "vec4f" : "f32"}>;
@group(0) @binding(1) var<storage, read> dy: array<${v4 ? "vec4f" : "f32"}>;
@group(0) @binding(2) var<storage, read> mean: array<f32>;     // per (b, g)
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<f32>;    // per c
@group(0) @binding(5) var<storage, read> beta: array<f32>;
@group(0) @binding(6) var<storage, read> mm: array<vec2f>;
@group(0) @binding(7) var<storage, read_write> dx: array<${v4 ? "vec4f" : "f32"}>;
${add ? `@group(0) @binding(8) var<storage, read> addend: array<${v4 ? "vec4f" : "f32"}>;` : ""}
struct P { N: u32, HW: u32, C: u32, cpg: u32, L: u32, P: u32 }
@group(0) @binding(${add ? 9 : 8}) var<uniform> p: P;
${silu ? (v4 ? SILU_GRAD4 : SILU_GRAD) : ""}
${HEAD}
  if (i >= p.N) { return; }
  let bc = i / p.P;
  let k = i % p.P;
  let c = bc % p.C;
  let bg = bc / p.cpg;
  let mu = mean[bg];
  let rs = rstd[bg];
  let ga = gamma[c];
  let be = beta[c];
  let m = mm[bg];
  let a = bc * p.HW + k * p.L;
  let e = bc * p.HW + min((k + 1u) * p.L, p.HW);
  for (var j = a / ${v4 ? 4 : 1}u; j < e / ${v4 ? 4 : 1}u; j++) {
    let xh = (x[j] - T(mu)) * rs;
    let g = ${silu ? "act_grad(dy[j], xh * ga + T(be))" : "dy[j]"};
    dx[j] = rs * (ga * g - T(m.x) - xh * m.y)${add ? " + addend[j]" : ""};
  }
  _ = be;
}`;

function dims(fn: string, x: Tensor, groups: number) {
  if (x.shape.length !== 4 || x.dtype !== "f32") {
    throw new RangeError(`${fn}: x must be an f32 (B,C,H,W) tensor, got [${x.shape}] ${x.dtype}`);
  }
  const [B, C, H, W] = x.shape;
  if (!Number.isInteger(groups) || groups < 1 || C % groups) {
    throw new RangeError(`${fn}: groups must be a positive divisor of C = ${C}, got ${groups}`);
  }
  return { B, C, HW: H * W, G: groups, cpg: C / groups, n: (C / groups) * H * W };
}

/** Chunks per segment of `len` elements when there are `segs` segments. */
function chunks(segs: number, len: number): number {
  return Math.max(1, Math.min(Math.ceil(len / 64), Math.ceil(TARGET / segs)));
}

const wgs = (n: number) => grid(Math.ceil(n / WG));

/**
 * Whether the barrier-free kernels should run: on CPU adapters, except a forward pass with few
 * groups (B*groups <= 64, e.g. one 256x256 image), where groupnorm.ts's one-workgroup-per-group
 * kernel measured faster. `force` overrides (tests).
 */
export function useRowsGroupNorm(
  gpu: Gpu,
  segments: number,
  backward: boolean,
  force?: boolean,
): boolean {
  if (force !== undefined) return force;
  return gpu.kind === "cpu" && (backward || segments > 64);
}

function checkAffine(fn: string, gamma: Tensor, beta: Tensor, C: number) {
  for (const [k, t] of [["gamma", gamma], ["beta", beta]] as const) {
    if (t.size !== C) throw new RangeError(`${fn}: ${k} has ${t.size} elements, expected ${C}`);
  }
}

/** Passes (1) and (2) of the forward: mean and rstd (B, G). */
function rowsStats(gpu: Gpu, x: Tensor, B: number, G: number, n: number, v4: boolean, eps: number) {
  const P = chunks(B * G, n), L = v4 ? Math.ceil(n / P / 4) * 4 : Math.ceil(n / P);
  const part = gpu.empty([B * G * P, 2]);
  gpu.dispatch(
    gpu.pipeline(`gn_rows_stats|${v4}`, () => STATS(v4)),
    [x, part],
    new Params().u32(B * G * P).u32(n).u32(L).u32(P),
    wgs(B * G * P),
  );
  const mean = gpu.empty([B, G]), rstd = gpu.empty([B, G]);
  gpu.dispatch(
    gpu.pipeline("gn_rows_merge", MERGE),
    [part, mean, rstd],
    new Params().u32(B * G).u32(n).u32(L).u32(P).f32(eps),
    wgs(B * G),
  );
  part.release();
  return { mean, rstd };
}

const PLANE_AFFINE = `
@group(0) @binding(0) var<storage, read> mean: array<f32>;
@group(0) @binding(1) var<storage, read> rstd: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> ss: array<vec2f>;
struct P { BC: u32, C: u32, Cg: u32 }
@group(0) @binding(5) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 64u + li;   // b * C + c
  if (i >= p.BC) { return; }
  let c = i % p.C;
  let bg = (i / p.C) * (p.C / p.Cg) + c / p.Cg;
  let scale = gamma[c] * rstd[bg];
  ss[i] = vec2f(scale, beta[c] - mean[bg] * scale);
}`;

// Partials (count, mean, M2) -> the plane affine: one invocation per (image, group) merges its
// channels' partials (Chan et al.) and writes scale and shift for each of them (`moments`: and the
// group's mean and rstd, for the backward).
const PARTIAL_AFFINE = (moments: boolean) => `
@group(0) @binding(0) var<storage, read> part: array<vec4f>;
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> ss: array<vec2f>;
struct P { BG: u32, G: u32, Cg: u32, T: u32, eps: f32 }
${
  moments
    ? `@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> rstdOut: array<f32>;`
    : ""
}
@group(0) @binding(${moments ? 6 : 4}) var<uniform> p: P;
${HEAD}
  if (i >= p.BG) { return; }
  let b = i / p.G;
  let g = i % p.G;
  let c0 = g * p.Cg;
  let plane0 = b * p.G * p.Cg + c0;
  var n = 0.0;
  var mu = 0.0;
  var m2 = 0.0;
  for (var k = 0u; k < p.Cg * p.T; k++) {
    let q = part[plane0 * p.T + k];
    if (q.x > 0.0) {
      let nn = n + q.x;
      let d = q.y - mu;
      mu = mu + d * (q.x / nn);
      m2 = m2 + q.z + d * d * (n * q.x / nn);
      n = nn;
    }
  }
  let rstd = inverseSqrt(m2 / max(n, 1.0) + p.eps);
  ${moments ? "mean[i] = mu;\n  rstdOut[i] = rstd;" : ""}
  for (var c = 0u; c < p.Cg; c++) {
    let scale = gamma[c0 + c] * rstd;
    ss[plane0 + c] = vec2f(scale, beta[c0 + c] - mu * scale);
  }
}`;

/**
 * {@link groupNormPlaneAffine} of a conv's output from the statistics the conv gathered as it wrote
 * it ({@link Conv2dGroupStats}, filled): the same ss (B*C, 2) without reading the output again.
 * `C` is the output's channels.
 */
export function groupNormAffineFromStats(
  gpu: Gpu,
  stats: Conv2dGroupStats,
  B: number,
  C: number,
  gamma: Tensor,
  beta: Tensor,
  groups: number,
  eps: number,
): Tensor {
  return affineFromStats("groupNormAffineFromStats", gpu, stats, B, C, gamma, beta, groups, eps)
    .ss;
}

/**
 * {@link groupNormAffineFromStats} that also returns the group statistics (mean, rstd: (B, groups))
 * for {@link groupNormFastBackward} (training; see {@link groupNormPlaneAffineStats}).
 */
export function groupNormAffineStatsFromStats(
  gpu: Gpu,
  stats: Conv2dGroupStats,
  B: number,
  C: number,
  gamma: Tensor,
  beta: Tensor,
  groups: number,
  eps: number,
): { ss: Tensor; mean: Tensor; rstd: Tensor } {
  const fn = "groupNormAffineStatsFromStats";
  const r = affineFromStats(fn, gpu, stats, B, C, gamma, beta, groups, eps, true);
  return { ss: r.ss, mean: r.mean!, rstd: r.rstd! };
}

function affineFromStats(
  fn: string,
  gpu: Gpu,
  stats: Conv2dGroupStats,
  B: number,
  C: number,
  gamma: Tensor,
  beta: Tensor,
  groups: number,
  eps: number,
  moments = false,
): { ss: Tensor; mean?: Tensor; rstd?: Tensor } {
  if (!stats.part) throw new RangeError(`${fn}: stats holds no partials (the conv gathered none)`);
  if (!Number.isInteger(groups) || groups < 1 || C % groups !== 0) {
    throw new RangeError(`${fn}: groups must be a positive divisor of C = ${C}, got ${groups}`);
  }
  if (stats.part.size !== B * C * stats.tiles * 4) {
    throw new RangeError(
      `${fn}: stats holds ${stats.part.size / 4} partials, expected B*C*tiles = ${
        B * C * stats.tiles
      }`,
    );
  }
  checkAffine(fn, gamma, beta, C);
  const ss = gpu.empty([B * C, 2]);
  const mom = moments ? { mean: gpu.empty([B, groups]), rstd: gpu.empty([B, groups]) } : {};
  gpu.dispatch(
    gpu.pipeline(`gn_partial_affine|${moments}`, () => PARTIAL_AFFINE(moments)),
    [stats.part, gamma, beta, ss, ...(mom.mean ? [mom.mean, mom.rstd!] : [])],
    new Params().u32(B * groups).u32(groups).u32(C / groups).u32(stats.tiles).f32(eps),
    wgs(B * groups),
  );
  return { ss, ...mom };
}

/**
 * GroupNorm as a per-(image, channel) affine: ss (B*C, 2) with y = x * ss[.][0] + ss[.][1] equal
 * to the GroupNorm of x (before any SiLU): conv2d's `prologue` applies it (and the SiLU) while
 * staging x, so no normalized copy of x is written (inference).
 */
export function groupNormPlaneAffine(
  gpu: Gpu,
  x: Tensor,
  gamma: Tensor,
  beta: Tensor,
  groups: number,
  eps: number,
): Tensor {
  const r = groupNormPlaneAffineStats(gpu, x, gamma, beta, groups, eps);
  r.mean.release();
  r.rstd.release();
  return r.ss;
}

/**
 * {@link groupNormPlaneAffine} that also returns the statistics (mean, rstd: (B, groups)) for
 * {@link groupNormFastBackward}: training's norm -> conv, where conv2d's prologue applies ss (and
 * the SiLU) as it stages x and conv2dBackward takes the same prologue.
 */
export function groupNormPlaneAffineStats(
  gpu: Gpu,
  x: Tensor,
  gamma: Tensor,
  beta: Tensor,
  groups: number,
  eps: number,
): { ss: Tensor; mean: Tensor; rstd: Tensor } {
  const { B, C, HW, G, n } = dims("groupNormPlaneAffine", x, groups);
  checkAffine("groupNormPlaneAffine", gamma, beta, C);
  const { mean, rstd } = useRowsGroupNorm(gpu, B * G, false)
    ? rowsStats(gpu, x, B, G, n, HW % 4 === 0, eps)
    : groupNormStats(gpu, x, G, eps);
  const ss = gpu.empty([B * C, 2]);
  gpu.dispatch(
    gpu.pipeline("gn_plane_affine", PLANE_AFFINE),
    [mean, rstd, gamma, beta, ss],
    new Params().u32(B * C).u32(C).u32(C / G),
    wgs(B * C),
  );
  return { ss, mean, rstd };
}

/**
 * GroupNorm (+ SiLU): x (B,C,H,W), gamma/beta (C) -> y, with mean/rstd (B,groups) for the backward.
 * The barrier-free kernels on CPU adapters, `groupNorm` elsewhere.
 */
export function groupNormFast(
  gpu: Gpu,
  x: Tensor,
  gamma: Tensor,
  beta: Tensor,
  groups: number,
  eps: number,
  silu: boolean,
  force?: boolean,
): { y: Tensor; mean: Tensor; rstd: Tensor } {
  const { B, C, HW, G, n } = dims("groupNormFast", x, groups);
  if (!useRowsGroupNorm(gpu, B * G, false, force)) {
    return groupNorm(gpu, x, gamma, beta, groups, eps, { silu });
  }
  checkAffine("groupNormFast", gamma, beta, C);
  const v4 = HW % 4 === 0;
  const { mean, rstd } = rowsStats(gpu, x, B, G, n, v4, eps);
  const y = gpu.empty(x.shape);
  gpu.dispatch(
    gpu.pipeline(`gn_rows_apply|${silu}|${v4}`, () => APPLY(silu, v4)),
    [x, mean, rstd, gamma, beta, y],
    new Params().u32(x.size / (v4 ? 4 : 1)).u32(HW).u32(C).u32(n),
    wgs(x.size / (v4 ? 4 : 1)),
  );
  return { y, mean, rstd };
}

/**
 * Backward of {@link groupNormFast}: dx, dgamma, dbeta from x, gamma, beta (needed when `silu`),
 * the forward's mean/rstd and dy. `add` (x's shape) is added to dx, in the dx pass itself where the
 * adapter allows a 9th storage buffer (a residual block's skip gradient: no separate `a + b` pass;
 * the tiny tokenizer step 479 -> 466 dispatches, 12.3 ms faster as the median of 30 pairs of steps
 * alternating in one process, in a slow phase of ~600 ms steps).
 */
export function groupNormFastBackward(
  gpu: Gpu,
  x: Tensor,
  gamma: Tensor,
  beta: Tensor,
  mean: Tensor,
  rstd: Tensor,
  dy: Tensor,
  silu: boolean,
  force?: boolean,
  add?: Tensor,
): { dx: Tensor; dgamma: Tensor; dbeta: Tensor } {
  const G = mean.size / x.shape[0];
  for (const [name, t] of [["dy", dy], ["add", add]] as const) {
    if (t && (t.size !== x.size || t.dtype !== "f32")) {
      throw new RangeError(
        `groupNormFastBackward: ${name} has shape [${t.shape}] ${t.dtype}, expected f32 [${x.shape}]`,
      );
    }
  }
  // The addend in the dx pass where a 9th storage buffer may be bound (lavapipe: 32), else after it.
  const rows = useRowsGroupNorm(gpu, mean.size, true, force);
  const fold = !!add && gpu.limits.maxStorageBuffersPerShaderStage >= 9;
  if (!rows || (add && !fold)) {
    const r = rows
      ? groupNormFastBackward(gpu, x, gamma, beta, mean, rstd, dy, silu, force)
      : groupNormBackward(gpu, x, gamma, mean, rstd, dy, { silu, beta });
    if (!add) return r;
    const dx = map(gpu, "a + b", [r.dx, add]);
    r.dx.release();
    return { ...r, dx };
  }
  const { B, C, HW, cpg, n } = dims("groupNormFastBackward", x, G);
  const v4 = HW % 4 === 0;
  const P = chunks(B * C, HW), L = v4 ? Math.ceil(HW / P / 4) * 4 : Math.ceil(HW / P);
  const part = gpu.empty([B * C * P, 2]);
  gpu.dispatch(
    gpu.pipeline(`gn_rows_bstats|${silu}|${v4}`, () => BSTATS(silu, v4)),
    [x, dy, mean, rstd, gamma, beta, part],
    new Params().u32(B * C * P).u32(HW).u32(C).u32(cpg).u32(L).u32(P),
    wgs(B * C * P),
  );
  // One chunk per plane (a batch of small images): the chunks' sums are the planes'.
  let sums = part;
  if (P > 1) {
    sums = gpu.empty([B * C, 2]);
    gpu.dispatch(
      gpu.pipeline("gn_rows_bmerge", BMERGE),
      [part, sums],
      new Params().u32(B * C).u32(P),
      wgs(B * C),
    );
    part.release();
  }
  const { dgamma, dbeta, mm } = groupNormGradMix(gpu, sums, gamma, B, G, n);
  sums.release();
  // 8 storage bindings: WebGPU's default per-stage limit (two interleaving passes that kept it
  // at 6 cost 2 of the backward's 6 dispatches); 9 with the addend, where the adapter allows.
  const dx = gpu.empty(x.shape);
  gpu.dispatch(
    gpu.pipeline(`gn_rows_bdx|${silu}|${v4}|${fold}`, () => BDX(silu, v4, fold)),
    [x, dy, mean, rstd, gamma, beta, mm, dx, ...(fold ? [add!] : [])],
    new Params().u32(B * C * P).u32(HW).u32(C).u32(cpg).u32(L).u32(P),
    wgs(B * C * P),
  );
  mm.release();
  return { dx, dgamma, dbeta };
}
