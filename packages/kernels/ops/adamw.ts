/**
 * AdamW, in place on the GPU, matching `torch.optim.AdamW` (PyTorch 1.13, `_single_tensor_adamw`,
 * amsgrad off) operation by operation in f32:
 *   p = p * (1 - lr*wd)                       decoupled weight decay
 *   m = m*b1 + (1-b1)*g
 *   v = v*b2 + ((1-b2)*g)*g
 *   denom = sqrt(v) / sqrt(1 - b2^t) + eps
 *   p = p + ((-lr / (1 - b1^t)) * m) / denom
 * The scalars (1 - lr*wd, 1-b1, 1-b2, sqrt(1-b2^t), lr/(1-b1^t)) are computed in f64 on the host and
 * rounded to f32 once, as PyTorch does with its Python-float scalars. The gradient may first be
 * multiplied by `gradScale`: a number, and/or a (1) GPU tensor such as {@link clipScale}'s output,
 * so global-norm clipping needs no CPU readback.
 *
 * Variants (64 invocations per workgroup, one element or vec4 each; 28 bytes moved per element):
 * - "vec4" (the default when N % 4 == 0): `array<vec4f>` loads and stores.
 * - "tex" (on request, N % 4 == 0): p, m, v and g are first copied into textures (texelCopy) and
 *   read with texel fetches. It was lavapipe's default for N >= 65536 (its storage loads are
 *   per-lane loops) until measured against "vec4" with pinned driver threads (Mesa 22.3, 2 cores,
 *   a one-off script, median of 5 x 4-136 updates): 147456 elements 1.18 vs 0.40 ms,
 *   1.1M 6.0 vs 3.0 ms, 5.2M 19.5 vs 15.4 ms; the four copies run on the driver's queue thread
 *   while both workers wait, and the worker that did not make the copies reads the other core's
 *   cache (perf sched: one worker 0.33 ms, the other 1.0 ms on equal halves). The tiny tokenizer's
 *   training step (alternating in one process, 30 steps each, twice): median 433 -> 420 ms.
 * - "scalar": `array<f32>`.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { checkF32 } from "./reduce.ts";
import { texelCopy, wgslTexel } from "./elementwise.ts";

const WG = 64;

/** Kernel variants: "vec4" (the default for N % 4 == 0), "tex" (on request), "scalar". */
export type AdamWVariant = "tex" | "vec4" | "scalar";

function adamwKernel(variant: AdamWVariant, scaleTensor: boolean): string {
  const T = variant === "scalar" ? "f32" : "vec4f";
  // "tex": the old values come from texture copies, so the buffers are only written.
  const tex = variant === "tex";
  const old = (b: number, name: string) =>
    tex
      ? `@group(0) @binding(${b}) var ${name}T: texture_2d<f32>;`
      : `@group(0) @binding(${b}) var<storage, read> ${name}: array<${T}>;`;
  const get = (name: string) => (tex ? wgslTexel(`${name}T`, "i") : `${name}[i]`);
  const [P0, M0, V0] = tex ? [get("param"), get("m"), get("v")] : ["param[i]", "m[i]", "v[i]"];
  const decls = tex
    ? `@group(0) @binding(0) var<storage, read_write> param: array<${T}>;
@group(0) @binding(1) var<storage, read_write> m: array<${T}>;
@group(0) @binding(2) var<storage, read_write> v: array<${T}>;
${old(3, "grad")}
${old(4, "param")}
${old(5, "m")}
${old(6, "v")}`
    : `@group(0) @binding(0) var<storage, read_write> param: array<${T}>;
@group(0) @binding(1) var<storage, read_write> m: array<${T}>;
@group(0) @binding(2) var<storage, read_write> v: array<${T}>;
${old(3, "grad")}`;
  const nb = tex ? 7 : 4;
  return `${decls}
${scaleTensor ? `@group(0) @binding(${nb}) var<storage, read> gscale: array<f32>;` : ""}
struct P {
  N: u32, gradScale: f32, decay: f32, b1: f32, omb1: f32, b2: f32, omb2: f32, bc2sqrt: f32,
  eps: f32, negStep: f32,
}
@group(0) @binding(${scaleTensor ? nb + 1 : nb}) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * ${WG}u + li;
  if (i >= p.N) { return; }
  var g = ${get("grad")} * p.gradScale;
  ${scaleTensor ? "g = g * gscale[0];" : ""}
  let pd = ${P0} * p.decay;
  let mn = ${M0} * p.b1 + p.omb1 * g;
  let vn = ${V0} * p.b2 + (p.omb2 * g) * g;
  m[i] = mn;
  v[i] = vn;
  let denom = sqrt(vn) / p.bc2sqrt + p.eps;
  param[i] = pd + (p.negStep * mn) / denom;
}`;
}

