/**
 * Image-by-image generation, as the official LVM inference does it: the prompt is a list of images'
 * code blocks; each new image is exactly `tokensPerImage` sampled ids (no early stop: LVM's eos id 2
 * is an image code); the context keeps at most the last `maxContextImages` images (15 = 3840 tokens
 * officially). While the window has room the KV cache simply grows; when it slides, positions restart
 * at 0 and the cache is rebuilt from the window, as in the official code. A decoder that samples on
 * the GPU ({@link GpuTokenDecoder}) generates each image as one chain of steps there.
 * @module
 */
import type { Sampler } from "./logits.ts";
import type { TokenDecoder } from "./generate.ts";
import { gpuPath } from "./gpu.ts";

/** A decoder whose cache can be emptied (see @lvm/transformer's `DecodeSession`). */
export interface ResettableDecoder extends TokenDecoder {
  reset(): void;
}

/** Options of {@link generateImages}. */
export interface ImageGenerationOptions {
  /** Codes per image (256 for LVM). */
  tokensPerImage: number;
  /** Images of context kept (default 15, the official window: 15 x 256 = 3840 tokens). */
  maxContextImages?: number;
  /**
   * Called after each chosen id: image index (0-based among the new ones), token index (on the GPU
   * path, for each id of a chunk as the chunk is read back).
   */
  onToken?: (image: number, token: number) => void;
  /** Sample on the CPU even when the decoder can sample on the GPU (default false). */
  cpuSampling?: boolean;
  /**
   * Called (and awaited) as each new image is complete, with its index among the new ones and its
   * codes: a front end can decode and show it while the next one is generated.
   */
  onImage?: (image: number, codes: Int32Array) => void | Promise<void>;
}

/**
 * Generates `count` images after the prompt images (each a block of `tokensPerImage` ids).
 * Returns the new images' code blocks.
 */
export async function generateImages(
  decoder: ResettableDecoder,
  prompt: readonly ArrayLike<number>[],
  count: number,
  sampler: Sampler,
  options: ImageGenerationOptions,
): Promise<Int32Array[]> {
  const T = options.tokensPerImage;
  const window = options.maxContextImages ?? 15;
  if (!Number.isInteger(T) || T < 1) {
    throw new RangeError(`tokensPerImage must be >= 1, found ${T}`);
  }
  if (!Number.isInteger(window) || window < 1) {
    throw new RangeError(`maxContextImages must be >= 1, found ${window}`);
  }
  if (!Number.isInteger(count) || count < 0) {
    throw new RangeError(`count must be >= 0, found ${count}`);
  }
  if (prompt.length === 0) {
    throw new RangeError("generateImages: the prompt needs at least one image");
  }
  prompt.forEach((p, i) => {
    if (p.length !== T) {
      throw new RangeError(`prompt image ${i} has ${p.length} codes, expected ${T}`);
    }
  });
  const images: ArrayLike<number>[] = [...prompt];
  const out: Int32Array[] = [];
  const gpu = gpuPath(decoder, sampler, options.cpuSampling);
  // Whether the decoder's cache holds every image so far, the last one's final id included.
  let whole = false;
  let logits: Float32Array | null = null;
  for (let k = 0; k < count; k++) {
    if (!whole) {
      // First image, or the window slid: positions restart at 0 and the cache is rebuilt.
      decoder.reset();
      const ids: number[] = [];
      for (const img of images.slice(-window)) {
        for (let i = 0; i < img.length; i++) ids.push(img[i]);
      }
      if (gpu) gpu.decoder.append(ids);
      else logits = await decoder.prefill(ids);
    }
    const img = new Int32Array(T);
    // The cache can simply grow into the next image while all images still fit the window.
    const feedLast = k + 1 < count && images.length + 1 <= window;
    if (gpu) {
      img.set(
        await gpu.decoder.sampleOnGpu(T, gpu.sampling, {
          uniforms: sampler.drawUniforms(T),
          feedLast,
          onIds: (chunk, first) => chunk.forEach((_, j) => options.onToken?.(k, first + j)),
        }),
      );
    } else {
      for (let i = 0; i < T; i++) {
        const id = sampler.sample(logits!);
        img[i] = id;
        options.onToken?.(k, i);
        if (i + 1 < T || feedLast) logits = await decoder.step(id);
      }
    }
    images.push(img);
    out.push(img);
    whole = feedLast;
    await options.onImage?.(k, img);
  }
  return out;
}
