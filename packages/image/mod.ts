/**
 * @lvm/image: image I/O and pixel operations shared by the tokenizer and the sentence/data
 * pipeline (CPU only, no GPU).
 *
 * - image.ts: {@link RgbImage} (planar float RGB (3,H,W) in [0,1]), byte conversions that follow
 *   the official code (b/255; clamp*255 truncate), gray, strips/grids, crop/flip/rotate/invert.
 * - resize.ts: bicubic squash-resize bit-exact with PIL's `Image.resize(size, BICUBIC)`.
 * - codec.ts: PNG/JPEG/GIF/TIFF decoding (imagescript, needs -A), PNG encoding, folder listing.
 * - codec.ts also guards against decompression bombs: the declared size is checked against a pixel
 *   limit (64 Mpixel; `maxPixels` option, `LVM_MAX_IMAGE_PIXELS`) before decoding.
 * - video.ts: video frames and probing through the system ffmpeg/ffprobe (`ffmpegAvailable`,
 *   `decodeVideo`, the streaming `VideoFrameReader`, `countVideoFrames`).
 * - media.ts: the one list of image and video extensions (`mediaKind`, `VIDEO_EXTENSIONS`) and
 *   the folder scanners (`scanFolder`, `listFiles`, `listSubfolders`, `walkFolders`).
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
export * from "./video.ts";
export * from "./media.ts";
export * from "./chart.ts";
