/**
 * Sentence builders: which images, in which order, with which pixel transform, make each visual
 * sentence. They are pure functions of item ids and a seed (no pixels, no files), so a plan of
 * millions of sentences is cheap, identical in every process (`--part I/N`, resume), and each
 * kind's layout is tested exactly.
 *
 * An image in a plan is a *key*: `itemId * VARIANTS + variant`, where the item is one image file
 * or one video/GIF frame (numbered by {@link ItemTable} in sources.ts) and the variant is the
 * pixel transform applied after the squash-resize (see {@link Variant}). A plan is a
 * (sentences, imagesPerSentence) matrix of keys.
 *
 * Kinds (the official data scripts' sentence types, plus pixel-transform analogies):
 * | kind | sentence |
 * |---|---|
 * | sequence | n frames of one video / frame folder / GIF, `stride` apart, random start |
 * | pairs | [x1, y1, ..., xk, yk]: k random pairs of one task (k = n/2) |
 * | colorization | [gray(a), a, gray(b), b, ...] (gray = 0.2989R + 0.5870G + 0.1140B) |
 * | inpainting | [masked(a), a, ...] (a random square or the centre set to 0) |
 * | rotation / flip | [a, t(a), b, t(b), ...], one transform t drawn per sentence |
 * | invert / zoom | [a, t(a), ...]: t = 1 - x / the centre half scaled up 2x |
 * | edges | [a, edges(a), ...]: Sobel gradient magnitude of the gray image (see sources.ts) |
 * | multitask | g scenes x M modalities, modality order shuffled per sentence (g = floor(n/M)) |
 * | classes | n images of one class |
 *
 * Every kind repeats for `epochs` passes (each a fresh grouping, as the official scripts'
 * `n_epochs`); leftovers that do not fill a sentence are dropped (as the official
 * `drop_last=True`). The final plan is shuffled as a whole, so shards are mixed.
 * @module
 */

import { mix, permutation, randInt, rng } from "@lvm/util";

/** Pixel transforms applied to an item after it is squash-resized to the tokenizer resolution. */
export const Variant = {
  original: 0,
  gray: 1,
  masked: 2,
  rot90: 3,
  rot180: 4,
  rot270: 5,
  flipH: 6,
  flipV: 7,
  invert: 8,
  zoom2: 9,
  edges: 10,
} as const;
/** A variant id (0..VARIANTS-1). */
export type VariantId = (typeof Variant)[keyof typeof Variant];
/** Keys reserve this many variant slots per item. */
export const VARIANTS = 16;

/** Key of item `item` with transform `variant`. */
export function imageKey(item: number, variant: number = Variant.original): number {
  return item * VARIANTS + variant;
}
/** Item id of a key. */
export function keyItem(key: number): number {
  return Math.floor(key / VARIANTS);
}
/** Variant of a key. */
export function keyVariant(key: number): number {
  return key % VARIANTS;
}

/**
 * Sentences as rows of image keys.
 *
 * Memory: 8 bytes per image slot (sentences x images per sentence), e.g. 160 MB for 20 million
 * slots; planning builds the rows straight into one growing Float64Array (no per-sentence
 * arrays), and shuffling makes one copy.
 */
export interface Plan {
  /** Images in every sentence of the plan. */
  imagesPerSentence: number;
  /** Number of sentences. */
  count: number;
  /** (count, imagesPerSentence) image keys, row-major. */
  keys: Float64Array;
}

/** Options shared by every builder. */
export interface PlanOptions {
  /** Images per sentence (16 in the released data). */
  imagesPerSentence: number;
  /** Passes over the data, each a new random grouping (default 1). */
  epochs?: number;
  /** Seed of every random choice (default 0). */
  seed?: number;
}

