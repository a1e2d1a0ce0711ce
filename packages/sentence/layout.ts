/**
 * The layout of a visual sentence: how many tokens one image is (its code grid), how many image
 * codes exist (ids `0..codebookSize-1`), the vocabulary (codes + reserved ids), how many images a
 * sentence holds, and optional special tokens taken from the reserved range.
 *
 * The released LVM uses no special tokens: a sentence is its images' 256-token blocks end to end
 * (`[img1 | img2 | ... | img16]`, 4096 tokens). For new models a layout may add, all optional:
 *
 * ```
 * [begin] img1 [sep] img2 [sep] ... [sep] imgN [end]
 * ```
 * @module
 */

/** How a sentence's tokens are arranged. JSON-serializable; recorded in every dataset index. */
export interface SentenceLayout {
  /** Tokens per image: the tokenizer's code grid (16x16 = 256 for the VQGAN). */
  tokensPerImage: number;
  /** Number of image codes; ids `>= codebookSize` are reserved (8192 for the VQGAN). */
  codebookSize: number;
  /** Codes plus reserved ids: every token id is `< vocabSize` (8292 for the released LVM). */
  vocabSize: number;
  /** Images per sentence; 0 = variable (imported data whose lengths differ). */
  imagesPerSentence: number;
  /** Id placed between consecutive images, or null (default, as the released model). */
  separatorId: number | null;
  /** Id placed before the first image, or null (default). */
  beginId: number | null;
  /** Id placed after the last image, or null (default). */
  endId: number | null;
}

/** Reserved ids after the codes in the released LVM vocabulary (8292 - 8192). */
export const RESERVED_IDS = 100;

/**
 * A layout with the released model's defaults (256 tokens per image, 8192 codes, vocab 8292,
 * 16 images per sentence, no special tokens), overridden by `opts`.
 * @example
 * ```ts
 * import { makeLayout, sentenceLength } from "@lvm/sentence";
 * const layout = makeLayout();
 * console.assert(sentenceLength(layout) === 4096);
 * ```
 */
export function makeLayout(opts: Partial<SentenceLayout> = {}): SentenceLayout {
  const codebookSize = opts.codebookSize ?? 8192;
  const layout: SentenceLayout = {
    tokensPerImage: opts.tokensPerImage ?? 256,
    codebookSize,
    vocabSize: opts.vocabSize ?? codebookSize + RESERVED_IDS,
    imagesPerSentence: opts.imagesPerSentence ?? 16,
    separatorId: opts.separatorId ?? null,
    beginId: opts.beginId ?? null,
    endId: opts.endId ?? null,
  };
  validateLayout(layout);
  return layout;
}

/** Throws a RangeError naming the field when a layout is inconsistent. */
export function validateLayout(layout: SentenceLayout, label = "layout"): void {
  const int = (name: keyof SentenceLayout, min: number) => {
    const v = layout[name];
    if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
      throw new RangeError(`${label}.${name}: expected an integer >= ${min}, found ${v}`);
    }
  };
  int("tokensPerImage", 1);
  int("codebookSize", 1);
  int("vocabSize", layout.codebookSize);
  int("imagesPerSentence", 0);
  const seen = new Set<number>();
  for (const name of ["separatorId", "beginId", "endId"] as const) {
    const v = layout[name];
    if (v === null || v === undefined) continue;
    if (!Number.isInteger(v) || v < layout.codebookSize || v >= layout.vocabSize) {
      throw new RangeError(
        `${label}.${name}: expected a reserved id in [${layout.codebookSize}, ${layout.vocabSize}) ` +
          `(ids below ${layout.codebookSize} are image codes), found ${v}`,
      );
    }
    if (seen.has(v)) throw new RangeError(`${label}.${name}: id ${v} is used twice`);
    seen.add(v);
  }
}

/** Tokens of a sentence with `images` images (default: the layout's images per sentence). */
export function sentenceLength(layout: SentenceLayout, images = layout.imagesPerSentence): number {
  if (images === 0) return 0;
  return (layout.beginId !== null ? 1 : 0) + images * layout.tokensPerImage +
    (layout.separatorId !== null ? images - 1 : 0) + (layout.endId !== null ? 1 : 0);
}

/**
 * Writes one sentence from its images' code blocks (each `tokensPerImage` ids `< codebookSize`)
 * into `out` (default: a new Int32Array of {@link sentenceLength}), adding the layout's special
 * tokens. Throws when a block has the wrong length or holds an id that is not an image code.
 */
export function assembleSentence(
  layout: SentenceLayout,
  blocks: ArrayLike<number>[],
  out: Int32Array = new Int32Array(sentenceLength(layout, blocks.length)),
): Int32Array {
  const t = layout.tokensPerImage;
  if (out.length !== sentenceLength(layout, blocks.length)) {
    throw new RangeError(
      `assembleSentence: output holds ${out.length} tokens, the layout needs ` +
        `${sentenceLength(layout, blocks.length)} for ${blocks.length} images`,
    );
  }
  let o = 0;
  if (layout.beginId !== null) out[o++] = layout.beginId;
  blocks.forEach((b, i) => {
    if (b.length !== t) {
      throw new RangeError(`assembleSentence: image ${i} has ${b.length} codes, expected ${t}`);
    }
    if (i > 0 && layout.separatorId !== null) out[o++] = layout.separatorId;
    for (let k = 0; k < t; k++) {
      const c = b[k];
      if (!(c >= 0 && c < layout.codebookSize)) {
        throw new RangeError(
          `assembleSentence: image ${i} code ${k} is ${c}, expected an id in [0, ${layout.codebookSize})`,
        );
      }
      out[o++] = c;
    }
  });
  if (layout.endId !== null) out[o++] = layout.endId;
  return out;
}

/**
 * Splits a sentence back into its images' code blocks (views into `tokens`), checking the special
 * tokens are where the layout puts them. Inverse of {@link assembleSentence}.
 */
export function splitSentence(layout: SentenceLayout, tokens: Int32Array): Int32Array[] {
  const t = layout.tokensPerImage;
  const b = layout.beginId !== null ? 1 : 0, e = layout.endId !== null ? 1 : 0;
  const s = layout.separatorId !== null ? 1 : 0;
  const n = (tokens.length - b - e + s) / (t + s);
  if (!Number.isInteger(n) || n < 1 || sentenceLength(layout, n) !== tokens.length) {
    throw new RangeError(`splitSentence: ${tokens.length} tokens is not a whole number of images`);
  }
  const expect = (at: number, id: number | null, what: string) => {
    if (id !== null && tokens[at] !== id) {
      throw new RangeError(
        `splitSentence: token ${at} is ${tokens[at]}, expected the ${what} ${id}`,
      );
    }
  };
  expect(0, layout.beginId, "begin id");
  expect(tokens.length - 1, layout.endId, "end id");
  const out: Int32Array[] = [];
  let o = b;
  for (let i = 0; i < n; i++) {
    if (i > 0) {
      expect(o, layout.separatorId, "separator");
      o += s;
    }
    out.push(tokens.subarray(o, o + t));
    o += t;
  }
  return out;
}

/** The token dtype of a dataset with this layout: u16 when every id fits, else i32. */
export function tokenDtype(layout: SentenceLayout): "u16" | "i32" {
  return layout.vocabSize <= 65536 ? "u16" : "i32";
}
