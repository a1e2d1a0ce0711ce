/**
 * RMSNorm as HF `LlamaRMSNorm`: y = w * (x * rsqrt(mean(x^2) + eps)), f32 math, over the last
 * dimension C of x (N,C). The forward also writes rstd (N) = rsqrt(mean(x^2) + eps) for the backward.
 *
 * Backward (r = rstd, g = w*dy):
 *   dx_j = r * g_j - r^3 * x_j * sum_k(g_k x_k) / C
 *   dw_j = sum_rows dy_j * x_j * r
 * dw is reduced over rows without atomics: per-chunk partial sums (ROWS_PER_CHUNK rows each) by one
 * invocation per column, then a second pass over the chunks (skipped when there is one chunk).
 *
 * Variants (per `gpu.kind`, overridable):
 * - "rows" (cpu default): one invocation per row, 64 rows per workgroup, no barriers; the row loops
 *   read x as vec4 when C % 4 == 0. On lavapipe every storage-buffer access costs a per-lane loop,
 *   so this is bound by access count (x is read twice): 3-10x faster there than "wg".
 * - "wg" (gpu default): one workgroup of 64 per row, lanes over channels, the sum of squares reduced
 *   through workgroup memory (one barrier, then every lane sums the 64 partials).
 * Both give the same math; the sum order differs, so results agree to rounding.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";

/** Kernel family of the row reductions (see the module doc). */
export type RmsnormVariant = "rows" | "wg";

const WG = 64;
const ROWS_PER_CHUNK = 256;

function vecOf(C: number) {
  const vec = C % 4 === 0;
  return { ty: vec ? "vec4f" : "f32", U: vec ? C / 4 : C, sum: vec ? "dot(v, v)" : "v * v" };
}

/**
 * The kernel body works on "units" (vec4 or f32). `mode` "norm" computes y (and optionally the
 * residual sum s = x + res first); "back" computes dx.
 */
function rowKernel(variant: RmsnormVariant, C: number, mode: "norm" | "add" | "back"): string {
  const { ty, U } = vecOf(C);
  const hsum = ty === "vec4f" ? (e: string) => `dot(${e}, vec4f(1.0))` : (e: string) => e;
  const bindings = mode === "norm"
    ? ["x: array<" + ty + ">", "w: array<" + ty + ">"]
    : mode === "add"
    ? ["x: array<" + ty + ">", "res: array<" + ty + ">", "w: array<" + ty + ">"]
    : ["x: array<" + ty + ">", "w: array<" + ty + ">", "rstd: array<f32>", "dy: array<" + ty + ">"];
  const outs = mode === "norm"
    ? ["y: array<" + ty + ">", "rstdOut: array<f32>"]
    : mode === "add"
    ? ["s: array<" + ty + ">", "y: array<" + ty + ">", "rstdOut: array<f32>"]
    : ["dx: array<" + ty + ">"];
  const decls = [
    ...bindings.map((b, i) => `@group(0) @binding(${i}) var<storage, read> ${b};`),
    ...outs.map((b, i) =>
      `@group(0) @binding(${bindings.length + i}) var<storage, read_write> ${b};`
    ),
    `struct P { N: u32, eps: f32, accumulate: u32 }`,
    `@group(0) @binding(${bindings.length + outs.length}) var<uniform> p: P;`,
    `const U: u32 = ${U}u;`,
    `const C: f32 = ${C}.0;`,
  ].join("\n");
  // Per-unit expressions: the value whose square is summed, and the final write.
  const load = mode === "add" ? "x[o + c] + res[o + c]" : "x[o + c]";
  const red = mode === "back" ? "(w[c] * dy[o + c]) * x[o + c]" : null;
  const first = mode === "back"
    ? `let v = ${red}; acc += ${hsum("v")};`
    : mode === "add"
    ? `let v = ${load}; s[o + c] = v; acc += ${hsum("v * v")};`
    : `let v = ${load}; acc += ${hsum("v * v")};`;
  const second = mode === "back"
    ? `let v = r * (w[c] * dy[o + c]) - k * x[o + c];
      if (p.accumulate != 0u) { dx[o + c] += v; } else { dx[o + c] = v; }`
    : `let v = ${mode === "add" ? "s[o + c]" : "x[o + c]"}; y[o + c] = w[c] * (v * r);`;
  const finish = mode === "back"
    ? `let r = rstd[n];
  let k = r * r * r * acc / C;`
    : `let r = inverseSqrt(acc / C + p.eps);
  if (li0) { rstdOut[n] = r; }`;
  if (variant === "rows") {
    return `${decls}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let n = ${WG_INDEX} * ${WG}u + li;
  if (n >= p.N) { return; }
  let o = n * U;
  let li0 = true;
  var acc = 0.0;
  for (var c = 0u; c < U; c++) { ${first} }
  ${finish}
  for (var c = 0u; c < U; c++) {
    ${second}
  }
}`;
  }
  return `${decls}
var<workgroup> part: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let n = ${WG_INDEX};
  // No early return before the barrier: n is uniform, so guard the work instead.
  let live = n < p.N;
  let o = min(n, p.N - 1u) * U;
  let li0 = li == 0u && live;
  var acc = 0.0;
  if (live) {
    for (var c = li; c < U; c += ${WG}u) { ${first} }
  }
  part[li] = acc;
  workgroupBarrier();
  acc = 0.0;
  for (var i = 0u; i < ${WG}u; i++) { acc += part[i]; }
  ${finish}
  if (live) {
    for (var c = li; c < U; c += ${WG}u) {
      ${second}
    }
  }
}`;
}