/** Rows of `n` keys appended into one growing Float64Array (8 bytes per key, no row objects). */
class Rows {
  #keys = new Float64Array(1024);
  count = 0;
  constructor(readonly n: number) {}
  push(r: ArrayLike<number>): void {
    if (r.length !== this.n) {
      throw new Error(`internal: sentence ${this.count} has ${r.length} images, not ${this.n}`);
    }
    if ((this.count + 1) * this.n > this.#keys.length) {
      const k = new Float64Array(Math.max(2 * this.#keys.length, (this.count + 1) * this.n));
      k.set(this.#keys);
      this.#keys = k;
    }
    for (let i = 0; i < this.n; i++) this.#keys[this.count * this.n + i] = r[i];
    this.count++;
  }
  plan(): Plan {
    const keys = this.#keys.slice(0, this.count * this.n);
    return { imagesPerSentence: this.n, count: this.count, keys };
  }
}

function checkCommon(fn: string, o: PlanOptions, minImages = 1): Required<PlanOptions> {
  const n = o.imagesPerSentence, epochs = o.epochs ?? 1, seed = o.seed ?? 0;
  if (!Number.isInteger(n) || n < minImages) {
    throw new RangeError(`${fn}: imagesPerSentence must be an integer >= ${minImages}, found ${n}`);
  }
  if (!Number.isInteger(epochs) || epochs < 1) {
    throw new RangeError(`${fn}: epochs must be a positive integer, found ${epochs}`);
  }
  if (!Number.isInteger(seed)) {
    throw new RangeError(`${fn}: seed must be an integer, found ${seed}`);
  }
  return { imagesPerSentence: n, epochs, seed };
}

// Salts keep the random streams of different choices apart.
const SALT = { window: 1, group: 2, order: 3, variant: 4, shuffle: 5 } as const;

/** A frame sequence: `frames` consecutive item ids starting at `first`. */
export interface FrameSequence {
  first: number;
  frames: number;
  /** Frame step inside a sentence (default 1). */
  stride?: number;
}

/**
 * Sequence sentences: from each source of N frames, windows of n frames `stride` apart
 * (span = (n-1)*stride + 1), laid end to end without overlap after a random start offset (the
 * slack N - count*span spread at random), count = floor(N / span). A new offset per epoch.
 * Sources shorter than one span give no sentence.
 */
export function planSequences(seqs: FrameSequence[], opts: PlanOptions): Plan {
  const { imagesPerSentence: n, epochs, seed } = checkCommon("planSequences", opts);
  const out = new Rows(n);
  for (let e = 0; e < epochs; e++) {
    seqs.forEach((s, si) => {
      const stride = s.stride ?? 1;
      if (!Number.isInteger(stride) || stride < 1) {
        throw new RangeError(`planSequences: stride must be a positive integer, found ${stride}`);
      }
      const span = (n - 1) * stride + 1;
      const count = Math.floor(s.frames / span);
      if (count === 0) return;
      const r = rng(seed, SALT.window, e, si);
      const start = randInt(r, s.frames - count * span + 1);
      for (let w = 0; w < count; w++) {
        const row: number[] = [];
        for (let i = 0; i < n; i++) row.push(imageKey(s.first + start + w * span + i * stride));
        out.push(row);
      }
    });
  }
  return out.plan();
}

/**
 * Groups of `size` drawn from a random permutation of `items` per epoch (leftover dropped),
 * generated one epoch's permutation at a time (4 bytes per item).
 */
function* groups(
  count: number,
  size: number,
  epochs: number,
  seed: number,
  salt: number[],
): Generator<Uint32Array> {
  for (let e = 0; e < epochs; e++) {
    const p = permutation(count, rng(seed, SALT.group, e, ...salt));
    for (let g = 0; g + size <= count; g += size) yield p.subarray(g, g + size);
  }
}

/** A task of paired images: `x[i]` and `y[i]` are item ids of the i-th pair. */
export interface PairTask {
  x: number[];
  y: number[];
}

/**
 * Analogy sentences [x1, y1, ..., xk, yk], k = n/2 pairs of one task drawn at random (a new
 * grouping per epoch; tasks never mix in a sentence).
 */
export function planPairs(tasks: PairTask[], opts: PlanOptions): Plan {
  const { imagesPerSentence: n, epochs, seed } = checkCommon("planPairs", opts, 2);
  if (n % 2) throw new RangeError(`planPairs: imagesPerSentence must be even, found ${n}`);
  const out = new Rows(n);
  tasks.forEach((t, ti) => {
    if (t.x.length !== t.y.length) {
      throw new RangeError(
        `planPairs: task ${ti} has ${t.x.length} inputs but ${t.y.length} targets`,
      );
    }
    for (const g of groups(t.x.length, n / 2, epochs, seed, [ti])) {
      const row: number[] = [];
      for (const i of g) row.push(imageKey(t.x[i]), imageKey(t.y[i]));
      out.push(row);
    }
  });
  return out.plan();
}

/** The transform kinds computed from plain images, with the variants each may draw from. */
export const DERIVED_TASKS: Record<string, { variants: VariantId[]; targetFirst: boolean }> = {
  // [gray, color]: the derived image is the *input*, the original the target.
  colorization: { variants: [Variant.gray], targetFirst: false },
  inpainting: { variants: [Variant.masked], targetFirst: false },
  // [image, transformed]: the original is the input.
  rotation: { variants: [Variant.rot90, Variant.rot180, Variant.rot270], targetFirst: true },
  flip: { variants: [Variant.flipH, Variant.flipV], targetFirst: true },
  invert: { variants: [Variant.invert], targetFirst: true },
  zoom: { variants: [Variant.zoom2], targetFirst: true },
  edges: { variants: [Variant.edges], targetFirst: true },
};

/**
 * Derived-task sentences from plain images, k = n/2 images each: colorization
 * [gray(a), a, gray(b), b, ...], inpainting [masked(a), a, ...], rotation/flip/invert/zoom/edges
 * [a, t(a), b, t(b), ...] with one transform t drawn per sentence (so the sentence states one task).
 */
export function planDerived(task: string, items: number[], opts: PlanOptions): Plan {
  const spec = DERIVED_TASKS[task];
  if (!spec) {
    throw new RangeError(
      `planDerived: unknown task "${task}", expected one of ${
        Object.keys(DERIVED_TASKS).join(", ")
      }`,
    );
  }
  const { imagesPerSentence: n, epochs, seed } = checkCommon("planDerived", opts, 2);
  if (n % 2) throw new RangeError(`planDerived: imagesPerSentence must be even, found ${n}`);
  const out = new Rows(n);
  let gi = 0;
  for (const g of groups(items.length, n / 2, epochs, seed, [0])) {
    const v = spec.variants[randInt(rng(seed, SALT.variant, gi++), spec.variants.length)];
    const row: number[] = [];
    for (const i of g) {
      const a = imageKey(items[i]), t = imageKey(items[i], v);
      if (spec.targetFirst) row.push(a, t);
      else row.push(t, a);
    }
    out.push(row);
  }
  return out.plan();
}

/**
 * Multi-task sentences: `scenes[i]` holds the item ids of scene i's M modalities (same order for
 * every scene). A sentence is g = floor(n/M) random scenes, each scene's M images in one
 * modality order drawn per sentence (the official `shuffle_tasks`). Images per sentence: g*M.
 */
export function planMultitask(scenes: number[][], opts: PlanOptions): Plan {
  const { imagesPerSentence: n, epochs, seed } = checkCommon("planMultitask", opts);
  const M = scenes[0]?.length ?? 0;
  if (M < 1) return new Rows(n).plan();
  if (M > n) {
    throw new RangeError(`planMultitask: ${M} modalities do not fit in ${n} images per sentence`);
  }
  scenes.forEach((s, i) => {
    if (s.length !== M) {
      throw new RangeError(`planMultitask: scene ${i} has ${s.length} modalities, expected ${M}`);
    }
  });
  const g = Math.floor(n / M);
  const out = new Rows(g * M);
  let gi = 0;
  for (const grp of groups(scenes.length, g, epochs, seed, [0])) {
    const order = permutation(M, rng(seed, SALT.order, gi++));
    const row: number[] = [];
    for (const s of grp) for (const m of order) row.push(imageKey(scenes[s][m]));
    out.push(row);
  }
  return out.plan();
}

/** Same-class sentences: n random images of one class (`classes[c]` = its item ids). */
export function planClasses(classes: number[][], opts: PlanOptions): Plan {
  const { imagesPerSentence: n, epochs, seed } = checkCommon("planClasses", opts);
  const out = new Rows(n);
  classes.forEach((items, ci) => {
    for (const g of groups(items.length, n, epochs, seed, [ci])) {
      out.push([...g].map((i) => imageKey(items[i])));
    }
  });
  return out.plan();
}

/** The plan's sentences in a seeded random order (so shards mix sources and epochs). */
export function shufflePlan(plan: Plan, seed = 0): Plan {
  const n = plan.imagesPerSentence;
  const p = permutation(plan.count, rng(seed, SALT.shuffle));
  const keys = new Float64Array(plan.keys.length);
  for (let i = 0; i < plan.count; i++) keys.set(plan.keys.subarray(p[i] * n, p[i] * n + n), i * n);
  return { imagesPerSentence: n, count: plan.count, keys };
}

/** Sentences [from, to) of a plan (a view). */
export function slicePlan(plan: Plan, from: number, to: number): Plan {
  const n = plan.imagesPerSentence;
  return { imagesPerSentence: n, count: to - from, keys: plan.keys.subarray(from * n, to * n) };
}

/**
 * The sentence range of part `part` (1-based) of `parts`: contiguous, disjoint, covering the
 * whole plan, sizes differing by at most one.
 */
export function partRange(count: number, part: number, parts: number): [number, number] {
  if (
    !Number.isInteger(parts) || parts < 1 || !Number.isInteger(part) || part < 1 || part > parts
  ) {
    throw new RangeError(`part: expected I/N with 1 <= I <= N, found ${part}/${parts}`);
  }
  return [Math.floor(((part - 1) * count) / parts), Math.floor((part * count) / parts)];
}

/** Seed-derived u32 for an item's own random choices (the inpainting mask). */
export function itemSeed(seed: number, item: number): number {
  return mix(seed, 6, item);
}
