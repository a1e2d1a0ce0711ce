/**
 * The sentence kinds a dataset can be built from: each scans its inputs into items
 * (sources.ts) and plans its sentences (builders.ts). The plan is shuffled as a whole.
 * @module
 */

import {
  DERIVED_TASKS,
  type Plan,
  planClasses,
  planDerived,
  planMultitask,
  planPairs,
  planSequences,
  shufflePlan,
} from "./builders.ts";
import {
  InputError,
  type ItemTable,
  scanClasses,
  scanImages,
  scanMultitask,
  scanPairs,
  scanSequences,
} from "./sources.ts";

/** Options of a kind's plan (normalized values are recorded in the index). */
export interface KindOptions {
  /** Images per sentence (default 16: 4096 tokens with the VQGAN). */
  imagesPerSentence?: number;
  /** Passes over the inputs, each a fresh random grouping (default 1). */
  epochs?: number;
  /** Seed of every random choice (default 0). */
  seed?: number;
  /** sequence: frame step; default 8 for videos (official), 1 for frame folders and GIFs. */
  stride?: number;
  /** inpainting: "random" square (default, official hole mode) or "center". */
  mask?: "random" | "center";
}

/** The kinds, with one line each for usage texts. */
export const KINDS: Record<string, string> = {
  sequence: "video frames (stride, random start), ordered frame folders, GIFs",
  pairs: "[x1,y1,...,xk,yk] from paired folders X_DIR Y_DIR (matched by file stem)",
  colorization: "[gray,color] x k from plain images",
  inpainting: "[masked,original] x k from plain images (random square or centre hole)",
  rotation: "[image,rotated] x k, one rotation (90/180/270) per sentence",
  flip: "[image,flipped] x k, one flip (left-right / top-bottom) per sentence",
  invert: "[image,inverted] x k",
  zoom: "[image,centre half zoomed 2x] x k",
  edges: "[image,edge map] x k (Sobel gradient magnitude of the gray image)",
  multitask: "scenes x modalities from one folder per modality, order shuffled per sentence",
  classes: "n images of one class from a root whose sub-folders are classes",
};

/** A kind's scanned items and shuffled plan. */
export interface KindPlan {
  table: ItemTable;
  plan: Plan;
  /** The options as used (defaults filled in). */
  options: Required<Omit<KindOptions, "stride" | "mask">> & { stride?: number; mask?: string };
  /** Human remarks (skipped sources, unmatched files). */
  notes: string[];
}

/** Scans `inputs` and plans the sentences of `kind`; `signal` interrupts the scan. */
export async function planKind(
  kind: string,
  inputs: string[],
  opts: KindOptions = {},
  signal?: AbortSignal,
): Promise<KindPlan> {
  if (!(kind in KINDS)) {
    throw new RangeError(
      `unknown kind "${kind}", expected one of ${Object.keys(KINDS).join(", ")}`,
    );
  }
  if (!inputs.length) throw new InputError("--input", "no inputs given");
  const base = {
    imagesPerSentence: opts.imagesPerSentence ?? 16,
    epochs: opts.epochs ?? 1,
    seed: opts.seed ?? 0,
  };
  const notes: string[] = [];
  let table: ItemTable;
  let plan: Plan;
  const options: KindPlan["options"] = { ...base };
  if (kind === "sequence") {
    const s = await scanSequences(inputs, undefined, signal);
    table = s.table;
    if (opts.stride !== undefined) options.stride = opts.stride;
    plan = planSequences(
      s.sequences.map(({ source, first }) => ({
        first,
        frames: source.count,
        stride: opts.stride ?? (source.type === "video" ? 8 : 1),
      })),
      base,
    );
    for (const { source } of s.sequences) {
      const stride = opts.stride ?? (source.type === "video" ? 8 : 1);
      const span = (base.imagesPerSentence - 1) * stride + 1;
      if (source.count < span) {
        notes.push(
          `${source.path}: ${source.count} frames < ${span} (one sentence at stride ${stride}): skipped`,
        );
      }
    }
  } else if (kind === "pairs") {
    const s = await scanPairs(inputs, undefined, signal);
    table = s.table;
    if (s.unmatched) notes.push(`${s.unmatched} images without a partner skipped`);
    plan = planPairs(s.tasks, base);
  } else if (kind in DERIVED_TASKS) {
    const s = await scanImages(inputs, undefined, signal);
    table = s.table;
    if (kind === "inpainting") options.mask = opts.mask ?? "random";
    plan = planDerived(kind, s.items, base);
  } else if (kind === "multitask") {
    const s = await scanMultitask(inputs, undefined, signal);
    table = s.table;
    if (s.unmatched) notes.push(`${s.unmatched} images of incomplete scenes skipped`);
    plan = planMultitask(s.scenes, base);
  } else {
    const s = await scanClasses(inputs, undefined, signal);
    table = s.table;
    plan = planClasses(s.classes, base);
  }
  if (plan.count === 0) notes.push("the inputs give no complete sentence");
  return { table, plan: shufflePlan(plan, base.seed), options, notes };
}