/** Hyperparameters of one AdamW step (defaults as `torch.optim.AdamW`). */
export interface AdamWOptions {
  /** Learning rate of this step. */
  lr: number;
  /** Step number t, counted from 1 (after the increment, as PyTorch's `state["step"]`). */
  step: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  /** Decoupled weight decay (PyTorch's AdamW default 1e-2). */
  weightDecay?: number;
  /**
   * Gradient multiplier: a number, or a (1) f32 tensor read on the GPU (e.g. the output of
   * `clipScale` for global-norm clipping), or both (`gradScaleTensor` with a number here).
   */
  gradScale?: number | Tensor;
  /** A (1) f32 tensor multiplying the gradient in addition to a numeric `gradScale`. */
  gradScaleTensor?: Tensor;
  /** Force a kernel variant (see the module doc); "tex"/"vec4" need N % 4 == 0. */
  variant?: AdamWVariant;
}

/** Tensors of one parameter: the parameter, its gradient and the two moment buffers (all f32). */
export interface AdamWState {
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
}

/** The f32 scalars PyTorch derives from the hyperparameters (f64 math, then one rounding). */
export function adamwScalars(o: AdamWOptions) {
  const { lr, step, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 1e-2 } = o;
  const f = Math.fround;
  return {
    decay: f(1 - lr * weightDecay),
    b1: f(beta1),
    omb1: f(1 - beta1),
    b2: f(beta2),
    omb2: f(1 - beta2),
    bc2sqrt: f(Math.sqrt(1 - beta2 ** step)),
    eps: f(eps),
    negStep: f(-(lr / (1 - beta1 ** step))),
  };
}

function checkOptions(o: AdamWOptions) {
  const { lr, step, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weightDecay = 1e-2 } = o;
  if (!Number.isFinite(lr) || lr < 0) throw new RangeError(`adamw: lr must be >= 0, got ${lr}`);
  if (!Number.isInteger(step) || step < 1) {
    throw new RangeError(`adamw: step must be an integer >= 1 (counted from 1), got ${step}`);
  }
  for (const [k, b] of [["beta1", beta1], ["beta2", beta2]] as const) {
    if (!(b >= 0 && b < 1)) throw new RangeError(`adamw: ${k} must be in [0, 1), got ${b}`);
  }
  if (!(eps >= 0)) throw new RangeError(`adamw: eps must be >= 0, got ${eps}`);
  if (!Number.isFinite(weightDecay)) {
    throw new RangeError(`adamw: weightDecay must be finite, got ${weightDecay}`);
  }
}

/** Checks one parameter's four tensors: f32, the same element count, distinct buffers. */
function checkState(state: AdamWState): void {
  const N = state.param.size;
  for (const [name, t] of Object.entries(state)) {
    checkF32("adamw", name, t);
    if (t.size !== N) {
      throw new RangeError(
        `adamw: ${name} has shape [${t.shape}] (${t.size} elements), expected ${N} like param`,
      );
    }
  }
  const { param, grad, m, v } = state;
  const bufs = new Set([param.buffer, grad.buffer, m.buffer, v.buffer]);
  if (bufs.size !== 4) throw new RangeError("adamw: param, grad, m and v must be distinct buffers");
}

/** Checks the gradient scales; returns the (1) scale tensor, if any. */
function checkScale(options: AdamWOptions): Tensor | undefined {
  let tensorScale = options.gradScaleTensor;
  if (typeof options.gradScale === "number") {
    if (!Number.isFinite(options.gradScale)) {
      throw new RangeError(`adamw: gradScale must be finite`);
    }
  } else if (options.gradScale) tensorScale = options.gradScale;
  if (tensorScale) {
    checkF32("adamw", "gradScale", tensorScale);
    if (tensorScale.size !== 1) {
      throw new RangeError(
        `adamw: gradScale tensor has shape [${tensorScale.shape}], expected [1]`,
      );
    }
  }
  return tensorScale;
}

/**
 * One AdamW step in place: updates `param`, `m` and `v` from `grad` (all f32, same element count,
 * four distinct buffers). Recorded like any kernel; nothing is read back.
 *
 * @example
 * ```ts
 * import { adamw } from "@lvm/kernels";
 * import { getGpu } from "@lvm/gpu";
 * const gpu = await getGpu();
 * const param = gpu.upload([1, 2], [2]), grad = gpu.upload([0.5, -0.5], [2]);
 * const m = gpu.zeros([2]), v = gpu.zeros([2]);
 * adamw(gpu, { param, grad, m, v }, { lr: 0.1, step: 1, weightDecay: 0 });
 * console.log(await gpu.read(param)); // ~ [0.9, 2.1]
 * ```
 */
