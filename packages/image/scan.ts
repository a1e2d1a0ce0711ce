/**
 * Folder scanning (file system side of `@lvm/image`, exported from `@lvm/image/fs`): the media
 * directly in a folder, sub-folders, and recursive walks, classified by the one extension list
 * of media.ts.
 * @module
 */
import { join } from "node:path";
import { pathKind } from "@lvm/util/fs";
import { naturalCompare } from "./codec.ts";
import { listImages } from "./files.ts";
import { ImageError } from "./image.ts";
import { isGif, isVideo } from "./media.ts";

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

/**
 * Whether an entry is a file / folder, following a symlink: a dangling one is neither, a loop
 * (or an unreadable target) is an {@link ImageError} naming it, never taken as missing.
 */
export async function entryIs(
  dir: string,
  e: Deno.DirEntry,
  what: "file" | "dir",
): Promise<boolean> {
  if (!e.isSymlink) return what === "file" ? e.isFile : e.isDirectory;
  const path = join(dir, e.name);
  let kind;
  try {
    kind = await pathKind(path);
  } catch (err) {
    throw new ImageError(path, (err as Error).message.replace(`${path}: `, ""), { cause: err });
  }
  return kind === what;
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
