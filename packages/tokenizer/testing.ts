/**
 * Test helpers for the VQGAN tokenizer and its trainers: a config small enough to train in seconds
 * on lavapipe, and smooth synthetic images to train it on.
 * @module
 */
import { makeImage } from "@lvm/image";
import { parseConfig, type VqganConfig } from "./config.ts";
import type { ImageSource } from "./data.ts";

/**
 * The tiny VQGAN as a config.json would hold it: 16x16 images, width 32, two levels of one res
 * block, no attention, 32 codes of 8 dimensions.
 */
export const TINY_CONFIG_JSON = {
  resolution: 16,
  hidden_channels: 32,
  channel_mult: [1, 1],
  num_res_blocks: 1,
  attn_resolutions: [],
  no_attn_mid_block: true,
  z_channels: 8,
  num_embeddings: 32,
  quantized_embed_dim: 8,
};

/** {@link TINY_CONFIG_JSON}, parsed. */
export const TINY_CONFIG: VqganConfig = parseConfig(TINY_CONFIG_JSON);

/** Five smooth synthetic images (colour ramps and blobs), 24x20, named `synthetic0` .. `synthetic4`. */
export function syntheticSources(): ImageSource[] {
  return Array.from({ length: 5 }, (_, k) => {
    const img = makeImage(24, 20);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < 20; y++) {
        for (let x = 0; x < 24; x++) {
          img.data[(c * 20 + y) * 24 + x] = 0.5 +
            0.4 * Math.sin((x * (k + 1)) / 7 + c) * Math.cos((y + 3 * c) / (4 + k));
        }
      }
    }
    return { name: `synthetic${k}`, frames: [img] };
  });
}
