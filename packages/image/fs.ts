/**
 * @lvm/image/fs: the file and process side of `@lvm/image`. Decoding image files (imagescript:
 * run with -A), loading and saving them atomically, folder scans with the one extension list,
 * and video frames through the system ffmpeg. The main module (`@lvm/image`) holds the pixel
 * operations, resizing, PNG encoding and charts, and loads in a browser.
 *
 * @example
 * ```ts
 * import { makeImage } from "@lvm/image";
 * import { loadImage, savePng } from "@lvm/image/fs";
 * const path = await Deno.makeTempFile({ suffix: ".png" });
 * await savePng(path, makeImage(5, 3));
 * console.log((await loadImage(path)).width); // 5
 * ```
 * @module
 */
export * from "./files.ts";
export * from "./scan.ts";
export * from "./video.ts";
