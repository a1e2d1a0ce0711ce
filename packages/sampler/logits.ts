/**
 * Logits processors and token sampling on one row of logits (CPU side: one row of V floats is what a
 * decode step reads back anyway).
 *
 * The order is the official LVM inference code's (Hugging Face `generate` with its defaults):
 * suppress ids >= the image-code count -> temperature -> top-k (default 50, an implicit HF default the
 * official code inherits) -> top-p -> softmax -> multinomial. Greedy takes the arg-max after the
 * suppression (ties -> the lowest id). Semantics follow HF's warpers: top-k keeps every logit equal to
 * the k-th largest; top-p keeps the smallest set of most likely ids whose probability reaches `topP`
 * (at least one).
 *
 * Edge cases, defined the same way as @lvm/kernels' GPU sampler (`sampleLogits`): NaN logits are
 * removed; top-k ranks the raw logits (dividing by T > 0 keeps their order, and f32 rounding of the
 * quotients then cannot create or break a tie at the k-th place); the weights are
 * exp((x - max) / T), with the largest kept logits weighing 1 (so +inf maxima share the
 * probability); a row with no logit above -inf gives id 0, as greedy does.
 * @module
 */
import { Rng } from "@lvm/util";

/** How to pick the next token. */
export interface SamplingOptions {
  /** Arg-max instead of sampling (temperature/top-k/top-p are then irrelevant). */
  greedy?: boolean;
  /** Divides the logits (default 1; must be > 0). */
  temperature?: number;
  /** Keep only the k most likely ids (default 50; 0 disables). */
  topK?: number;
  /** Nucleus threshold in (0, 1] (default 1 = off). */
  topP?: number;
  /** Ids at or above this are never chosen (LVM: 8192, the image-code count). */
  suppressFrom?: number;
}

/** The HF/official default top-k. */
export const DEFAULT_TOP_K = 50;

/** Checks options, returning them with defaults filled in. */
export function resolveOptions(o: SamplingOptions, vocab: number): Required<SamplingOptions> {
  const r = {
    greedy: o.greedy ?? false,
    temperature: o.temperature ?? 1,
    topK: o.topK ?? DEFAULT_TOP_K,
    topP: o.topP ?? 1,
    suppressFrom: o.suppressFrom ?? vocab,
  };
  if (!(r.temperature > 0) || !Number.isFinite(r.temperature)) {
    throw new RangeError(
      `temperature must be > 0 (use greedy for arg-max), found ${r.temperature}`,
    );
  }
  if (!Number.isInteger(r.topK) || r.topK < 0) {
    throw new RangeError(`topK must be a non-negative integer (0 = off), found ${r.topK}`);
  }
  if (!(r.topP > 0 && r.topP <= 1)) throw new RangeError(`topP must be in (0, 1], found ${r.topP}`);
  if (!Number.isInteger(r.suppressFrom) || r.suppressFrom < 1) {
    throw new RangeError(`suppressFrom must be a positive integer, found ${r.suppressFrom}`);
  }
  return r;
}

/**
 * Applies suppression, temperature, top-k and top-p to a copy of `logits` (removed ids become -Infinity).
 * Returns the processed logits, whose softmax is the sampling distribution.
 */
export function processLogits(logits: ArrayLike<number>, options: SamplingOptions): Float32Array {
  const V = logits.length;
  const o = resolveOptions(options, V);
  const n = Math.min(V, o.suppressFrom);
  const out = new Float32Array(V).fill(-Infinity);
  const x = (i: number) => (Number.isNaN(logits[i]) ? -Infinity : logits[i]); // NaN: removed
  for (let i = 0; i < n; i++) out[i] = x(i) / o.temperature;
  if (o.topK > 0 && o.topK < n) {
    // HF TopKLogitsWarper: remove scores < the k-th largest (ties with it survive), ranked on the
    // raw logits (the same order as the scaled ones, without their rounding).
    const sorted = Float64Array.from({ length: n }, (_, i) => x(i)).sort(); // ascending
    const kth = sorted[n - o.topK];
    for (let i = 0; i < n; i++) if (x(i) < kth) out[i] = -Infinity;
  }
  if (o.topP < 1) {
    // HF TopPLogitsWarper: sort ascending, remove ids whose cumulative probability <= 1 - topP,
    // always keeping the most likely one.
    const idx = [...Array(n).keys()].filter((i) => out[i] > -Infinity);
    idx.sort((a, b) => out[a] - out[b] || b - a);
    const probs = softmaxF64(idx.map((i) => out[i]));
    let cum = 0;
    for (let j = 0; j < idx.length - 1; j++) {
      cum += probs[j];
      if (cum <= 1 - o.topP) out[idx[j]] = -Infinity;
    }
  }
  return out;
}

