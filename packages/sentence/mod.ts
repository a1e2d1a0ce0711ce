/**
 * @lvm/sentence: visual sentences and the data pipeline.
 *
 * - layout.ts: {@link SentenceLayout} (tokens per image, codes, vocab, images per sentence,
 *   optional begin/separator/end ids from the reserved range; default none, as the released LVM).
 * - builders.ts: the sentence kinds as pure, seeded plans (sequence, pairs, colorization,
 *   inpainting, rotation, flip, invert, zoom, multitask, classes).
 * - sources.ts / kinds.ts: inputs (folders, videos, GIFs) -> items -> plans; which file is what,
 *   folder scanning and ffmpeg decoding live in `@lvm/image` (media.ts, video.ts).
 * - build.ts: tokenizing in batches into token shards, resumable, `--part I/N`.
 * - shards.ts: the token-shard format (binary u16/i32 + JSON index, shard paths confined to the
 *   dataset folder or an explicitly listed one), validated streaming reads, and
 *   `TokenDataset.verify()` / `verifyDataset()`: every shard checked up front in bounded memory.
 * - jsonl.ts: the official JSONL format (base64 little-endian int32), both ways.
 * - combine.ts, stats.ts, loader.ts: combining parts, summaries, the training loader.
 *
 * @example
 * ```ts
 * import { assembleSentence, makeLayout, splitSentence } from "@lvm/sentence";
 * const layout = makeLayout({ tokensPerImage: 4, imagesPerSentence: 2 });
 * const s = assembleSentence(layout, [[1, 2, 3, 4], [5, 6, 7, 8]]);
 * if (s.length !== 8 || splitSentence(layout, s)[1][0] !== 5) throw new Error("layout");
 * ```
 * @module
 */
export * from "./layout.ts";
export * from "./builders.ts";
export * from "./tokenizer.ts";
export * from "./shards.ts";
export * from "./jsonl.ts";
export * from "./sources.ts";
export * from "./kinds.ts";
export * from "./build.ts";
export * from "./combine.ts";
export * from "./stats.ts";
export * from "./loader.ts";
