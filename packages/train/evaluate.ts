/**
 * Evaluation of a model on a dataset split:
 *
 * - {@link evaluateLoss}: the training objective on held-out data: mean next-token cross-entropy
 *   over every token of packed rows of T tokens (as training sees them), and perplexity =
 *   exp(mean loss).
 * - {@link evaluateImagePerplexity}: the official LVM evaluation (LVM.md, "Evaluation"): each
 *   sentence is one example, run in one forward pass (positions from 0); the last image's tokens
 *   are scored given everything before them (log-softmax over the full vocabulary); per-example
 *   perplexity = exp(mean NLL over that image's tokens, 256 for the VQGAN); the score is the mean
 *   of the per-example perplexities (not the exp of the mean NLL, which is also reported).
 *
 * The split is the loader's stable hash split (`valFraction`, `splitSeed`): pass the values the
 * model was trained with (saved in its `trainer_state.json`) so no training sentence is scored.
 * @module
 */
import { crossEntropyLoss } from "@lvm/kernels";
import type { Gpu, Tensor } from "@lvm/gpu";
import { imagesIn, TokenDataset, TokenLoader } from "@lvm/sentence";
import type { Llama } from "@lvm/transformer";

/** Which sentences to evaluate. */
export interface SplitOptions {
  /** "val" (default), "train" or "all". */
  split?: "train" | "val" | "all";
  /** Validation fraction of the split (default 0.01, the loader's default). */
  valFraction?: number;
  /** Seed of the split (default 0). */
  splitSeed?: number;
}

/** Options of {@link evaluateLoss}. */
export interface LossEvalOptions extends SplitOptions {
  /** T: tokens per packed row (default min(4096, maxPositions)). */
  seq?: number;
  /** B: rows per forward pass (default 1). */
  batch?: number;
  /** Most batches (default: the whole split, one epoch). */
  maxBatches?: number;
}

/** Result of {@link evaluateLoss}. */
export interface LossEvalResult {
  /** Mean next-token cross-entropy (nats) over the scored tokens. */
  loss: number;
  /** exp(loss). */
  perplexity: number;
  /** Tokens scored. */
  tokens: number;
  /** Forward passes run. */
  batches: number;
}

/** Opens `data` (a folder or an open dataset) and checks its ids fit the model's vocabulary. */
async function openFor(model: Llama, data: string | TokenDataset): Promise<TokenDataset> {
  const ds = typeof data === "string" ? await TokenDataset.open(data) : data;
  if (ds.layout.vocabSize > model.config.vocab) {
    throw new RangeError(
      `${ds.dir}: the dataset's vocabulary (${ds.layout.vocabSize} ids) does not fit the model's ` +
        `${model.config.vocab}`,
    );
  }
  return ds;
}

/** Number of sentences of `ds` in a loader's split. */
function splitSize(loader: TokenLoader): number {
  let n = 0;
  for (let g = 0; g < loader.ds.sentences; g++) if (loader.inSplit(g)) n++;
  return n;
}

/** Targets with padding (mask 0) set to -1, the ignore index of the loss kernels. */
export function maskedTargets(targets: Int32Array, mask: Uint8Array): Int32Array {
  const out = new Int32Array(targets.length);
  for (let i = 0; i < targets.length; i++) out[i] = mask[i] ? targets[i] : -1;
  return out;
}

/**
 * Mean loss and perplexity of `model` on packed rows of a split. Returns null when the split holds
 * no sentence (e.g. valFraction 0).
 *
 * @example
 * ```ts ignore
 * const r = await evaluateLoss(model, "out/data", { seq: 4096, maxBatches: 16 });
 * console.log(r?.loss, r?.perplexity);
 * ```
 */
export async function evaluateLoss(
  model: Llama,
  data: string | TokenDataset,
  options: LossEvalOptions = {},
): Promise<LossEvalResult | null> {
  const ds = await openFor(model, data);
  const T = options.seq ?? Math.min(4096, model.config.maxPositions);
  const B = options.batch ?? 1;
  const loader = await TokenLoader.open(ds, {
    rowTokens: T,
    batchRows: B,
    split: options.split ?? "val",
    valFraction: options.valFraction ?? 0.01,
    splitSeed: options.splitSeed ?? 0,
    shuffle: false,
    epochs: 1,
  });
  if (splitSize(loader) === 0) return null;
  const gpu = model.gpu;
  let sum = 0, tokens = 0, batches = 0;
  const max = options.maxBatches ?? Infinity;
  while (batches < max) {
    const b = await loader.next();
    if (!b) break;
    let count = 0;
    for (let i = 0; i < b.mask.length; i++) count += b.mask[i];
    if (count === 0) break;
    const { loss } = model.forward({
      B,
      T,
      inputs: b.inputs,
      targets: maskedTargets(b.targets, b.mask),
    });
    const l = (await gpu.read(loss!))[0];
    loss!.release();
    sum += l * count;
    tokens += count;
    batches++;
  }
  if (tokens === 0) return null;
  const mean = sum / tokens;
  return { loss: mean, perplexity: Math.exp(mean), tokens, batches };
}

