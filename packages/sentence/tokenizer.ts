/**
 * What the dataset builder needs from an image tokenizer. The VQGAN of @lvm/tokenizer implements
 * it; tests use the block-mean double in testing.ts.
 * @module
 */

import type { RgbImage } from "@lvm/image";
import type { TokenizerInfo } from "./shards.ts";

/** An image tokenizer: RGB images in [0,1] at `resolution` x `resolution` -> code ids. */
export interface ImageTokenizer {
  /** Identity recorded in the dataset index, e.g. a hash of its config and weights. */
  readonly id: string;
  /** Input side in pixels (256 for the VQGAN). */
  readonly resolution: number;
  /** Codes per image (256 for the VQGAN: a 16x16 grid in raster order). */
  readonly tokensPerImage: number;
  /** Number of codes (8192 for the VQGAN); every code is in [0, codebookSize). */
  readonly codebookSize: number;
  /** Codes of a batch of images (each `resolution` x `resolution`), one Int32Array per image. */
  encode(images: RgbImage[]): Promise<Int32Array[]>;
}

/** The identity of a tokenizer as recorded in an index. */
export function tokenizerInfo(t: ImageTokenizer): TokenizerInfo {
  return {
    id: t.id,
    resolution: t.resolution,
    tokensPerImage: t.tokensPerImage,
    codebookSize: t.codebookSize,
  };
}