function pickVariant(gpu: Gpu, v?: RmsnormVariant): RmsnormVariant {
  return v ?? (gpu.kind === "cpu" ? "rows" : "wg");
}

function rowsOf(op: string, x: Tensor, w: Tensor): [number, number] {
  const C = x.shape[x.shape.length - 1];
  if (!x.shape.length || !C) {
    throw new RangeError(`${op}: x has shape [${x.shape}], expected (N,C)`);
  }
  if (w.size !== C || w.shape.length !== 1) {
    throw new RangeError(`${op}: w has shape [${w.shape}], expected [${C}] (x's last dimension)`);
  }
  for (const [name, t] of [["x", x], ["w", w]] as const) {
    if (t.dtype !== "f32") throw new TypeError(`${op}: ${name} must be f32, got ${t.dtype}`);
  }
  return [x.size / C, C];
}

function sameShape(op: string, name: string, t: Tensor, ref: Tensor) {
  if (t.shape.length !== ref.shape.length || t.shape.some((d, i) => d !== ref.shape[i])) {
    throw new RangeError(`${op}: ${name} has shape [${t.shape}], expected [${ref.shape}]`);
  }
  if (t.dtype !== "f32") throw new TypeError(`${op}: ${name} must be f32, got ${t.dtype}`);
}

function rowGrid(variant: RmsnormVariant, N: number) {
  return grid(variant === "rows" ? Math.ceil(N / WG) : N);
}

/** Options of the RMSNorm launchers. */
export interface RmsnormOptions {
  /** Kernel family (default: "rows" on CPU adapters, "wg" on GPUs). */
  variant?: RmsnormVariant;
}

/**
 * RMSNorm over the last dimension: x (N,C) f32, w (C) f32 -> `{ y (N,C), rstd (N) }`, where
 * rstd = 1/sqrt(mean(x^2) + eps) is kept for {@link rmsnormBackward}.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { rmsnorm } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const { y } = rmsnorm(gpu, gpu.upload([3, 4], [1, 2]), gpu.upload([1, 2], [2]), 1e-6);
 * console.log(await gpu.read(y)); // ~ [0.8485, 2.2627]
 * ```
 */
