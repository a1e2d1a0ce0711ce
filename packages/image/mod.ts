/**
 * @lvm/image: image I/O and pixel operations shared by the tokenizer and the sentence/data
 * pipeline (CPU only, no GPU).
 *
 * - image.ts: {@link RgbImage} (planar float RGB (3,H,W) in [0,1]), byte conversions that follow
 *   the official code (b/255; clamp*255 truncate), gray, strips/grids, crop/flip/rotate/invert.
 * - resize.ts: bicubic squash-resize bit-exact with PIL's `Image.resize(size, BICUBIC)`.
 * - codec.ts: image headers (declared sizes checked against a pixel limit before any decode:
 *   64 Mpixel; `maxPixels` option, `LVM_MAX_IMAGE_PIXELS`), format sniffing, PNG encoding.
 * - media.ts: the one list of image and video extensions (`mediaKind`, `VIDEO_EXTENSIONS`).
 * - chart.ts: line charts (loss curves, in-context and scaling curves) drawn to pixels.
 *
 * Files and processes are `@lvm/image/fs`: decoding files (files.ts: PNG/JPEG/GIF/TIFF through
 * imagescript, needs -A), atomic PNG writes, folder scans (scan.ts: `scanFolder`, `listFiles`,
 * `listSubfolders`, `walkFolders`), video frames through ffmpeg (video.ts: `ffmpegAvailable`,
 * `decodeVideo`, `VideoFrameReader`, `countVideoFrames`). This module loads in a browser.
 *
 * @example
 * ```ts
 * import { makeImage, resize, toGray } from "@lvm/image";
 * const img = resize(toGray(makeImage(37, 23)), 256, 256); // (3,256,256)
 * if (img.width !== 256) throw new Error("resize");
 * ```
 * @module
 */
export * from "./image.ts";
export * from "./resize.ts";
export * from "./codec.ts";
export * from "./media.ts";
export * from "./chart.ts";
