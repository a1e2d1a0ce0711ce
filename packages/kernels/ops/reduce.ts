/**
 * Reductions in f32: `sum`, `mean`, `max` over the last dimension ((R,C) -> (R)) or over the whole
 * tensor (-> (1)), and `sumRows`, the column sums over every leading dimension ((M,N) -> (N), the
 * bias gradient), without float atomics.
 *
 * Every reduction is one kernel over "segments" (contiguous runs of L elements; a row is a segment
 * of C). Variants (per `gpu.kind`, overridable with `variant`):
 * - "rows": one invocation per segment, 64 per workgroup, no barriers. The loop sums blocks of 64
 *   elements and then adds the block sums, so the rounding error grows like (64 + L/64) ulp
 *   instead of L ulp. llvmpipe runs invocations as SIMD lanes and emulates barriers, so
 *   barrier-free wins there.
 * - "tex" (cpu default when N and L are multiples of 4): "rows", but the input is first copied into
 *   an rgba32float texture (`texelCopy`, a memcpy-speed transfer) and read as vec4 texels. Mesa
 *   22.3's llvmpipe turns each storage-buffer load with a per-lane index into a loop over the lanes
 *   with a bounds check per lane and component, while texel fetches are vectorised (WEBGPU-CPU.md);
 *   softmax 2048x8292 ran ~5x faster this way on 2 loaded cores. Any other shape runs "rows".
 * - "wg" (gpu default): one workgroup of 256 per segment, a strided loop (coalesced loads), then a
 *   tree reduction in workgroup memory (log2(256) = 8 barriers).
 * Whole-tensor reductions take two passes: P partial segments, then one segment of P partials.
 * `sumRows` gives each invocation one column (4 columns for "tex") of a chunk of rows, writes
 * partial sums (S,N) when the rows are split into S chunks for parallelism, then sums the S
 * partials the same way.
 *
 * Also exported for the other row kernels (softmax, cross-entropy, grad norm): {@link segmentReduce},
 * {@link pickRowVariant}, {@link WGSL_LOWEST} and {@link WGSL_EXP_SUB}.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { texelCopy, wgslTexel } from "./elementwise.ts";

/** Kernel family of the row/segment reductions (see the module doc). */
export type RowVariant = "rows" | "tex" | "wg";

/** Invocations per workgroup of the "rows" variant (one segment per invocation). */
export const REDUCE_ROWS_WG = 64;
/** Invocations per workgroup of the "wg" variant (one segment per workgroup). */
export const REDUCE_WG = 256;
/** Block length of the blocked sequential sums of the "rows" variant. */
export const REDUCE_BLOCK = 64;

/**
 * WGSL of the blocked sequential loop of every "rows"/"tex" reduction (here, softmax, cross-entropy,
 * grad norm): elements `from` .. `to` (exclusive) in blocks of `block`; each block is folded into
 * `part` (starting at `init`) by `step`, a statement over the index `j`, and then `fold` adds `part`
 * to the running result, so the rounding error grows like (block + L/block) ulp instead of L ulp.
 * The first line is not indented; the others are, for a kernel's body.
 */
export function wgslBlocks(o: {
  from: string;
  to: string;
  block: number;
  init: string;
  step: string;
  fold: string;
  j?: string;
}): string {
  const j = o.j ?? "j";
  return `for (var b = ${o.from}; b < ${o.to}; b += ${o.block}u) {
    let be = min(b + ${o.block}u, ${o.to});
    var part = ${o.init};
    for (var ${j} = b; ${j} < be; ${j}++) { ${o.step} }
    ${o.fold}
  }`;
}

/** WGSL expression for the lowest finite f32, the "minus infinity" start of a running max. */
export const WGSL_LOWEST = "bitcast<f32>(0xff7fffffu)";

/**
 * WGSL helper `exp_sub(a, b)` = exp(a - b), but exactly 0 when `a` is -inf or the lowest-f32
 * sentinel (so an all-masked start never yields inf - inf = NaN, and masked logits give exact 0).
 */
export const WGSL_EXP_SUB = `fn exp_sub(a: f32, b: f32) -> f32 {
  return select(exp(a - b), 0.0, a <= ${WGSL_LOWEST});
}
fn exp_sub4(a: vec4f, b: f32) -> vec4f {
  return select(exp(a - b), vec4f(0.0), a <= vec4f(${WGSL_LOWEST}));
}`;

