/**
 * The GPU-sampling extension of a {@link TokenDecoder}: a decoder that keeps its next-token logits on
 * the GPU and chooses ids there (see @lvm/transformer's `DecodeSession.sampleOnGpu`), chaining decode
 * steps without a CPU round trip per token. Duck-typed, so this package needs no GPU code:
 * {@link generateTokens} and {@link generateImages} take the GPU path whenever the decoder offers it
 * and the options allow it (greedy, or top-p off), with uniforms drawn from the {@link Sampler}'s own
 * Rng in the same order as the CPU path, so both paths choose the same ids (greedy exactly; sampling
 * except when a draw lies within f32 rounding of a cumulative-probability boundary) and leave the
 * sampler in the same state.
 * @module
 */
import type { TokenDecoder } from "./generate.ts";
import { resolveOptions, type Sampler } from "./logits.ts";

/** How a {@link GpuTokenDecoder} chooses ids: the subset of `SamplingOptions` without top-p. */
export interface GpuSampling {
  greedy?: boolean;
  temperature?: number;
  topK?: number;
  suppressFrom?: number;
}

/** Options of {@link GpuTokenDecoder.sampleOnGpu}. */
export interface GpuSampleOptions {
  /** One uniform draw in [0, 1) per token, in order (needed unless greedy). */
  uniforms?: ArrayLike<number>;
  /** Also run the last chosen id through the model (default false). */
  feedLast?: boolean;
  /** Called with each chunk of ids as it is read back: the ids and the index of the first. */
  onIds?: (ids: Int32Array, first: number) => void;
  /** Ids per read-back (the decoder's default when absent). */
  readEvery?: number;
}

/** A decoder that can also choose ids on the GPU. */
export interface GpuTokenDecoder extends TokenDecoder {
  /** Runs ids into the cache, keeping the next-token logits on the GPU (no read back). */
  append(ids: readonly number[]): void;
  /**
   * Chooses `count` ids from the pending logits, running each but the last (all with `feedLast`)
   * through the model; resolves to the ids.
   */
  sampleOnGpu(
    count: number,
    sampling: GpuSampling,
    options: GpuSampleOptions,
  ): Promise<Int32Array>;
}

/** `decoder` as a {@link GpuTokenDecoder} when it has the methods, else null. */
export function asGpuDecoder(decoder: TokenDecoder): GpuTokenDecoder | null {
  const d = decoder as Partial<GpuTokenDecoder>;
  return typeof d.sampleOnGpu === "function" && typeof d.append === "function"
    ? decoder as GpuTokenDecoder
    : null;
}

/** The GPU form of a sampler's options, or null when the GPU sampler cannot do them (top-p < 1). */
export function gpuSampling(sampler: Sampler): GpuSampling | null {
  const o = sampler.options;
  const r = resolveOptions(o, o.suppressFrom ?? 2);
  if (!r.greedy && r.topP < 1) return null;
  return {
    greedy: r.greedy,
    temperature: r.temperature,
    topK: r.topK,
    suppressFrom: o.suppressFrom,
  };
}

/** The decoder and options of the GPU path, or null for the CPU path (forced, or not possible). */
export function gpuPath(
  decoder: TokenDecoder,
  sampler: Sampler,
  cpuSampling = false,
): { decoder: GpuTokenDecoder; sampling: GpuSampling } | null {
  if (cpuSampling) return null;
  const d = asGpuDecoder(decoder);
  const sampling = d && gpuSampling(sampler);
  return d && sampling ? { decoder: d, sampling } : null;
}