/** Numerically stable softmax in f64 (the host-side distribution of the sampler; @lvm/kernels' `softmax` is the GPU op). */
export function softmaxF64(x: ArrayLike<number>): Float64Array {
  let m = -Infinity;
  for (let i = 0; i < x.length; i++) if (x[i] > m) m = x[i];
  const p = new Float64Array(x.length);
  let s = 0;
  for (let i = 0; i < x.length; i++) s += p[i] = x[i] === -Infinity ? 0 : Math.exp(x[i] - m);
  for (let i = 0; i < x.length; i++) p[i] /= s;
  return p;
}

/** Index of the largest of the first `n` values (ties -> lowest index; NaN never wins). */
export function argmax(x: ArrayLike<number>, n = x.length): number {
  let best = 0, bv = -Infinity;
  for (let i = 0; i < n; i++) {
    if (x[i] > bv) {
      bv = x[i];
      best = i;
    }
  }
  return best;
}

/**
 * Picks one token id from a row of logits: greedy arg-max, or a draw from the processed distribution
 * using `rng` (one `rng.next()` per call). Never returns an id >= `suppressFrom`.
 */
export function sampleToken(
  logits: ArrayLike<number>,
  options: SamplingOptions,
  rng?: Rng,
): number {
  const o = resolveOptions(options, logits.length);
  if (o.greedy) return sampleTokenAt(logits, o, 0);
  if (!rng) throw new TypeError("sampleToken: sampling (greedy false) needs an Rng");
  return sampleTokenAt(logits, o, rng.next());
}

/**
 * {@link sampleToken} with the uniform draw `u` in [0, 1) given (ignored when greedy): the first id,
 * in ascending order, at which the cumulative probability exceeds u.
 */
export function sampleTokenAt(
  logits: ArrayLike<number>,
  options: SamplingOptions,
  u: number,
): number {
  const V = logits.length;
  const o = resolveOptions(options, V);
  const n = Math.min(V, o.suppressFrom);
  if (o.greedy) return argmax(logits, n);
  if (!(u >= 0 && u < 1)) throw new RangeError(`sampleTokenAt: u must be in [0, 1), found ${u}`);
  const kept = processLogits(logits, o); // -inf: removed
  let m = -Infinity;
  for (let i = 0; i < n; i++) if (kept[i] > -Infinity && logits[i] > m) m = logits[i];
  if (m === -Infinity) return argmax(logits, n); // nothing above -inf: id 0
  // Weights from the raw logits, exp((x - m) / T) (x / T could overflow f32); 1 at the max.
  const w = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    if (kept[i] === -Infinity) continue;
    const x = logits[i];
    total += w[i] = x === m ? 1 : m === Infinity ? 0 : Math.exp((x - m) / o.temperature);
  }
  const target = u * total;
  let cum = 0, last = 0;
  for (let i = 0; i < n; i++) {
    if (w[i] === 0) continue;
    last = i;
    cum += w[i];
    if (target < cum) return i;
  }
  return last; // u within rounding of 1
}

/** A reusable sampler: options fixed, its own seeded {@link Rng}. */
export class Sampler {
  readonly rng: Rng;
  constructor(readonly options: SamplingOptions, seed = 0) {
    resolveOptions(options, Math.max(2, options.suppressFrom ?? 2));
    this.rng = new Rng(seed);
  }
  /** Picks the next id from one row of logits. */
  sample(logits: ArrayLike<number>): number {
    return sampleToken(logits, this.options, this.rng);
  }
  /**
   * The uniform draws that `count` calls of {@link sample} would consume, in order (none when
   * greedy), leaving the Rng where those calls would: for samplers that draw elsewhere (the GPU).
   */
  drawUniforms(count: number): Float64Array {
    const greedy = this.options.greedy ?? false;
    return Float64Array.from({ length: greedy ? 0 : count }, () => this.rng.next());
  }
}