/**
 * The variant to run: `v` when given, else "tex" on CPU adapters when every row length is a
 * multiple of 4 (`cols`), "rows" on other CPU cases, "wg" on GPUs. A "tex" request that the shape
 * does not allow falls back to "rows".
 */
export function pickRowVariant(gpu: Gpu, v?: RowVariant, cols = 1): RowVariant {
  const want = v ?? (gpu.kind === "cpu" ? "tex" : "wg");
  return want === "tex" && cols % 4 !== 0 ? "rows" : want;
}

/** Workgroup counts for `n` segments under `variant`. */
export function segmentGrid(variant: RowVariant, n: number): [number, number, number] {
  return grid(variant === "wg" ? n : Math.ceil(n / REDUCE_ROWS_WG));
}

/**
 * WGSL: the entry point of a segment kernel (uniforms `p.N`, `p.L`, `p.nSeg`) up to its loop, with
 * `s` the segment and [`start`, `end`) its elements: one invocation per segment ("rows", "tex": a
 * workgroup of {@link REDUCE_ROWS_WG}) or one workgroup of {@link REDUCE_WG} per segment ("wg").
 */
export function wgslSegmentMain(variant: RowVariant): string {
  return variant === "wg"
    ? `@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let s = ${WG_INDEX};
  if (s >= p.nSeg) { return; } // uniform: s is the workgroup's index
  let start = s * p.L;
  let end = min(start + p.L, p.N);`
    : `@compute @workgroup_size(${REDUCE_ROWS_WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let s = ${WG_INDEX} * ${REDUCE_ROWS_WG}u + li;
  if (s >= p.nSeg) { return; }
  let start = s * p.L;
  let end = min(start + p.L, p.N);`;
}

/** What each element contributes: itself, its square, or the running max. */
export type SegmentOp = "sum" | "sumsq" | "max";

/** Options of {@link segmentReduce}. */
export interface SegmentReduceOptions {
  /** Elements per segment (the last segment may be shorter). */
  L: number;
  /** Output tensor (default: a new (nSeg) f32 tensor). */
  out?: Tensor;
  /** First output slot written (segment s goes to out[offset + s]). Default 0. */
  offset?: number;
  /** Multiplier applied to each segment's result (e.g. 1/C for a mean). Default 1. */
  mul?: number;
  /** Take the square root after the multiplier (for an L2 norm). */
  sqrt?: boolean;
  variant?: RowVariant;
}

/** The "tex" segment kernel: `p.N` and `p.L` count texels (vec4s) of a texelCopy texture. */
function segmentKernelTex(op: SegmentOp, sqrt: boolean): string {
  const texel = (j: string) => wgslTexel("xt", j);
  const load = op === "sumsq" ? `sq4(${texel("j")})` : texel("j");
  const comb = (a: string, b: string) => (op === "max" ? `max(${a}, ${b})` : `${a} + ${b}`);
  const init = op === "max" ? texel("start") : "vec4f(0.0)";
  const fold = op === "max"
    ? "max(max(acc.x, acc.y), max(acc.z, acc.w))"
    : "(acc.x + acc.y) + (acc.z + acc.w)";
  const post = sqrt ? "sqrt(r * p.mul)" : op === "max" ? "r" : "r * p.mul";
  return `@group(0) @binding(0) var xt: texture_2d<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct P { N: u32, L: u32, nSeg: u32, offset: u32, mul: f32 }
@group(0) @binding(2) var<uniform> p: P;
fn sq4(v: vec4f) -> vec4f { return v * v; }
${wgslSegmentMain("rows")}
  var acc = ${init};
  ${
    wgslBlocks({
      from: "start",
      to: "end",
      block: REDUCE_BLOCK / 4,
      init,
      step: `part = ${comb("part", load)};`,
      fold: `acc = ${comb("acc", "part")};`,
    })
  }
  let r = ${fold};
  out[p.offset + s] = ${post};
}`;
}

