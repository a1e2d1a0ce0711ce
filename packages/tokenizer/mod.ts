/**
 * @lvm/tokenizer: the LVM image tokenizer, open-muse's VQGAN (`VQGANModel`), on WebGPU in f32:
 * images (B,3,H,W) in [0,1] -> code ids (B, h*w) in raster order, ids -> images; weights from
 * open-muse safetensors, diffusers `VQModel` safetensors or the released `pytorch_model.bin`; and
 * training from images (reconstruction + codebook + commitment losses, straight-through gradients,
 * dead-code restarts, AdamW, resumable checkpoints).
 *
 * - config.ts: the config.json fields, presets (`lvm`, `tiny`, `small`), parameter layout.
 * - weights.ts: key naming (open-muse / diffusers), reading and saving weights, the tokenizer id.
 * - model.ts: the forward and backward passes on the GPU.
 * - tokenizer.ts: `loadTokenizer(dir)` -> encode / decode.
 * - train.ts: the training step, losses, dead-code restarts, checkpoints.
 * - adversarial.ts: the optional PatchGAN discriminator and hinge loss.
 * - data.ts: training sources (images, GIFs, videos, frame folders), batches, held-out PSNR.
 *
 * @example
 * ```ts ignore
 * import { loadTokenizer } from "@lvm/tokenizer";
 * import { loadImage } from "@lvm/image";
 * const tok = await loadTokenizer("models/vqgan"); // config.json + pytorch_model.bin
 * const [ids] = await tok.encode([await loadImage("cat.jpg")]); // Int32Array(256)
 * const [img] = await tok.decode([ids]); // RgbImage 256x256
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