export function adamw(gpu: Gpu, state: AdamWState, options: AdamWOptions): void {
  checkOptions(options);
  checkState(state);
  const tensorScale = checkScale(options);
  const { param, grad, m, v } = state;
  const N = param.size;
  const numScale = typeof options.gradScale === "number" ? options.gradScale : 1;
  if (N === 0) return;
  const vec = N % 4 === 0;
  const variant: AdamWVariant = !vec || options.variant === "scalar"
    ? "scalar"
    : options.variant ?? "vec4";
  const s = adamwScalars(options);
  const pipe = gpu.pipeline(
    `adamw|${variant}|${!!tensorScale}`,
    () => adamwKernel(variant, !!tensorScale),
  );
  const n = variant === "scalar" ? N : N / 4;
  const tex = variant === "tex"
    ? [grad, param, m, v].map((t, k) => texelCopy(gpu, t, `adamw${k}`).view)
    : [grad];
  const params = new Params().u32(n).f32(numScale).f32(s.decay).f32(s.b1).f32(s.omb1).f32(s.b2)
    .f32(s.omb2).f32(s.bc2sqrt).f32(s.eps).f32(s.negStep);
  gpu.dispatch(
    pipe,
    tensorScale ? [param, m, v, ...tex, tensorScale] : [param, m, v, ...tex],
    params,
    grid(Math.ceil(n / WG)),
  );
}

/** Most parameters one {@link adamwGroup} dispatch updates: 4 storage buffers each, 8 at most. */
export function adamwGroupSize(gpu: Gpu): number {
  return Math.max(1, Math.min(8, Math.floor((gpu.limits.maxStorageBuffersPerShaderStage - 1) / 4)));
}

/** {@link adamwGroup}'s kernel for K parameters: a workgroup's parameter from the start table. */
function adamwGroupKernel(K: number, scaleTensor: boolean): string {
  const ks = [...Array(K).keys()];
  const decls = ks.map((k) =>
    `@group(0) @binding(${4 * k}) var<storage, read_write> p${k}: array<vec4f>;
@group(0) @binding(${4 * k + 1}) var<storage, read_write> m${k}: array<vec4f>;
@group(0) @binding(${4 * k + 2}) var<storage, read_write> v${k}: array<vec4f>;
@group(0) @binding(${4 * k + 3}) var<storage, read> g${k}: array<vec4f>;`
  ).join("\n");
  const body = (k: number) => `
      var g = g${k}[i] * p.gradScale;
      ${scaleTensor ? "g = g * gscale[0];" : ""}
      let pd = p${k}[i] * decay;
      let mn = m${k}[i] * p.b1 + p.omb1 * g;
      let vn = v${k}[i] * p.b2 + (p.omb2 * g) * g;
      m${k}[i] = mn;
      v${k}[i] = vn;
      let denom = sqrt(vn) / p.bc2sqrt + p.eps;
      p${k}[i] = pd + (p.negStep * mn) / denom;`;
  return `${decls}
${scaleTensor ? `@group(0) @binding(${4 * K}) var<storage, read> gscale: array<f32>;` : ""}
struct P {
  gradScale: f32, b1: f32, omb1: f32, b2: f32, omb2: f32, bc2sqrt: f32, eps: f32, negStep: f32,
  start: array<vec4u, 2>, n: array<vec4u, 2>, decay: array<vec4f, 2>,
}
@group(0) @binding(${scaleTensor ? 4 * K + 1 : 4 * K}) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let w = ${WG_INDEX};
  var k = 0u; // this workgroup's parameter: the last whose first workgroup is <= w
  for (var j = 1u; j < ${K}u; j++) {
    if (w >= p.start[j / 4u][j % 4u]) { k = j; }
  }
  let i = (w - p.start[k / 4u][k % 4u]) * ${WG}u + li;
  if (i >= p.n[k / 4u][k % 4u]) { return; }
  let decay = p.decay[k / 4u][k % 4u];
  switch k {
    ${ks.map((k) => `case ${k}u: {${body(k)}\n    }`).join("\n    ")}
    default: {}
  }
}`;
}

/**
 * {@link adamw} over many parameters, with one dispatch per {@link adamwGroupSize} of them (up to
 * 8; lavapipe allows 32 storage buffers per stage) instead of one each: a model's norms, biases
 * and small matrices cost a dispatch apiece otherwise (~40-50 us each on lavapipe before any work;
 * host time per dispatch on a real GPU, where recording bounds a small model's step). The update is
 * {@link adamw}'s "vec4" one, element for element. `decays[i]` (default `options.weightDecay`) is
 * parameter i's weight decay. Parameters {@link adamw} would run otherwise (N % 4 != 0, or a
 * forced variant) go through it one by one, as do large ones on CPU adapters (N >= 65536: grouped
 * with the rest, the tiny tokenizer's step measured no faster, 436 vs 432 ms) and all where the
 * device binds too few storage buffers for two.
 */
