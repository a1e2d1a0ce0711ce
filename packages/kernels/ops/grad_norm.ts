/**
 * The global L2 norm of a list of gradient tensors, on the GPU, and the clipping factor derived from
 * it, as `torch.nn.utils.clip_grad_norm_`: norm = sqrt(sum_i sum(g_i^2)) and
 * scale = min(1, maxNorm / (norm + 1e-6)). Both stay (1) tensors on the GPU: `adamw` reads the scale
 * as its `gradScale`, so clipping costs no CPU readback and no extra pass over the gradients.
 *
 * Each tensor's sum of squares is split into segments written to slots of one partial buffer (one
 * dispatch per tensor, its own slot range, no atomics), then one final segment reduction sums the
 * partials and takes the square root. Variants follow `segmentReduce` (reduce.ts).
 * @module
 */
import { type Gpu, Params } from "../gpu.ts";
import type { Tensor } from "../tensor.ts";
import {
  checkF32,
  pickRowVariant,
  type RowVariant,
  segmentLength,
  segmentReduce,
} from "./reduce.ts";

/** Options of {@link gradNorm}. */
export interface GradNormOptions {
  /** Output (1) f32. */
  out?: Tensor;
  variant?: RowVariant;
}

/** Segments for a tensor of `n` elements: enough lanes/workgroups to fill the adapter. */
function segmentsFor(n: number, variant: RowVariant): number {
  return variant !== "wg"
    ? Math.max(1, Math.min(256, Math.ceil(n / 16384)))
    : Math.max(1, Math.min(1024, Math.ceil(n / 65536)));
}

/**
 * Global L2 norm of `grads` (f32 tensors of any shapes) -> (1) f32 on the GPU.
 *
 * @example
 * ```ts
 * import { getGpu, gradNorm } from "@lvm/kernels";
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
  const { variant } = options; // segmentReduce picks "tex" per tensor where it can
  const family = pickRowVariant(gpu, variant);
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
  const parts = gpu.empty([P]); // (P) partial sums of squares, one slot range per tensor
  let offset = 0;
  live.forEach((g, i) => {
    segmentReduce(gpu, g, "sumsq", { L: lens[i], out: parts, offset, variant });
    offset += Math.ceil(g.size / lens[i]);
  });
  segmentReduce(gpu, parts, "sum", { L: P, out, sqrt: true, variant });
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

/** CPU reference of {@link gradNorm} (f64). */
export function gradNormCpu(grads: readonly ArrayLike<number>[]): number {
  let s = 0;
  for (const g of grads) for (let i = 0; i < g.length; i++) s += g[i] * g[i];
  return Math.sqrt(s);
}

/** CPU reference of {@link clipScale}. */
export function clipScaleCpu(norm: number, maxNorm: number): number {
  return Math.min(1, maxNorm / (norm + 1e-6));
}
