/**
 * @lvm/sampler: logits processors (reserved-id suppression, temperature, top-k, top-p), greedy and
 * seeded multinomial sampling of the next token, the generation loop over a KV-cached decoder (on
 * the GPU, without a CPU round trip per token, when the decoder can sample there), and perplexity.
 *
 * ```ts
 * import { Sampler } from "@lvm/sampler";
 * const s = new Sampler({ topK: 50, suppressFrom: 8192 }, 0);
 * const id = s.sample(new Float32Array(8292)); // an id below 8192
 * ```
 * @module
 */
export * from "./logits.ts";
export * from "./generate.ts";
export * from "./images.ts";
export * from "./gpu.ts";
