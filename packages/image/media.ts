/**
 * Media input, the one home of which file is what: the image and video extensions, and the
 * folder scanners every data pipeline uses (`train tokenizer`, `train dataset`). Names are
 * compared case-insensitively by their last extension; entries are followed through symlinks;
 * folders come in natural order (frame2 before frame10).
 * @module
 */
import { extname, join } from "node:path";
import { IMAGE_EXTENSIONS, listImages, naturalCompare } from "./codec.ts";
import { ImageError } from "./image.ts";

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
  return extname(path).slice(1).toLowerCase();
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

function aborted(signal: AbortSignal | undefined, dir: string): void {
  if (signal?.aborted) throw new DOMException(`interrupted while scanning ${dir}`, "AbortError");
}

async function* entries(dir: string, signal?: AbortSignal): AsyncGenerator<Deno.DirEntry> {
  let it: AsyncIterable<Deno.DirEntry>;
  try {
    it = Deno.readDir(dir);
    for await (const e of it) {
      aborted(signal, dir);
      yield e;
    }
  } catch (e) {
    if (e instanceof DOMException) throw e;
    if (e instanceof Deno.errors.NotFound) {
      throw new ImageError(dir, "folder not found", { cause: e });
    }
    throw new ImageError(dir, `cannot list folder (${(e as Error)?.message ?? e})`, { cause: e });
  }
}

/** Whether an entry is a file / folder, following a symlink (a broken one is neither). */
async function entryIs(dir: string, e: Deno.DirEntry, what: "file" | "dir"): Promise<boolean> {
  if (!e.isSymlink) return what === "file" ? e.isFile : e.isDirectory;
  const st = await Deno.stat(join(dir, e.name)).catch(() => null);
  return what === "file" ? !!st?.isFile : !!st?.isDirectory;
}

/**
 * The files directly in `dir` whose name satisfies `pred` (hidden ones skipped; symlinks
 * followed), as `join(dir, name)` in natural order. `signal` is checked per entry.
 */
export async function listFiles(
  dir: string,
  pred: (name: string) => boolean,
  signal?: AbortSignal,
): Promise<string[]> {
  const out: string[] = [];
  for await (const e of entries(dir, signal)) {
    if (e.name.startsWith(".") || !pred(e.name)) continue;
    if (await entryIs(dir, e, "file")) out.push(e.name);
  }
  return out.sort(naturalCompare).map((n) => join(dir, n));
}

/** The sub-folders of `dir` (hidden ones skipped; symlinks followed), in natural order. */
export async function listSubfolders(dir: string, signal?: AbortSignal): Promise<string[]> {
  const out: string[] = [];
  for await (const e of entries(dir, signal)) {
    if (e.name.startsWith(".")) continue;
    if (await entryIs(dir, e, "dir")) out.push(e.name);
  }
  return out.sort(naturalCompare).map((n) => join(dir, n));
}

/** `dir` and every folder under it, depth first in natural order. */
export async function walkFolders(dir: string, signal?: AbortSignal): Promise<string[]> {
  const out = [dir];
  for (const d of await listSubfolders(dir, signal)) out.push(...(await walkFolders(d, signal)));
  return out;
}

/** What one folder holds directly, each list in natural order (see {@link scanFolder}). */
export interface FolderScan {
  /** Still images (not GIFs), as {@link listImages} finds them. */
  images: string[];
  /** GIFs. */
  gifs: string[];
  /** Videos ({@link VIDEO_EXTENSIONS}). */
  videos: string[];
  /** Sub-folders. */
  folders: string[];
}

/**
 * The media directly in `dir`: still images, GIFs, videos and sub-folders (not recursive; use
 * {@link walkFolders} for that). Errors are {@link ImageError}s naming the folder.
 */
export async function scanFolder(dir: string, signal?: AbortSignal): Promise<FolderScan> {
  aborted(signal, dir);
  const all = await listImages(dir);
  return {
    images: all.filter((p) => !isGif(p)),
    gifs: await listFiles(dir, isGif, signal),
    videos: await listFiles(dir, isVideo, signal),
    folders: await listSubfolders(dir, signal),
  };
}