function segmentKernel(op: SegmentOp, variant: RowVariant, sqrt: boolean): string {
  if (variant === "tex") return segmentKernelTex(op, sqrt);
  const load = op === "sumsq" ? "sq(x[j])" : "x[j]";
  const comb = (a: string, b: string) => (op === "max" ? `max(${a}, ${b})` : `${a} + ${b}`);
  // max starts from the segment's first element (neutral for max), sums from 0.
  const init = op === "max" ? "x[start]" : "0.0";
  const post = sqrt ? "sqrt(acc * p.mul)" : op === "max" ? "acc" : "acc * p.mul";
  const head = `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct P { N: u32, L: u32, nSeg: u32, offset: u32, mul: f32 }
@group(0) @binding(2) var<uniform> p: P;
fn sq(v: f32) -> f32 { return v * v; }`;
  if (variant !== "wg") {
    return `${head}
${wgslSegmentMain("rows")}
  var acc = ${init};
  ${
      wgslBlocks({
        from: "start",
        to: "end",
        block: REDUCE_BLOCK,
        init,
        step: `part = ${comb("part", load)};`,
        fold: `acc = ${comb("acc", "part")};`,
      })
    }
  out[p.offset + s] = ${post};
}`;
  }
  return `${head}
var<workgroup> sh: array<f32, ${REDUCE_WG}>;
${wgslSegmentMain("wg")}
  var acc = ${init};
  for (var j = start + li; j < end; j += ${REDUCE_WG}u) { acc = ${comb("acc", load)}; }
  sh[li] = acc;
  for (var h = ${REDUCE_WG / 2}u; h > 0u; h >>= 1u) {
    workgroupBarrier();
    if (li < h) { sh[li] = ${comb("sh[li]", "sh[li + h]")}; }
  }
  if (li == 0u) { acc = sh[0]; out[p.offset + s] = ${post}; }
}`;
}

/**
 * Reduces each run of `L` consecutive elements of `x` (f32, any shape, N elements) to one value:
 * out[offset + s] = post(op over x[s*L .. min((s+1)*L, N))). The building block of every reduction
 * here; exported for kernels that need partial sums (e.g. the global gradient norm).
 */
export function segmentReduce(
  gpu: Gpu,
  x: Tensor,
  op: SegmentOp,
  options: SegmentReduceOptions,
): Tensor {
  checkF32("segmentReduce", "x", x);
  const N = x.size;
  const { L, offset = 0, mul = 1, sqrt = false } = options;
  if (!Number.isInteger(L) || L < 1) {
    throw new RangeError(`segmentReduce: L must be a positive integer, got ${L}`);
  }
  if (N === 0) throw new RangeError(`segmentReduce: x has shape [${x.shape}], expected elements`);
  const nSeg = Math.ceil(N / L);
  const out = options.out ?? gpu.empty([nSeg]);
  if (out.dtype !== "f32" || out.size < offset + nSeg) {
    throw new RangeError(
      `segmentReduce: out has ${out.size} ${out.dtype} elements, expected f32 with at least ${
        offset + nSeg
      }`,
    );
  }
  // "tex" needs whole texels: N and L multiples of 4.
  const variant = pickRowVariant(gpu, options.variant, N % 4 === 0 && L % 4 === 0 ? 4 : 1);
  const pipe = gpu.pipeline(
    `segreduce|${op}|${variant}|${sqrt}`,
    () => segmentKernel(op, variant, sqrt),
  );
  const tex = variant === "tex";
  gpu.dispatch(
    pipe,
    [tex ? texelCopy(gpu, x, "segreduce0").view : x, out],
    new Params().u32(tex ? N / 4 : N).u32(tex ? L / 4 : L).u32(nSeg).u32(offset).f32(mul),
    segmentGrid(variant, nSeg),
  );
  return out;
}

/**
 * A segment length that splits `n` elements into at most `segments` runs, rounded up to a
 * multiple of 4 when `n` is one (so that the "tex" variant applies).
 */
export function segmentLength(n: number, segments: number): number {
  const L = Math.ceil(n / segments);
  return n % 4 === 0 ? Math.ceil(L / 4) * 4 : L;
}

/** Options of {@link sum}, {@link mean} and {@link max}. */
export interface ReduceOptions {
  /** "last" (default): (..., C) -> (...), or (1) for a 1-D input. "all": the whole tensor -> (1). */
  axis?: "last" | "all";
  /** Output tensor of the right size (f32). */
  out?: Tensor;
  variant?: RowVariant;
}