/** Options of {@link evaluateImagePerplexity}. */
export interface ImageEvalOptions extends SplitOptions {
  /** Sentences per forward pass (default: as many as fit 4096 tokens, at least 1). */
  batch?: number;
  /** Most examples scored (default: every sentence of the split). */
  maxExamples?: number;
}

/** Result of {@link evaluateImagePerplexity}. */
export interface ImageEvalResult {
  /** Mean over examples of exp(mean NLL of the target image's tokens): the official score. */
  image_perplexity: number;
  /** Mean over examples of the target image's mean NLL (nats per token). */
  image_nll: number;
  /** Examples scored. */
  examples: number;
  /** Tokens per target image. */
  image_tokens: number;
  /** Sentences of the split not scored: fewer than 2 images, or longer than the model's context. */
  skipped: number;
}

/** Longest sentence of a dataset (from its index, no shard read). */
function longestSentence(ds: TokenDataset): number {
  let max = 0;
  for (const r of ds.index.shards) {
    if (r.sentenceTokens !== undefined) max = Math.max(max, r.sentenceTokens);
    else if (r.offsets) {
      for (let i = 0; i < r.sentences; i++) max = Math.max(max, r.offsets[i + 1] - r.offsets[i]);
    }
  }
  return max;
}

/**
 * The official per-example target-image perplexity over a split: every sentence of at least two
 * images is one example; its last image is scored given the images before it. Returns null when
 * no sentence of the split qualifies.
 */
export async function evaluateImagePerplexity(
  model: Llama,
  data: string | TokenDataset,
  options: ImageEvalOptions = {},
): Promise<ImageEvalResult | null> {
  const ds = await openFor(model, data);
  const layout = ds.layout;
  const tpi = layout.tokensPerImage;
  const endTokens = layout.endId !== null ? 1 : 0;
  const T = Math.min(longestSentence(ds), model.config.maxPositions);
  if (T < 2) return null;
  const B = options.batch ?? Math.max(1, Math.floor(4096 / T));
  const loader = await TokenLoader.open(ds, {
    rowTokens: T,
    batchRows: B,
    packing: "sentence",
    split: options.split ?? "val",
    valFraction: options.valFraction ?? 0.01,
    splitSeed: options.splitSeed ?? 0,
    shuffle: false,
    epochs: 1,
  });
  if (splitSize(loader) === 0) return null;
  const gpu: Gpu = model.gpu;
  const max = options.maxExamples ?? Infinity;
  let examples = 0, skipped = 0, pplSum = 0, nllSum = 0;
  while (examples < max) {
    const b = await loader.next();
    if (!b) break;
    // Per row: the sentence length L (count of scored positions + 1; all T scored = truncated),
    // and the positions predicting the last image, [L - end - tpi - 1, L - end - 1).
    const targets = new Int32Array(B * T).fill(-1);
    const rows: { r: number; from: number }[] = [];
    let rowsSeen = 0;
    for (let r = 0; r < B; r++) {
      let count = 0;
      for (let i = 0; i < T; i++) count += b.mask[r * T + i];
      if (count === 0 && b.inputs.subarray(r * T, r * T + T).every((x) => x === 0)) continue;
      rowsSeen++;
      const L = count + 1;
      if (count === T || imagesIn(layout, L) < 2 || examples + rows.length >= max) {
        skipped += count === T || imagesIn(layout, L) < 2 ? 1 : 0;
        continue;
      }
      const from = L - endTokens - tpi - 1;
      for (let p = from; p < from + tpi; p++) targets[r * T + p] = b.targets[r * T + p];
      rows.push({ r, from });
    }
    if (rowsSeen === 0) break;
    if (!rows.length) continue;
    const { logits } = model.forward({ B, T, inputs: b.inputs });
    const tgt = gpu.upload(targets, [B * T], "i32");
    const ce = crossEntropyLoss(gpu, logits!, tgt);
    const losses = await gpu.readF32(ce.losses);
    for (const t of [tgt, ce.loss, ce.losses, ce.count, ...logits!] as Tensor[]) t.release();
    for (const { r, from } of rows) {
      let s = 0;
      for (let p = from; p < from + tpi; p++) s += losses[r * T + p];
      const nll = s / tpi;
      nllSum += nll;
      pplSum += Math.exp(nll);
      examples++;
    }
  }
  if (examples === 0) return null;
  return {
    image_perplexity: pplSum / examples,
    image_nll: nllSum / examples,
    examples,
    image_tokens: tpi,
    skipped,
  };
}
