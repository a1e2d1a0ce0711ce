/**
 * Fused softmax cross-entropy over logits (R,V) f32 and targets (R) i32, as PyTorch's
 * `F.cross_entropy(logits, targets, ignore_index=<any negative>)`:
 *   loss_r = logsumexp(logits_r) - logits_r[t_r]          (0 for rows with t_r < 0)
 *   loss   = sum_r loss_r / count  (reduction "mean", count = rows with t_r >= 0) or sum_r loss_r
 *   dlogits_r = (softmax(logits_r) - onehot(t_r)) * gradScale [/ count]   (0 for ignored rows)
 * and `logSoftmaxGather`, log p(t_r) per row over the full vocabulary (perplexity, scoring).
 *
 * One pass over a row finds the running max m and sum s of exp(x - m) (online softmax, see
 * softmax.ts); the loss is m + log(s) - x[t]; the backward pass reads the row once more and writes
 * dlogits (into the logits buffer itself with `inPlace`, as llm.c does, saving R*V*4 bytes).
 * The mean stays on the GPU: a (1) tensor, so a trainer reads one float per step.
 * A target >= V is a caller bug and gives a NaN loss (loud, not silently wrong).
 *
 * Logits over 128 MiB (e.g. 4096 x 8292 f32) do not fit one storage binding: pass them as an array
 * of row chunks (R_i,V) with sum R_i = R; targets and losses stay whole.
 *
 * Variants per `gpu.kind` ("tex", CPU default when V % 4 == 0: one invocation per row, the logits
 * read as vec4s from a texture copy; "rows": the same from the buffer; "wg", GPU default: one
 * workgroup of 256 per row, strided loops over V); see reduce.ts. The count and the mean are one
 * workgroup each.
 * @module
 */
import { type Gpu, Params } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import {
  checkF32,
  pickRowVariant,
  REDUCE_WG,
  type RowVariant,
  segmentGrid,
  WGSL_EXP_SUB,
} from "./reduce.ts";
import { wgslLanes4, wgslOnlineMaxSum, wgslOnlineMaxSum4, wgslRowMain } from "./softmax.ts";
import { texelCopy, wgslTexel } from "./elementwise.ts";

type Mode = "loss" | "gather" | "grad" | "gradInPlace";

const NAN_BITS = 0x7fc00000;

function rowKernel(variant: RowVariant, mode: Mode): string {
  const grad = mode === "grad" || mode === "gradInPlace";
  const ms = wgslOnlineMaxSum(variant, (j) => `x[o + ${j}]`, "p.V");
  const xAccess = mode === "gradInPlace" ? "read_write" : "read";
  const bindings = [
    `var<storage, ${xAccess}> x: array<f32>;`,
    "var<storage, read> targets: array<i32>;",
    "var<storage, read_write> out: array<f32>;",
    ...(grad ? ["var<storage, read> count: array<f32>;"] : []),
    ...(mode === "grad" ? ["var<storage, read_write> dx: array<f32>;"] : []),
  ];
  const dst = mode === "gradInPlace" ? "x" : "dx";
  const backward = grad
    ? `var g = p.gradScale;
  if (p.mean != 0u) { g = g / max(count[0], 1.0); }
  if (t < 0) { g = 0.0; }
  let inv = select(1.0 / s, 0.0, s == 0.0);
  let tu = u32(max(t, 0));
  for (var j = first; j < p.V; j += step) {
    let pj = exp_sub(x[o + j], m) * inv;
    ${dst}[o + j] = (pj - select(0.0, 1.0, j == tu && t >= 0)) * g;
  }`
    : "";
  // loss = lse - x[t]; gather = x[t] - lse = log p(t). Ignored rows: 0. t >= V: NaN.
  const value = mode === "gather" ? "x[o + u32(t)] - lse" : "lse - x[o + u32(t)]";
  return `${bindings.map((b, i) => `@group(0) @binding(${i}) ${b}`).join("\n")}
struct P { R: u32, V: u32, rowOffset: u32, gradScale: f32, mean: u32, nanBits: u32 }
@group(0) @binding(${bindings.length}) var<uniform> p: P;
${WGSL_EXP_SUB}
${ms.decls}
${wgslRowMain(variant)}
  let o = r * p.V;
  let t = targets[p.rowOffset + r];
  ${ms.body}
  let lse = m + log(s);
  var v = 0.0;
  if (t >= 0) {
    if (u32(t) < p.V) { v = ${value}; } else { v = bitcast<f32>(p.nanBits); }
  }
  if (lead) { out[p.rowOffset + r] = v; }
  ${backward}
}`;
}

