/**
 * The token-by-token generation loop over any decoder with a KV cache: prefill the prompt, then one
 * decode step per new token. On the CPU path each step reads back one row of logits and the
 * {@link Sampler} chooses the next id; a decoder that samples on the GPU ({@link GpuTokenDecoder})
 * chains the steps there instead and reads back only the ids, with the same results.
 * @module
 */
import { gpuPath } from "./gpu.ts";
import type { Sampler } from "./logits.ts";

/** A model session that keeps its own cache (see @lvm/transformer's `DecodeSession`). */
export interface TokenDecoder {
  /** Runs the prompt; resolves to the logits (V) of the next token. */
  prefill(ids: readonly number[]): Promise<Float32Array>;
  /** Appends one id; resolves to the logits (V) of the token after it. */
  step(id: number): Promise<Float32Array>;
}

/** Options of {@link generateTokens}. */
export interface GenerateTokensOptions {
  /**
   * Sample on the CPU even when the decoder can sample on the GPU (default false: the GPU path
   * whenever the decoder offers it and the options are greedy or have top-p off).
   */
  cpuSampling?: boolean;
}

/**
 * Generates exactly `maxNewTokens` ids after `prompt` (no early stop: LVM's eos id 2 is a valid image
 * code). The last id is never fed back, so N tokens cost one prefill and N-1 steps.
 * `onToken(id, i)` is called as each id is chosen (for progress output; on the GPU path, for each id
 * of a chunk as the chunk is read back).
 */
export async function generateTokens(
  decoder: TokenDecoder,
  prompt: readonly number[],
  maxNewTokens: number,
  sampler: Sampler,
  onToken?: (id: number, i: number) => void,
  options: GenerateTokensOptions = {},
): Promise<number[]> {
  if (!Number.isInteger(maxNewTokens) || maxNewTokens < 0) {
    throw new RangeError(`maxNewTokens must be a non-negative integer, found ${maxNewTokens}`);
  }
  if (prompt.length === 0) throw new RangeError("generateTokens: the prompt needs at least one id");
  const out: number[] = [];
  if (maxNewTokens === 0) return out;
  const gpu = gpuPath(decoder, sampler, options.cpuSampling);
  if (gpu) {
    gpu.decoder.append(prompt);
    const ids = await gpu.decoder.sampleOnGpu(maxNewTokens, gpu.sampling, {
      uniforms: sampler.drawUniforms(maxNewTokens),
      onIds: (chunk, first) => chunk.forEach((id, k) => onToken?.(id, first + k)),
    });
    return [...ids];
  }
  let logits = await decoder.prefill(prompt);
  for (let i = 0; i < maxNewTokens; i++) {
    const id = sampler.sample(logits);
    out.push(id);
    onToken?.(id, i);
    if (i + 1 < maxNewTokens) logits = await decoder.step(id);
  }
  return out;
}

/** Negative mean log-likelihood and perplexity of per-token log-probabilities (natural log). */
export function perplexity(logprobs: ArrayLike<number>): { nll: number; perplexity: number } {
  if (logprobs.length === 0) throw new RangeError("perplexity: needs at least one log-probability");
  let s = 0;
  for (let i = 0; i < logprobs.length; i++) s += logprobs[i];
  const nll = -s / logprobs.length;
  return { nll, perplexity: Math.exp(nll) };
}