export function rmsnorm(
  gpu: Gpu,
  x: Tensor,
  w: Tensor,
  eps = 1e-6,
  options: RmsnormOptions = {},
): { y: Tensor; rstd: Tensor } {
  const [N, C] = rowsOf("rmsnorm", x, w);
  const variant = pickVariant(gpu, options.variant);
  const y = gpu.empty(x.shape); // (N,C)
  const rstd = gpu.empty([N]); // (N)
  const pipe = gpu.pipeline(`rmsnorm|${variant}|${C}`, () => rowKernel(variant, C, "norm"));
  gpu.dispatch(pipe, [x, w, y, rstd], new Params().u32(N).f32(eps).u32(0), rowGrid(variant, N));
  return { y, rstd };
}

/**
 * Fused residual add + RMSNorm: sum = x + residual, then y = rmsnorm(sum). Returns
 * `{ sum (N,C), y (N,C), rstd (N) }`; `sum` is the new residual stream.
 */
export function addRmsnorm(
  gpu: Gpu,
  x: Tensor,
  residual: Tensor,
  w: Tensor,
  eps = 1e-6,
  options: RmsnormOptions = {},
): { sum: Tensor; y: Tensor; rstd: Tensor } {
  const [N, C] = rowsOf("addRmsnorm", x, w);
  sameShape("addRmsnorm", "residual", residual, x);
  const variant = pickVariant(gpu, options.variant);
  const sum = gpu.empty(x.shape); // (N,C)
  const y = gpu.empty(x.shape); // (N,C)
  const rstd = gpu.empty([N]); // (N)
  const pipe = gpu.pipeline(`addRmsnorm|${variant}|${C}`, () => rowKernel(variant, C, "add"));
  gpu.dispatch(
    pipe,
    [x, residual, w, sum, y, rstd],
    new Params().u32(N).f32(eps).u32(0),
    rowGrid(variant, N),
  );
  return { sum, y, rstd };
}

function dwKernel(C: number, chunks: number, accumulate: boolean): string {
  const { ty, U } = vecOf(C);
  // Pass 1: partial[chunk][c] = sum over the chunk's rows of dy*x*rstd (rstd loads are uniform).
  // Pass 2 (chunks > 1): dw[c] (+)= sum over chunks.
  return `
@group(0) @binding(0) var<storage, read> x: array<${ty}>;
@group(0) @binding(1) var<storage, read> rstd: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<${ty}>;
@group(0) @binding(3) var<storage, read_write> part: array<${ty}>;
struct P { N: u32, nColBlocks: u32 }
@group(0) @binding(4) var<uniform> p: P;
const U: u32 = ${U}u;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let w = ${WG_INDEX};
  let chunk = w / p.nColBlocks;
  let c = (w % p.nColBlocks) * ${WG}u + li;
  if (c >= U) { return; }
  let r0 = chunk * ${ROWS_PER_CHUNK}u;
  let r1 = min(r0 + ${ROWS_PER_CHUNK}u, p.N);
  var acc = ${ty}(0.0);
  for (var n = r0; n < r1; n++) {
    acc += dy[n * U + c] * x[n * U + c] * rstd[n];
  }
  ${chunks === 1 && accumulate ? "part[c] += acc;" : "part[chunk * U + c] = acc;"}
}`;
}

function dwReduceKernel(C: number, accumulate: boolean): string {
  const { ty, U } = vecOf(C);
  return `
const U: u32 = ${U}u;
@group(0) @binding(0) var<storage, read> parts: array<${ty}>;
@group(0) @binding(1) var<storage, read_write> dw: array<${ty}>;
struct Q { chunks: u32 }
@group(0) @binding(2) var<uniform> q: Q;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u) {
  let c = gid.x;
  if (c >= U) { return; }
  var acc = ${ty}(0.0);
  for (var k = 0u; k < q.chunks; k++) { acc += parts[k * U + c]; }
  ${accumulate ? "dw[c] += acc;" : "dw[c] = acc;"}
}`;
}

/** Options of {@link rmsnormBackward}. */
export interface RmsnormBackwardOptions extends RmsnormOptions {
  /** (N,C) f32 tensor to add dx into (e.g. the residual stream's gradient); returned as `dx`. */
  dxAccumulate?: Tensor;
  /** (C) f32 tensor to add dw into (gradient accumulation); returned as `dw`. */
  dwAccumulate?: Tensor;
}