/**
 * The "tex" variant: the logits chunk is read from a texelCopy texture as vec4s (V % 4 == 0), so
 * dlogits can go to any buffer, the logits' own included ("gradInPlace" binds them as `dx`).
 */
function rowKernelTex(mode: Mode): string {
  const grad = mode === "grad" || mode === "gradInPlace";
  const x4 = (j4: string) => wgslTexel("xt", `o4 + ${j4}`);
  const bindings = [
    "var xt: texture_2d<f32>;",
    "var<storage, read> targets: array<i32>;",
    "var<storage, read_write> out: array<f32>;",
    ...(grad ? ["var<storage, read> count: array<f32>;"] : []),
    ...(grad ? ["var<storage, read_write> dx: array<vec4f>;"] : []),
  ];
  const backward = grad
    ? `var g = p.gradScale;
  if (p.mean != 0u) { g = g / max(count[0], 1.0); }
  if (t < 0) { g = 0.0; }
  let inv = select(1.0 / s, 0.0, s == 0.0);
  let hot = vec4u(select(0xffffffffu, u32(t), t >= 0)); // no element matches an ignored target
  for (var j4 = 0u; j4 < C4; j4++) {
    let pj = exp_sub4(${x4("j4")}, m) * inv;
    dx[o4 + j4] = (pj - select(vec4f(0.0), vec4f(1.0), ${wgslLanes4("j4")} == hot)) * g;
  }`
    : "";
  const xt = `${x4("u32(t) / 4u")}[u32(t) % 4u]`;
  const value = mode === "gather" ? `${xt} - lse` : `lse - ${xt}`;
  return `${bindings.map((b, i) => `@group(0) @binding(${i}) ${b}`).join("\n")}
struct P { R: u32, V: u32, rowOffset: u32, gradScale: f32, mean: u32, nanBits: u32 }
@group(0) @binding(${bindings.length}) var<uniform> p: P;
${WGSL_EXP_SUB}
${wgslRowMain("tex")}
  let C4 = p.V / 4u;
  let o4 = r * C4;
  let t = targets[p.rowOffset + r];
  ${wgslOnlineMaxSum4(x4, "p.V")}
  let lse = m + log(s);
  var v = 0.0;
  if (t >= 0) {
    if (u32(t) < p.V) { v = ${value}; } else { v = bitcast<f32>(p.nanBits); }
  }
  out[p.rowOffset + r] = v;
  ${backward}
}`;
}

/** One workgroup: count[0] = #(targets >= 0), or loss[0] = sum(losses) / max(count, 1) or sum. */
function statKernel(mode: "count" | "mean"): string {
  const bindings = mode === "count"
    ? ["var<storage, read> targets: array<i32>;", "var<storage, read_write> out: array<f32>;"]
    : [
      "var<storage, read> losses: array<f32>;",
      "var<storage, read> count: array<f32>;",
      "var<storage, read_write> out: array<f32>;",
    ];
  const term = mode === "count" ? "select(0.0, 1.0, targets[j] >= 0)" : "losses[j]";
  const fin = mode === "count"
    ? "sh[0]"
    : "select(sh[0], sh[0] / max(count[0], 1.0), p.mean != 0u)";
  return `${bindings.map((b, i) => `@group(0) @binding(${i}) ${b}`).join("\n")}
struct P { R: u32, mean: u32 }
@group(0) @binding(${bindings.length}) var<uniform> p: P;
var<workgroup> sh: array<f32, ${REDUCE_WG}>;
@compute @workgroup_size(${REDUCE_WG})
fn main(@builtin(local_invocation_index) li: u32) {
  var acc = 0.0;
  for (var j = li; j < p.R; j += ${REDUCE_WG}u) { acc += ${term}; }
  sh[li] = acc;
  for (var h = ${REDUCE_WG / 2}u; h > 0u; h >>= 1u) {
    workgroupBarrier();
    if (li < h) { sh[li] += sh[li + h]; }
  }
  if (li == 0u) { out[0] = ${fin}; }
}`;
}

