/**
 * Media input, the one home of which file is what: the image and video extensions every data
 * pipeline uses (`train tokenizer`, `train dataset`; the folder scanners built on them are
 * scan.ts, in `@lvm/image/fs`). Names are compared case-insensitively by their last extension.
 * @module
 */
import { IMAGE_EXTENSIONS } from "./codec.ts";

export { IMAGE_EXTENSIONS };

/** Video file extensions (lower case, no dot), decoded through the system ffmpeg. */
export const VIDEO_EXTENSIONS: readonly string[] = [
  "avi",
  "mp4",
  "mkv",
  "mov",
  "webm",
  "mpg",
  "mpeg",
  "m4v",
  "wmv",
  "flv",
  "ogv",
]; // deno-fmt-ignore

/** What a file is by its name: a still image, a GIF (an animation), a video, or null. */
export type MediaKind = "image" | "gif" | "video";

/** The lower-case last extension of a path, without the dot ("" when none). */
export function extensionOf(path: string): string {
  const base = path.slice(Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\")) + 1);
  const dot = base.lastIndexOf(".");
  return dot <= 0 ? "" : base.slice(dot + 1).toLowerCase(); // as node:path's extname: ".bashrc" has none
}

/** The kind of a file by its extension ({@link IMAGE_EXTENSIONS}, {@link VIDEO_EXTENSIONS}). */
export function mediaKind(path: string): MediaKind | null {
  const e = extensionOf(path);
  if (e === "gif") return "gif";
  if (IMAGE_EXTENSIONS.includes(e)) return "image";
  if (VIDEO_EXTENSIONS.includes(e)) return "video";
  return null;
}

/** True for a video file name. */
export const isVideo = (p: string): boolean => mediaKind(p) === "video";
/** True for a GIF file name. */
export const isGif = (p: string): boolean => mediaKind(p) === "gif";
/** True for an image file name (GIFs included). */
export const isImage = (p: string): boolean => IMAGE_EXTENSIONS.includes(extensionOf(p));