function reduce(
  gpu: Gpu,
  name: string,
  x: Tensor,
  op: "sum" | "max",
  isMean: boolean,
  options: ReduceOptions,
): Tensor {
  checkF32(name, "x", x);
  const N = x.size;
  if (N === 0) throw new RangeError(`${name}: x has shape [${x.shape}], expected elements`);
  const variant = options.variant;
  const axis = options.axis ?? "last";
  if (axis === "last") {
    const C = x.shape[x.shape.length - 1];
    const shape = x.shape.length > 1 ? x.shape.slice(0, -1) : [1];
    const out = checkOut(name, options.out, N / C, shape) ?? gpu.empty(shape);
    return segmentReduce(gpu, x, op, { L: C, out, mul: isMean ? 1 / C : 1, variant });
  }
  if (axis !== "all") throw new RangeError(`${name}: axis must be "last" or "all", got ${axis}`);
  const out = checkOut(name, options.out, 1, [1]) ?? gpu.empty([1]);
  // Pass 1: P partial segments; pass 2: one segment of P. P keeps both passes parallel enough.
  const P = Math.min(pickRowVariant(gpu, variant) === "wg" ? 1024 : 256, Math.ceil(N / 1024));
  if (P <= 1) return segmentReduce(gpu, x, op, { L: N, out, mul: isMean ? 1 / N : 1, variant });
  const parts = segmentReduce(gpu, x, op, { L: segmentLength(N, P), variant });
  segmentReduce(gpu, parts, op, { L: parts.size, out, mul: isMean ? 1 / N : 1, variant });
  parts.release();
  return out;
}

/**
 * Sum over the last dimension ((R,C) -> (R)), or of the whole tensor with `{ axis: "all" }` (-> (1)).
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { sum } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const x = gpu.upload([1, 2, 3, 4, 5, 6], [2, 3]);
 * console.log(await gpu.read(sum(gpu, x))); // Float32Array [6, 15]
 * console.log(await gpu.read(sum(gpu, x, { axis: "all" }))); // Float32Array [21]
 * ```
 */
export function sum(gpu: Gpu, x: Tensor, options: ReduceOptions = {}): Tensor {
  return reduce(gpu, "sum", x, "sum", false, options);
}

/** Mean over the last dimension ((R,C) -> (R)), or of the whole tensor with `{ axis: "all" }`. */
export function mean(gpu: Gpu, x: Tensor, options: ReduceOptions = {}): Tensor {
  return reduce(gpu, "mean", x, "sum", true, options);
}

/** Max over the last dimension ((R,C) -> (R)), or of the whole tensor with `{ axis: "all" }`. */
export function max(gpu: Gpu, x: Tensor, options: ReduceOptions = {}): Tensor {
  return reduce(gpu, "max", x, "max", false, options);
}

/**
 * Column sums of a chunk of rows per invocation. "tex": x is a texelCopy texture and each
 * invocation sums 4 columns (one texel per row); `p.N` then counts vec4 columns.
 */
function sumRowsKernel(tex: boolean): string {
  const T = tex ? "vec4f" : "f32";
  const x = tex ? wgslTexel("xt", "r * p.N + n") : "x[r * p.N + n]";
  return `${
    tex
      ? "@group(0) @binding(0) var xt: texture_2d<f32>;"
      : "@group(0) @binding(0) var<storage, read> x: array<f32>;"
  }
@group(0) @binding(1) var<storage, read_write> out: array<${T}>;
struct P { M: u32, N: u32, S: u32, RL: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(${REDUCE_ROWS_WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let idx = ${WG_INDEX} * ${REDUCE_ROWS_WG}u + li;
  if (idx >= p.S * p.N) { return; }
  let s = idx / p.N;
  let n = idx % p.N;
  let r0 = s * p.RL;
  let r1 = min(r0 + p.RL, p.M);
  var acc = ${T}(0.0);
  ${
    wgslBlocks({
      from: "r0",
      to: "r1",
      block: REDUCE_BLOCK,
      init: `${T}(0.0)`,
      step: `part += ${x};`,
      fold: "acc += part;",
      j: "r",
    })
  }
  out[idx] = acc;
}`;
}