/** Options of {@link crossEntropy} and {@link crossEntropyLoss}. */
export interface CrossEntropyOptions {
  /** "mean" (default): over rows with target >= 0; "sum": the plain sum. */
  reduction?: "mean" | "sum";
  /** Multiplier of dlogits (e.g. 1/gradAccumSteps). Default 1. */
  gradScale?: number;
  /** Write dlogits over the logits (saves R*V*4 bytes; the logits are lost). Default false. */
  inPlace?: boolean;
  variant?: RowVariant;
}

/** Result of {@link crossEntropy}: every tensor stays on the GPU. */
export interface CrossEntropyResult {
  /** (R) per-row losses, 0 for ignored rows. */
  losses: Tensor;
  /** (1) the mean (or sum) loss. */
  loss: Tensor;
  /** (1) the number of rows with target >= 0, as f32. */
  count: Tensor;
  /** dlogits per logits chunk ((R_i,V) each; `[logits]` itself with `inPlace`). Empty for the loss alone. */
  dlogits: Tensor[];
}

function chunksOf(op: string, logits: Tensor | readonly Tensor[], targets: Tensor) {
  const chunks = Array.isArray(logits) ? [...logits] : [logits as Tensor];
  if (!chunks.length) throw new RangeError(`${op}: logits is an empty list of chunks`);
  const V = chunks[0].shape[chunks[0].shape.length - 1];
  let R = 0;
  chunks.forEach((c, i) => {
    checkF32(op, `logits[${i}]`, c);
    const v = c.shape[c.shape.length - 1];
    if (c.shape.length < 1 || !v || v !== V) {
      throw new RangeError(`${op}: logits chunk ${i} has shape [${c.shape}], expected (R_i,${V})`);
    }
    R += c.size / V;
  });
  if (targets.dtype !== "i32") {
    throw new TypeError(`${op}: targets must be i32, got ${targets.dtype}`);
  }
  if (targets.size !== R) {
    throw new RangeError(
      `${op}: targets has shape [${targets.shape}], expected ${R} elements (one per logits row)`,
    );
  }
  return { chunks, R, V };
}

function run(
  gpu: Gpu,
  op: string,
  mode: Mode,
  logits: Tensor | readonly Tensor[],
  targets: Tensor,
  options: CrossEntropyOptions,
): CrossEntropyResult {
  const { chunks, R, V } = chunksOf(op, logits, targets);
  const { reduction = "mean", gradScale = 1 } = options;
  if (reduction !== "mean" && reduction !== "sum") {
    throw new RangeError(`${op}: reduction must be "mean" or "sum", got ${reduction}`);
  }
  if (!Number.isFinite(gradScale)) {
    throw new RangeError(`${op}: gradScale must be finite, got ${gradScale}`);
  }
  const variant = pickRowVariant(gpu, options.variant, V);
  const mean = reduction === "mean" ? 1 : 0;
  const out = gpu.empty([R]); // (R) losses or log-probs
  const grad = mode === "grad" || mode === "gradInPlace";
  let count: Tensor | null = null;
  if (mode !== "gather") {
    count = gpu.empty([1]);
    const pc = gpu.pipeline("xent|count", () => statKernel("count"));
    gpu.dispatch(pc, [targets, count], new Params().u32(R).u32(0), 1);
  }
  const pipe = gpu.pipeline(
    `xent|${variant}|${mode}`,
    () => variant === "tex" ? rowKernelTex(mode) : rowKernel(variant, mode),
  );
  const dlogits: Tensor[] = [];
  let rowOffset = 0;
  for (const c of chunks) {
    const Rc = c.size / V;
    const bind: (Tensor | GPUTextureView)[] = [
      variant === "tex" ? texelCopy(gpu, c, "xent0").view : c,
      targets,
      out,
    ];
    if (grad) bind.push(count!);
    if (mode === "grad") {
      const d = gpu.empty(c.shape); // (R_i,V)
      bind.push(d);
      dlogits.push(d);
    } else if (mode === "gradInPlace") {
      if (variant === "tex") bind.push(c); // read through the texture, written in place
      dlogits.push(c);
    }
    gpu.dispatch(
      pipe,
      bind,
      new Params().u32(Rc).u32(V).u32(rowOffset).f32(gradScale).u32(mean).u32(NAN_BITS),
      segmentGrid(variant, Rc),
    );
    rowOffset += Rc;
  }
  if (mode === "gather") return { losses: out, loss: out, count: out, dlogits };
  const loss = gpu.empty([1]);
  const pm = gpu.pipeline("xent|mean", () => statKernel("mean"));
  gpu.dispatch(pm, [out, count!, loss], new Params().u32(R).u32(mean), 1);
  return { losses: out, loss, count: count!, dlogits };
}

