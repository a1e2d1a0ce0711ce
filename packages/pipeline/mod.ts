/**
 * @lvm/pipeline: the Large Vision Model composed — a VQGAN tokenizer and a LLaMA — as one object a
 * user (the inference CLI, the demo, a web page) calls: `complete(images)` generates the images that
 * come next, `score(examples)` is the official perplexity of each example's last image, `encode` /
 * `decode` convert between images and codes, and `generate` / `scoreTokens` work on token ids.
 *
 * This module touches no file system (no `node:` import, no `Deno.*`): build a pipeline from parts
 * you already have ({@link LvmPipeline}), or from opened sources (a config and a tensor source over
 * bytes: {@link tokenizerFromSource}, and `@lvm/transformer`'s `loadLlamaFrom`). `@lvm/pipeline/fs` loads
 * folders (`loadPipeline({ model, tokenizer })`).
 *
 * @example A custom pipeline: a random tiny tokenizer and model built in memory, a prompt of two
 * frames, one generated frame, and the score of the prompt.
 * ```ts
 * import { LvmPipeline } from "@lvm/pipeline";
 * import { makeImage } from "@lvm/image";
 * import { createTokenizer, initVqganWeights, presetConfig } from "@lvm/tokenizer";
 * import { getGpu } from "@lvm/gpu";
 * import { Llama, makeConfig } from "@lvm/transformer";
 *
 * const vq = { ...presetConfig("tiny"), numEmbeddings: 64 }; // 32x32 images -> 8x8 = 64 codes
 * const tokenizer = await createTokenizer(vq, initVqganWeights(vq, 1));
 * const config = makeConfig({ hidden: 32, layers: 1, heads: 2, ffn: 64, vocab: 64, maxPositions: 256 });
 * const lvm = new LvmPipeline({ tokenizer, model: Llama.init(await getGpu(), config, { seed: 1 }) });
 * const frames = [makeImage(32, 32).data.fill(0.2), makeImage(32, 32).data.fill(0.8)]
 *   .map((d) => makeImage(32, 32, d));
 * const { images, codes } = await lvm.complete(frames, { count: 1, seed: 7, topK: 10 });
 * console.log(images[0].width, codes[0].length); // 32 64
 * const { perplexity } = await lvm.score([frames]); // the 2nd frame given the 1st
 * console.log(perplexity > 1); // true
 * lvm.release();
 * ```
 * @module
 */
export * from "./pipeline.ts";
export * from "./load.ts";
export * from "./finite.ts";