/** Options of {@link sumRows}. */
export interface SumRowsOptions {
  /** Output (N) f32. */
  out?: Tensor;
  /** Row chunks of the first pass (default: enough (chunk, column) pairs to fill the adapter). */
  chunks?: number;
  /** "tex" (CPU default when N % 4 == 0) reads through a texture copy; anything else: the buffer. */
  variant?: RowVariant;
}

/**
 * Column sums over every leading dimension: x (M,N) (or (..., N)) -> (N), e.g. a bias gradient
 * db = sum over rows of dy. One invocation per (row chunk, column); no atomics, so the result is
 * deterministic.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { sumRows } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const dy = gpu.upload([1, 2, 3, 4, 5, 6], [3, 2]);
 * console.log(await gpu.read(sumRows(gpu, dy))); // Float32Array [9, 12]
 * ```
 */
export function sumRows(gpu: Gpu, x: Tensor, options: SumRowsOptions = {}): Tensor {
  checkF32("sumRows", "x", x);
  const N = x.shape[x.shape.length - 1];
  if (!x.shape.length || !N) {
    throw new RangeError(`sumRows: x has shape [${x.shape}], expected (M,N)`);
  }
  const M = x.size / N;
  const out = checkOut("sumRows", options.out, N, [N]) ?? gpu.empty([N]);
  const tex = pickRowVariant(gpu, options.variant, N) === "tex";
  const pipe = gpu.pipeline(`sumrows|${tex}`, () => sumRowsKernel(tex));
  const n = tex ? N / 4 : N; // columns (vec4 columns for "tex")
  // Enough independent (chunk, column) items to keep the adapter busy, but >= 16 rows per chunk.
  const target = gpu.kind === "cpu" ? 512 : 16384;
  const S = options.chunks ?? Math.max(1, Math.min(Math.ceil(target / n), Math.ceil(M / 16)));
  const run = (src: Tensor, dst: Tensor, m: number, s: number) =>
    gpu.dispatch(
      pipe,
      [tex ? texelCopy(gpu, src, "sumrows0").view : src, dst],
      new Params().u32(m).u32(n).u32(s).u32(Math.ceil(m / s)),
      grid(Math.ceil((s * n) / REDUCE_ROWS_WG)),
    );
  if (S <= 1) {
    run(x, out, M, 1);
    return out;
  }
  const parts = gpu.empty([S, N]); // (S,N) partial column sums
  run(x, parts, M, S);
  run(parts, out, S, 1);
  parts.release();
  return out;
}

/** Throws unless `t` is an f32 tensor. */
export function checkF32(op: string, name: string, t: Tensor): void {
  if (t.dtype !== "f32") throw new TypeError(`${op}: ${name} must be f32, got ${t.dtype}`);
}

function checkOut(op: string, out: Tensor | undefined, n: number, shape: readonly number[]) {
  if (!out) return undefined;
  if (out.dtype !== "f32" || out.size !== n) {
    throw new RangeError(
      `${op}: out has shape [${out.shape}] ${out.dtype}, expected [${shape}] f32`,
    );
  }
  return out;
}

/** CPU references (f64 accumulation, f32 results) of the reductions. */
export const reduceCpu = {
  /** Per-row sums of x (R,C) -> (R). */
  sum(x: ArrayLike<number>, R: number, C: number): Float32Array {
    const out = new Float32Array(R);
    for (let r = 0; r < R; r++) {
      let s = 0;
      for (let c = 0; c < C; c++) s += x[r * C + c];
      out[r] = s;
    }
    return out;
  },
  /** Per-row means of x (R,C) -> (R). */
  mean(x: ArrayLike<number>, R: number, C: number): Float32Array {
    return reduceCpu.sum(x, R, C).map((v) => v / C);
  },
  /** Per-row maxima of x (R,C) -> (R). */
  max(x: ArrayLike<number>, R: number, C: number): Float32Array {
    const out = new Float32Array(R);
    for (let r = 0; r < R; r++) {
      let m = -Infinity;
      for (let c = 0; c < C; c++) m = Math.max(m, x[r * C + c]);
      out[r] = m;
    }
    return out;
  },
  /** Column sums of x (M,N) -> (N). */
  sumRows(x: ArrayLike<number>, M: number, N: number): Float32Array {
    const acc = new Float64Array(N);
    for (let r = 0; r < M; r++) for (let n = 0; n < N; n++) acc[n] += x[r * N + n];
    return Float32Array.from(acc);
  },
};
