/**
 * Loading the tokenizer's training sources from files (the file side of data.ts, exported from
 * `@lvm/tokenizer/fs`): image files, GIFs, videos through ffmpeg, and frame folders, classified by
 * `@lvm/image`'s one extension list.
 * @module
 */
import { join } from "node:path";
import { IMAGE_EXTENSIONS, isVideo, type RgbImage } from "@lvm/image";
import { decodeVideo, listImages, loadFrames, probeVideo } from "@lvm/image/fs";
import { evenlySpaced, type ImageSource, shrink } from "./data.ts";

/** Frames kept per GIF, video or frame folder unless {@link LoadSourcesOptions.maxFrames} says. */
export const DEFAULT_MAX_FRAMES = 64;

/** Options of {@link loadSources}. */
export interface LoadSourcesOptions {
  /** Shorter side of the stored copies (default 128). */
  maxSide?: number;
  /** Frames per second sampled from videos (default 1). */
  videoFps?: number;
  /**
   * Most frames kept per GIF, video or frame folder, evenly spaced (default
   * {@link DEFAULT_MAX_FRAMES}; 0 keeps every frame). A GIF is decoded whole before the cap applies.
   */
  maxFrames?: number;
  /** Called after each source (for progress). */
  onSource?: (s: ImageSource) => void;
}

/**
 * Loads sources from paths: image files, GIFs (up to `maxFrames` frames), videos (`videoFps` frames
 * per second, needs ffmpeg; up to `maxFrames`), and folders (see the module doc). Errors name the path.
 */
export async function loadSources(
  paths: string[],
  opts: LoadSourcesOptions = {},
): Promise<ImageSource[]> {
  const maxSide = opts.maxSide ?? 128, maxFrames = opts.maxFrames ?? DEFAULT_MAX_FRAMES;
  if (!Number.isInteger(maxFrames) || maxFrames < 0) {
    throw new RangeError(`loadSources: maxFrames must be an integer >= 0, got ${maxFrames}`);
  }
  const out: ImageSource[] = [];
  const add = (s: ImageSource) => {
    if (!s.frames.length) return;
    out.push(s);
    opts.onSource?.(s);
  };
  const file = async (path: string): Promise<RgbImage[]> => {
    if (isVideo(path)) {
      const info = await probeVideo(path);
      const f = Math.min(1, maxSide / Math.min(info.width, info.height));
      const frames = await decodeVideo(path, {
        width: Math.max(1, Math.round(info.width * f)),
        height: Math.max(1, Math.round(info.height * f)),
        fps: opts.videoFps ?? 1,
        resample: "ffmpeg",
      });
      return evenlySpaced(frames, maxFrames);
    }
    return evenlySpaced(await loadFrames(path), maxFrames).map((m) => shrink(m, maxSide));
  };
  for (const p of paths) {
    let st: Deno.FileInfo;
    try {
      st = await Deno.stat(p);
    } catch (e) {
      throw new Error(`${p}: no such image, video or folder`, { cause: e });
    }
    if (st.isFile) {
      add({ name: p, frames: await file(p) });
      continue;
    }
    for (const f of await listImages(p)) add({ name: f, frames: await file(f) });
    const videos: string[] = [], subdirs: string[] = [];
    for await (const e of Deno.readDir(p)) {
      if (e.isFile && isVideo(e.name)) videos.push(join(p, e.name));
      if (e.isDirectory && !e.name.startsWith(".")) subdirs.push(join(p, e.name));
    }
    for (const v of videos.sort()) add({ name: v, frames: await file(v) });
    for (const d of subdirs.sort()) {
      const frames = evenlySpaced(await listImages(d), maxFrames);
      const imgs: RgbImage[] = [];
      for (const f of frames) imgs.push(...(await loadFrames(f)).map((m) => shrink(m, maxSide)));
      add({ name: d, frames: imgs });
    }
  }
  if (!out.length) {
    throw new Error(
      `no images found in ${paths.join(", ")} (expected ${
        IMAGE_EXTENSIONS.join("/")
      } files, videos or folders of them)`,
    );
  }
  return out;
}
