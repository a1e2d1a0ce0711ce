/**
 * @lvm/tokenizer: the LVM image tokenizer, open-muse's VQGAN (`VQGANModel`), on WebGPU in f32:
 * images (B,3,H,W) in [0,1] -> code ids (B, h*w) in raster order, ids -> images; weights from
 * open-muse safetensors, diffusers `VQModel` safetensors or the released `pytorch_model.bin`; and
 * training from images (reconstruction + codebook + commitment losses, straight-through gradients,
 * dead-code restarts, AdamW, resumable checkpoints).
 *
 * - config.ts: the config.json fields, presets (`lvm`, `tiny`, `small`), parameter layout.
 * - weights.ts: key naming (open-muse / diffusers), weights from any `TensorSource`, the tokenizer id.
 * - model.ts: the forward and backward passes on the GPU.
 * - tokenizer.ts: `createTokenizer(config, weights)` -> encode / decode.
 * - fs.ts (`@lvm/tokenizer/fs`): tokenizer directories: `loadTokenizer(dir)`, `readTokenizerDir`,
 *   `saveTokenizer`.
 * - train.ts: the training step, losses, dead-code restarts, checkpoints.
 * - adversarial.ts: the optional PatchGAN discriminator and hinge loss.
 * - data.ts: training sources (images, GIFs, videos, frame folders), batches, held-out PSNR.
 *
 * @example
 * A tiny tokenizer with random weights, round trip of one grey image (a trained one comes from
 * `@lvm/tokenizer/fs`'s `loadTokenizer(dir)`: config.json + pytorch_model.bin or safetensors).
 * ```ts
 * import { createTokenizer, initVqganWeights, presetConfig } from "@lvm/tokenizer";
 * import { makeImage } from "@lvm/image";
 * const config = presetConfig("tiny");
 * const tok = await createTokenizer(config, initVqganWeights(config, 0));
 * const R = tok.resolution;
 * const [ids] = await tok.encode([makeImage(R, R, new Float32Array(3 * R * R).fill(0.5))]);
 * const [img] = await tok.decode([ids]); // RgbImage R x R
 * console.log(ids.length === tok.tokensPerImage, img.width === R); // true true
 * tok.release();
 * ```
 * @module
 */
export * from "./config.ts";
export * from "./weights.ts";
export * from "./model.ts";
export * from "./tokenizer.ts";
export * from "./train.ts";
export * from "./data.ts";
export * from "./adversarial.ts";