/**
 * Backward of {@link rmsnorm}: x (N,C), w (C), rstd (N) from the forward, dy (N,C) ->
 * `{ dx (N,C), dw (C) }`. dw is summed over rows without atomics (two passes).
 */
export function rmsnormBackward(
  gpu: Gpu,
  x: Tensor,
  w: Tensor,
  rstd: Tensor,
  dy: Tensor,
  options: RmsnormBackwardOptions = {},
): { dx: Tensor; dw: Tensor } {
  const op = "rmsnormBackward";
  const [N, C] = rowsOf(op, x, w);
  sameShape(op, "dy", dy, x);
  if (rstd.size !== N || rstd.dtype !== "f32") {
    throw new RangeError(
      `${op}: rstd has shape [${rstd.shape}] ${rstd.dtype}, expected [${N}] f32`,
    );
  }
  if (options.dxAccumulate) sameShape(op, "dxAccumulate", options.dxAccumulate, x);
  if (options.dwAccumulate) sameShape(op, "dwAccumulate", options.dwAccumulate, w);
  const variant = pickVariant(gpu, options.variant);
  const dx = options.dxAccumulate ?? gpu.empty(x.shape); // (N,C)
  const pipe = gpu.pipeline(`rmsnormBackward|${variant}|${C}`, () => rowKernel(variant, C, "back"));
  gpu.dispatch(
    pipe,
    [x, w, rstd, dy, dx],
    new Params().u32(N).f32(0).u32(options.dxAccumulate ? 1 : 0),
    rowGrid(variant, N),
  );

  const { U } = vecOf(C);
  const acc = !!options.dwAccumulate;
  const dw = options.dwAccumulate ?? gpu.empty([C]); // (C)
  const chunks = Math.max(1, Math.ceil(N / ROWS_PER_CHUNK));
  const nColBlocks = Math.ceil(U / WG);
  // With one chunk, pass 1 alone writes (or adds into) dw.
  const part = chunks === 1 ? dw : gpu.empty([chunks, C]); // (chunks, C)
  gpu.dispatch(
    gpu.pipeline(`rmsnormDw|${C}|${chunks === 1 && acc}`, () => dwKernel(C, chunks, acc)),
    [x, rstd, dy, part],
    new Params().u32(N).u32(nColBlocks),
    grid(chunks * nColBlocks),
  );
  if (chunks > 1) {
    gpu.dispatch(
      gpu.pipeline(`rmsnormDwReduce|${C}|${acc}`, () => dwReduceKernel(C, acc)),
      [part, dw],
      new Params().u32(chunks),
      Math.ceil(U / WG),
    );
    part.release();
  }
  return { dx, dw };
}

/** CPU reference of {@link rmsnorm} (f64 sums, f32 results like HF's f32 path). */
export function rmsnormCpu(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  C: number,
  eps = 1e-6,
): { y: Float32Array; rstd: Float32Array } {
  const N = x.length / C;
  const y = new Float32Array(N * C), rstd = new Float32Array(N);
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[n * C + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[n] = r;
    for (let c = 0; c < C; c++) y[n * C + c] = w[c] * (x[n * C + c] * r);
  }
  return { y, rstd };
}

/** CPU reference of {@link rmsnormBackward} (analytic, f64 math; recomputes rstd from x). */
export function rmsnormBackwardCpu(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  dy: ArrayLike<number>,
  C: number,
  eps = 1e-6,
): { dx: Float32Array; dw: Float32Array } {
  const N = x.length / C;
  const dx = new Float32Array(N * C);
  const dw = new Float64Array(C);
  for (let n = 0; n < N; n++) {
    let ss = 0, gx = 0;
    for (let c = 0; c < C; c++) {
      ss += x[n * C + c] ** 2;
      gx += w[c] * dy[n * C + c] * x[n * C + c];
    }
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) {
      const i = n * C + c;
      dx[i] = r * w[c] * dy[i] - r ** 3 * x[i] * gx / C;
      dw[c] += dy[i] * x[i] * r;
    }
  }
  return { dx, dw: Float32Array.from(dw) };
}