/**
 * Fused cross-entropy forward and backward (training): logits (R,V) f32 (or a list of row chunks),
 * targets (R) i32 with negative = ignored. Returns per-row losses (R), the loss (1), the counted rows
 * (1) and dlogits (one per chunk).
 *
 * @example
 * ```ts
 * import { crossEntropy } from "@lvm/kernels";
 * import { getGpu } from "@lvm/gpu";
 * const gpu = await getGpu();
 * const logits = gpu.upload([0, 0, 0, 0, 2, 0], [2, 3]);
 * const targets = gpu.upload([1, -1], [2], "i32");
 * const { loss, dlogits } = crossEntropy(gpu, logits, targets);
 * console.log(await gpu.read(loss)); // ~ [1.0986] = log 3 (the second row is ignored)
 * console.log(await gpu.read(dlogits[0])); // ~ [1/3, -2/3, 1/3, 0, 0, 0]
 * ```
 */
export function crossEntropy(
  gpu: Gpu,
  logits: Tensor | readonly Tensor[],
  targets: Tensor,
  options: CrossEntropyOptions = {},
): CrossEntropyResult {
  const mode = options.inPlace ? "gradInPlace" : "grad";
  return run(gpu, "crossEntropy", mode, logits, targets, options);
}

/** Cross-entropy forward only (evaluation): one read of the logits; `dlogits` is empty. */
export function crossEntropyLoss(
  gpu: Gpu,
  logits: Tensor | readonly Tensor[],
  targets: Tensor,
  options: Omit<CrossEntropyOptions, "inPlace" | "gradScale"> = {},
): CrossEntropyResult {
  return run(gpu, "crossEntropyLoss", "loss", logits, targets, options);
}

/**
 * log p(target) per row under softmax over the full last dimension: logits (R,V) f32 (or row
 * chunks), targets (R) i32 -> (R) f32; rows with a negative target give 0.
 */
export function logSoftmaxGather(
  gpu: Gpu,
  logits: Tensor | readonly Tensor[],
  targets: Tensor,
  options: { variant?: RowVariant } = {},
): Tensor {
  return run(gpu, "logSoftmaxGather", "gather", logits, targets, options).losses;
}

/** CPU reference of {@link crossEntropy} (f64 math). */
export function crossEntropyCpu(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  R: number,
  V: number,
  { reduction = "mean", gradScale = 1 }: { reduction?: "mean" | "sum"; gradScale?: number } = {},
): { losses: Float32Array; loss: number; count: number; dlogits: Float32Array } {
  const losses = new Float32Array(R);
  const dlogits = new Float32Array(R * V);
  let count = 0, total = 0;
  for (let r = 0; r < R; r++) if (targets[r] >= 0) count++;
  const g = reduction === "mean" ? gradScale / Math.max(count, 1) : gradScale;
  for (let r = 0; r < R; r++) {
    const t = targets[r];
    if (t < 0) continue;
    let m = -Infinity, s = 0;
    for (let j = 0; j < V; j++) m = Math.max(m, logits[r * V + j]);
    for (let j = 0; j < V; j++) s += Math.exp(logits[r * V + j] - m);
    const lse = m + Math.log(s);
    losses[r] = t < V ? lse - logits[r * V + t] : NaN;
    total += losses[r];
    for (let j = 0; j < V; j++) {
      dlogits[r * V + j] = (Math.exp(logits[r * V + j] - m) / s - (j === t ? 1 : 0)) * g;
    }
  }
  const loss = reduction === "mean" ? total / Math.max(count, 1) : total;
  return { losses, loss, count, dlogits };
}

/** CPU reference of {@link logSoftmaxGather}. */
export function logSoftmaxGatherCpu(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  R: number,
  V: number,
): Float32Array {
  const { losses } = crossEntropyCpu(logits, targets, R, V);
  return losses.map((l, r) => (targets[r] < 0 ? 0 : -l));
}
