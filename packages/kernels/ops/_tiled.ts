/**
 * Host-side plumbing shared by the tiled GEMMs (matmul.ts's `tiled` variant and conv2d_gemm.ts's
 * implicit-GEMM convolutions; private to ops/): the one-element tensor bound where a kernel's
 * binding is unused, and split-K's slice plan and summing pass.
 * @module
 */
import { type Gpu, grid, Params, type Tensor } from "@lvm/gpu";
import { splitSumKernel, type TileConfig } from "./_matmul_kernels.ts";

const unused = new WeakMap<Gpu, Tensor>();

/**
 * A 4-byte zero tensor, one per context, bound where a kernel declares a binding it will not read
 * (an absent bias, residual or prologue).
 */
export function unusedBinding(gpu: Gpu): Tensor {
  let d = unused.get(gpu);
  if (!d) unused.set(gpu, d = gpu.zeros([1]));
  return d;
}

/**
 * K cut into `slices` chunks of whole BK stages: the chunk length and the slices that result (fewer
 * than asked when K is short; 1 means no split).
 */
export function splitPlan(
  K: number,
  slices: number,
  t: TileConfig,
): { kChunk: number; nSplit: number } {
  const kChunk = Math.ceil(K / slices / t.BK) * t.BK;
  return { kChunk, nSplit: Math.ceil(K / kChunk) };
}

/**
 * Split-K's second pass: out[i] = alpha * (sum of the nSplit slices of `parts` at i, in slice
 * order) (+ bias[i % N]) (+ out[i]) for `total` outputs (epilogue `flags` as matmul's); releases
 * `parts`.
 */
export function sumSplits(
  gpu: Gpu,
  parts: Tensor,
  out: Tensor,
  o: { total: number; N: number; nSplit: number; alpha?: number; flags?: number; bias?: Tensor },
): void {
  const q = new Params().u32(o.total).u32(o.N).u32(o.nSplit).f32(o.alpha ?? 1).u32(o.flags ?? 0);
  gpu.dispatch(
    gpu.pipeline("matmul/splitsum", splitSumKernel),
    [parts, o.bias ?? unusedBinding(gpu), out],
    q,
    grid(Math.ceil(o.total / 256)),
  );
  parts.release();
}