export function adamwGroup(
  gpu: Gpu,
  states: readonly AdamWState[],
  options: AdamWOptions,
  decays?: readonly number[],
): void {
  checkOptions(options);
  if (decays && decays.length !== states.length) {
    throw new RangeError(`adamwGroup: ${decays.length} decays for ${states.length} parameters`);
  }
  decays?.forEach((d, i) => {
    if (!Number.isFinite(d)) {
      throw new RangeError(`adamwGroup: decays[${i}] must be finite, got ${d}`);
    }
  });
  states.forEach(checkState);
  const tensorScale = checkScale(options);
  const decayOf = (i: number) => decays?.[i] ?? options.weightDecay;
  const K = adamwGroupSize(gpu);
  // Groups of up to K parameters. A buffer written in a dispatch (param, m, v) may be bound only
  // once there; gradients, only read, may share buffers (views of one backward output).
  const groups: number[][] = [];
  let open: number[] = [], written = new Set<GPUBuffer>(), read = new Set<GPUBuffer>();
  states.forEach((st, i) => {
    const N = st.param.size;
    if (N === 0) return;
    const w = [st.param, st.m, st.v].map((t) => t.buffer), g = st.grad.buffer;
    const single = K < 2 || N % 4 !== 0 || options.variant !== undefined ||
      (gpu.kind === "cpu" && N >= 65536);
    if (single || w.some((b) => written.has(b) || read.has(b)) || written.has(g)) {
      adamw(gpu, st, { ...options, weightDecay: decayOf(i) });
      return;
    }
    open.push(i);
    w.forEach((b) => written.add(b));
    read.add(g);
    if (open.length === K) {
      groups.push(open);
      [open, written, read] = [[], new Set(), new Set()];
    }
  });
  if (open.length) groups.push(open);
  const numScale = typeof options.gradScale === "number" ? options.gradScale : 1;
  const s = adamwScalars(options);
  for (const idx of groups) {
    if (idx.length === 1) {
      adamw(gpu, states[idx[0]], { ...options, weightDecay: decayOf(idx[0]) });
      continue;
    }
    const n4 = idx.map((i) => states[i].param.size / 4);
    const wgs = n4.map((n) => Math.ceil(n / WG));
    const start = wgs.map((_, j) => wgs.slice(0, j).reduce((a, b) => a + b, 0));
    const params = new Params().f32(numScale).f32(s.b1).f32(s.omb1).f32(s.b2).f32(s.omb2)
      .f32(s.bc2sqrt).f32(s.eps).f32(s.negStep);
    for (let j = 0; j < 8; j++) params.u32(start[j] ?? 0xffffffff);
    for (let j = 0; j < 8; j++) params.u32(n4[j] ?? 0);
    for (let j = 0; j < 8; j++) {
      params.f32(
        j < idx.length ? adamwScalars({ ...options, weightDecay: decayOf(idx[j]) }).decay : 1,
      );
    }
    const pipe = gpu.pipeline(
      `adamwGroup|${idx.length}|${!!tensorScale}`,
      () => adamwGroupKernel(idx.length, !!tensorScale),
    );
    const binds = idx.flatMap((i) => {
      const { param, m, v, grad } = states[i];
      return [param, m, v, grad];
    });
    gpu.dispatch(
      pipe,
      tensorScale ? [...binds, tensorScale] : binds,
      params,
      grid(wgs.reduce((a, b) => a + b, 0)),
    );
  }
}

/**
 * CPU reference of {@link adamw}: updates the arrays in place with the same f32 operation order
 * (each operation rounded to f32).
 */
export function adamwCpu(
  param: Float32Array,
  grad: ArrayLike<number>,
  m: Float32Array,
  v: Float32Array,
  options: Omit<AdamWOptions, "gradScale" | "gradScaleTensor"> & { gradScale?: number },
): void {
  checkOptions(options);
  const s = adamwScalars(options);
  const f = Math.fround;
  const scale = f(options.gradScale ?? 1);
  for (let i = 0; i < param.length; i++) {
    const g = f(grad[i] * scale);
    const pd = f(param[i] * s.decay);
    const mn = f(f(m[i] * s.b1) + f(s.omb1 * g));
    const vn = f(f(v[i] * s.b2) + f(f(s.omb2 * g) * g));
    m[i] = mn;
    v[i] = vn;
    const denom = f(f(f(Math.sqrt(vn)) / s.bc2sqrt) + s.eps);
    param[i] = f(pd + f(f(s.negStep * mn) / denom));
  }
}
