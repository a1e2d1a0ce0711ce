/**
 * Inputs of a build: scanning folders, videos and GIFs into numbered items, and loading an item's
 * pixels with its transform at the tokenizer's resolution.
 *
 * - An **item** is one image file or one frame of a video/GIF; items are numbered source by source
 *   ({@link ItemTable}), files in natural order (frame2 before frame10).
 * - Videos are decoded by the system `ffmpeg` (clear error when it is missing), streamed forward
 *   frame by frame at native size and squash-resized with the image package's PIL-exact bicubic,
 *   so a long video never sits in memory. A video ffmpeg cannot decode is an error naming the file
 *   with ffmpeg's last stderr lines (never a silent skip).
 * - Every scan takes an optional AbortSignal, checked per folder entry and per decoded frame;
 *   an aborted ffmpeg is killed.
 * @module
 */

import { createHash } from "node:crypto";
import { basename } from "node:path";
import {
  crop,
  flipH,
  flipV,
  IMAGE_EXTENSIONS,
  ImageError,
  ImageTooLargeError,
  invert,
  isGif,
  isImage,
  isVideo,
  naturalCompare,
  resize,
  type RgbImage,
  rotate90,
  toGray,
  VIDEO_EXTENSIONS,
} from "@lvm/image";
import {
  countVideoFrames,
  listFiles,
  listImages,
  listSubfolders,
  loadFrames,
  loadImage,
  VideoFrameReader,
  walkFolders,
} from "@lvm/image/fs";
import { itemSeed, keyItem, keyVariant, Variant } from "./builders.ts";
import { throwIfAborted } from "./_abort.ts";
import { randInt, rng } from "@lvm/util";
import type { SourceInfo } from "./shards.ts";

/** What kind of input a source is. */
export type SourceType = "folder" | "video" | "gif" | "file";

/** One input: a folder of images (or frames), a video, a GIF or a single image file. */
export interface Source {
  path: string;
  type: SourceType;
  /** Image file paths (folder, file); empty for video and GIF (frames are numbered). */
  files: string[];
  /** Items it holds (files or frames). */
  count: number;
}

/** A problem with the inputs of a build (names the input). */
export class InputError extends Error {
  constructor(path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = "InputError";
  }
}

/** Sources with their items numbered consecutively. */
export class ItemTable {
  readonly sources: Source[] = [];
  /** First item id of each source (sources + 1 entries). */
  readonly offsets: number[] = [0];

  /** Adds a source; returns the id of its first item. */
  add(src: Source): number {
    const first = this.offsets.at(-1)!;
    this.sources.push(src);
    this.offsets.push(first + src.count);
    return first;
  }
  /** Total items. */
  get total(): number {
    return this.offsets.at(-1)!;
  }
  /** [source index, index within the source] of an item id. */
  locate(item: number): [number, number] {
    let lo = 0, hi = this.sources.length - 1;
    if (!(item >= 0 && item < this.total)) {
      throw new RangeError(`item ${item} out of range [0, ${this.total})`);
    }
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.offsets[mid] <= item) lo = mid;
      else hi = mid - 1;
    }
    return [lo, item - this.offsets[lo]];
  }
  /** A printable description of an item (file path, or video#frame). */
  describe(item: number): string {
    const [s, i] = this.locate(item);
    const src = this.sources[s];
    return src.files.length ? src.files[i] : `${src.path}#${i}`;
  }
  /** Sources as recorded in a dataset index. */
  info(): SourceInfo[] {
    return this.sources.map((s) => ({ path: s.path, type: s.type, items: s.count }));
  }
  /** Everything that identifies the items (paths, types, counts; small tables and tests). */
  identity(): unknown {
    return this.sources.map((s) => [s.path, s.type, s.count, s.files]);
  }
}

/** Two SHA-256 digests (hex) of an item table; see {@link digestInputs}. */
export interface InputDigests {
  /** Of what the items are: every source's path, type and count, and every file path. */
  items: string;
  /** Of the items and the size and modification time of every file (image, video, GIF). */
  files: string;
}

/**
 * Digests of a table's items, streamed (memory does not grow with the number of files): `items`
 * identifies the plan, `files` also changes when any input file changes size or modification
 * time (one stat per file, `concurrency` at a time), so a resumed build notices changed inputs.
 */
export async function digestInputs(
  table: ItemTable,
  opts: { signal?: AbortSignal; concurrency?: number } = {},
): Promise<InputDigests> {
  const items = createHash("sha256"), files = createHash("sha256");
  const both = (s: string) => {
    items.update(s);
    files.update(s);
  };
  const stat = async (path: string) => {
    try {
      const st = await Deno.stat(path);
      return `${st.size} ${st.mtime?.getTime() ?? "-"}`;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) throw new InputError(path, "input file disappeared");
      throw new InputError(path, `cannot read the input: ${(e as Error).message}`);
    }
  };
  const conc = opts.concurrency ?? 32;
  both("lvm-inputs-v1\n");
  for (const src of table.sources) {
    throwIfAborted(opts.signal, "checking the input files");
    both(`${JSON.stringify([src.path, src.type, src.count, src.files.length])}\n`);
    if (!src.files.length) files.update(`= ${await stat(src.path)}\n`);
    for (let i = 0; i < src.files.length; i += conc) {
      throwIfAborted(opts.signal, "checking the input files");
      const part = src.files.slice(i, i + conc);
      const st = await Promise.all(part.map(stat));
      part.forEach((f, k) => {
        items.update(`${f}\n`);
        files.update(`${f}\n= ${st[k]}\n`);
      });
    }
  }
  return { items: items.digest("hex"), files: files.digest("hex") };
}

/** File name without its last extension ("a/0001.depth.png" -> "0001.depth"). */
export const stem = (p: string): string => basename(p).replace(/\.[^.]*$/, "");

/** Stat of an input (following symlinks): missing is "input not found", a loop says so. */
async function statOf(path: string): Promise<Deno.FileInfo> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) throw new InputError(path, "input not found");
    throw new InputError(path, `cannot read the input: ${(e as Error).message}`);
  }
}

const subdirs = listSubfolders;
const filesMatching = listFiles;
const walk = walkFolders;

/** The images of a folder (natural order), after checking the signal. */
async function folderFiles(dir: string, signal?: AbortSignal): Promise<string[]> {
  throwIfAborted(signal, `scanning ${dir}`);
  return await listImages(dir);
}

/** The still images of a folder (not GIFs: a GIF is an animation, a sequence source). */
async function stills(dir: string, signal?: AbortSignal): Promise<string[]> {
  return (await folderFiles(dir, signal)).filter((p) => !isGif(p));
}

/** A frame sequence source found by {@link scanSequences}. */
export interface SequenceSource {
  source: Source;
  /** Id of its first frame. */
  first: number;
}

/**
 * Sequence inputs: each input is a video file, a GIF, or a folder. A folder that directly holds
 * still images is one frame sequence (frames in natural order); videos and GIFs inside folders
 * are sources too; sub-folders are searched recursively.
 */
export async function scanSequences(
  inputs: string[],
  table = new ItemTable(),
  signal?: AbortSignal,
): Promise<{
  table: ItemTable;
  sequences: SequenceSource[];
}> {
  const sequences: SequenceSource[] = [];
  const addFile = async (p: string) => {
    throwIfAborted(signal, `scanning ${p}`);
    if (isVideo(p)) {
      const count = await countVideoFrames(p, { signal });
      const source: Source = { path: p, type: "video", files: [], count };
      sequences.push({ source, first: table.add(source) });
    } else if (isGif(p)) {
      const count = (await loadFrames(p)).length;
      const source: Source = { path: p, type: "gif", files: [], count };
      sequences.push({ source, first: table.add(source) });
    } else return false;
    return true;
  };
  for (const input of inputs) {
    const st = await statOf(input);
    if (st.isFile) {
      if (!(await addFile(input))) {
        throw new InputError(
          input,
          `not a video (${VIDEO_EXTENSIONS.join(", ")}), GIF or folder of frames`,
        );
      }
      continue;
    }
    if (!st.isDirectory) throw new InputError(input, "not a regular file or a folder (a FIFO?)");
    const before = sequences.length;
    for (const dir of await walk(input, signal)) {
      const frames = await stills(dir, signal);
      if (frames.length) {
        const source: Source = { path: dir, type: "folder", files: frames, count: frames.length };
        sequences.push({ source, first: table.add(source) });
      }
      for (const f of await filesMatching(dir, (n) => isVideo(n) || isGif(n), signal)) {
        await addFile(f);
      }
    }
    if (sequences.length === before) throw new InputError(input, "no frames, videos or GIFs found");
  }
  return { table, sequences };
}

/**
 * Plain images for the derived tasks (colorization, inpainting, rotation, ...): image files, or
 * folders searched recursively (each folder with images is one source). GIFs count as images
 * (their first frame).
 */
export async function scanImages(
  inputs: string[],
  table = new ItemTable(),
  signal?: AbortSignal,
): Promise<{
  table: ItemTable;
  items: number[];
}> {
  const items: number[] = [];
  const add = (src: Source) => {
    const first = table.add(src);
    for (let i = 0; i < src.count; i++) items.push(first + i);
  };
  for (const input of inputs) {
    const st = await statOf(input);
    if (st.isFile) {
      if (!isImage(input)) {
        throw new InputError(input, `not an image (${IMAGE_EXTENSIONS.join(", ")})`);
      }
      add({ path: input, type: "file", files: [input], count: 1 });
      continue;
    }
    if (!st.isDirectory) throw new InputError(input, "not a regular file or a folder (a FIFO?)");
    const before = items.length;
    for (const dir of await walk(input, signal)) {
      const files = await folderFiles(dir, signal);
      if (files.length) add({ path: dir, type: "folder", files, count: files.length });
    }
    if (items.length === before) throw new InputError(input, "no images found");
  }
  return { table, items };
}

async function folderImages(dir: string, signal?: AbortSignal): Promise<string[]> {
  const st = await statOf(dir);
  if (!st.isDirectory) throw new InputError(dir, "expected a folder of images");
  return await folderFiles(dir, signal);
}

/**
 * Matches the images of several folders by file stem ("0001.jpg" with "0001.png"). Returns, per
 * stem present in every folder (natural order), the index of its file in each folder. When no
 * stem is shared but every folder holds the same number of images, pairs them in sorted order
 * (the official scripts' rule).
 */
export function matchByStem(lists: string[][]): number[][] {
  const maps = lists.map((l) => new Map(l.map((p, i) => [stem(p), i])));
  const common = [...maps[0].keys()].filter((s) => maps.every((m) => m.has(s)));
  if (common.length) return common.sort(naturalCompare).map((s) => maps.map((m) => m.get(s)!));
  if (lists.every((l) => l.length === lists[0].length)) {
    return lists[0].map((_, i) => lists.map(() => i));
  }
  return [];
}

/**
 * Paired folders for analogy sentences: inputs come two by two (x folder, y folder), each pair
 * one task; images matched by stem (see {@link matchByStem}).
 */
export async function scanPairs(
  inputs: string[],
  table = new ItemTable(),
  signal?: AbortSignal,
): Promise<{
  table: ItemTable;
  tasks: { x: number[]; y: number[] }[];
  unmatched: number;
}> {
  if (inputs.length < 2 || inputs.length % 2) {
    throw new InputError(
      inputs.join(" ") || "--input",
      `pairs needs folders two by two (X_DIR Y_DIR [X2_DIR Y2_DIR ...]), found ${inputs.length}`,
    );
  }
  const tasks: { x: number[]; y: number[] }[] = [];
  let unmatched = 0;
  for (let i = 0; i < inputs.length; i += 2) {
    const xs = await folderImages(inputs[i], signal);
    const ys = await folderImages(inputs[i + 1], signal);
    const m = matchByStem([xs, ys]);
    if (!m.length) {
      throw new InputError(
        `${inputs[i]} + ${inputs[i + 1]}`,
        "no images pair up (no shared file stems)",
      );
    }
    unmatched += xs.length + ys.length - 2 * m.length;
    const fx = m.map(([a]) => xs[a]), fy = m.map(([, b]) => ys[b]);
    const x0 = table.add({ path: inputs[i], type: "folder", files: fx, count: fx.length });
    const y0 = table.add({ path: inputs[i + 1], type: "folder", files: fy, count: fy.length });
    tasks.push({ x: fx.map((_, k) => x0 + k), y: fy.map((_, k) => y0 + k) });
  }
  return { table, tasks, unmatched };
}

/**
 * Modality folders for multi-task sentences: one folder per modality (image, depth, normals, ...),
 * the same scene named by the same stem in each; scenes missing from any folder are skipped.
 */
export async function scanMultitask(
  inputs: string[],
  table = new ItemTable(),
  signal?: AbortSignal,
): Promise<{
  table: ItemTable;
  scenes: number[][];
  unmatched: number;
}> {
  if (inputs.length < 2) {
    throw new InputError(
      inputs.join(" ") || "--input",
      "multitask needs at least two modality folders",
    );
  }
  const lists: string[][] = [];
  for (const d of inputs) lists.push(await folderImages(d, signal));
  const m = matchByStem(lists);
  if (!m.length) {
    throw new InputError(inputs.join(" + "), "no scene is present in every modality folder");
  }
  const firsts = inputs.map((d, k) => {
    const files = m.map((row) => lists[k][row[k]]);
    return table.add({ path: d, type: "folder", files, count: files.length });
  });
  const scenes = m.map((_, s) => firsts.map((f) => f + s));
  const unmatched = lists.reduce((a, l) => a + l.length, 0) - m.length * inputs.length;
  return { table, scenes, unmatched };
}

/** Class folders for same-class sentences: each input is a root whose sub-folders are classes. */
export async function scanClasses(
  inputs: string[],
  table = new ItemTable(),
  signal?: AbortSignal,
): Promise<{
  table: ItemTable;
  classes: number[][];
}> {
  const classes: number[][] = [];
  for (const root of inputs) {
    const st = await statOf(root);
    if (!st.isDirectory) {
      throw new InputError(root, "expected a folder whose sub-folders are classes");
    }
    const dirs = await subdirs(root, signal);
    if (!dirs.length) throw new InputError(root, "no class sub-folders found");
    for (const d of dirs) {
      const files = await folderFiles(d, signal);
      if (!files.length) continue;
      const first = table.add({ path: d, type: "folder", files, count: files.length });
      classes.push(files.map((_, i) => first + i));
    }
  }
  return { table, classes };
}

/** How item pixels become tokenizer input. */
export interface RenderOptions {
  /** Tokenizer input side (images are squash-resized to resolution x resolution). */
  resolution: number;
  /** Build seed (the inpainting mask of an item is derived from it and the item id). */
  seed: number;
  /** Inpainting mask: "random" (default) or "center". */
  mask?: "random" | "center";
}

/**
 * The inpainting hole of an item at side R: "random" as the official hole mode, a square of side
 * in [0.1R, 0.5R) at a uniform position; "center" the centred square of side R/2.
 * Returns [x, y, size].
 */
export function maskRect(R: number, item: number, opts: RenderOptions): [number, number, number] {
  if ((opts.mask ?? "random") === "center") {
    const s = Math.floor(R / 2);
    return [Math.floor((R - s) / 2), Math.floor((R - s) / 2), s];
  }
  const r = rng(itemSeed(opts.seed, item));
  const lo = Math.max(1, Math.floor(0.1 * R)), hi = Math.max(lo + 1, Math.floor(0.5 * R));
  const s = lo + randInt(r, hi - lo);
  return [randInt(r, R - s + 1), randInt(r, R - s + 1), s];
}

/**
 * Edge map of an image: the Sobel gradient magnitude of its gray image
 * (0.2989R + 0.5870G + 0.1140B), borders replicated, divided by 4 and clipped to [0, 1] (so a
 * unit step edge gives 1 on both sides of the step), as a gray RGB image of the same size.
 */
export function sobelEdges(img: RgbImage): RgbImage {
  const W = img.width, H = img.height, P = W * H, d = img.data;
  const g = new Float64Array(P);
  for (let i = 0; i < P; i++) g[i] = 0.2989 * d[i] + 0.587 * d[P + i] + 0.114 * d[2 * P + i];
  const out = new Float32Array(3 * P);
  const at = (x: number, y: number) =>
    g[Math.min(H - 1, Math.max(0, y)) * W + Math.min(W - 1, Math.max(0, x))];
  for (let y = 0; y < H; y++) {
    for (let x = 0; x < W; x++) {
      const gx = at(x + 1, y - 1) + 2 * at(x + 1, y) + at(x + 1, y + 1) -
        (at(x - 1, y - 1) + 2 * at(x - 1, y) + at(x - 1, y + 1));
      const gy = at(x - 1, y + 1) + 2 * at(x, y + 1) + at(x + 1, y + 1) -
        (at(x - 1, y - 1) + 2 * at(x, y - 1) + at(x + 1, y - 1));
      const e = Math.min(1, Math.hypot(gx, gy) / 4);
      out[y * W + x] = out[P + y * W + x] = out[2 * P + y * W + x] = e;
    }
  }
  return { width: W, height: H, data: out };
}

/**
 * Applies a key's variant to an item's native-size image and returns the tokenizer input
 * (resolution x resolution). Zoom crops the centre half before resizing; the other transforms
 * act on the resized image.
 */
export function renderVariant(img: RgbImage, key: number, opts: RenderOptions): RgbImage {
  const R = opts.resolution, v = keyVariant(key);
  if (v === Variant.zoom2) {
    const w = Math.max(1, Math.floor(img.width / 2)), h = Math.max(1, Math.floor(img.height / 2));
    img = crop(img, Math.floor((img.width - w) / 2), Math.floor((img.height - h) / 2), w, h);
  }
  const base = resize(img, R, R);
  switch (v) {
    case Variant.original:
    case Variant.zoom2:
      return base;
    case Variant.gray:
      return toGray(base);
    case Variant.masked: {
      const [x0, y0, s] = maskRect(R, keyItem(key), opts);
      const P = R * R;
      for (let c = 0; c < 3; c++) {
        for (let y = y0; y < y0 + s; y++) {
          base.data.fill(0, c * P + y * R + x0, c * P + y * R + x0 + s);
        }
      }
      return base;
    }
    case Variant.rot90:
      return rotate90(base, 1);
    case Variant.rot180:
      return rotate90(base, 2);
    case Variant.rot270:
      return rotate90(base, 3);
    case Variant.flipH:
      return flipH(base);
    case Variant.flipV:
      return flipV(base);
    case Variant.invert:
      return invert(base);
    case Variant.edges:
      return sobelEdges(base);
    default:
      throw new RangeError(`renderVariant: unknown variant ${v} in key ${key}`);
  }
}

/**
 * Loads items' pixels (native size): image files, GIF frames (the last GIF's frames cached),
 * video frames (one forward-streaming decoder per video, the last few kept open).
 */
export class ItemLoader {
  #gifPath = "";
  #gifFrames: RgbImage[] = [];
  #videos = new Map<string, VideoFrameReader>();
  /** `signal` stops video decoding between frames (an AbortError). */
  constructor(readonly table: ItemTable, readonly signal?: AbortSignal) {}

  /** Native-size pixels of an item. */
  async load(item: number): Promise<RgbImage> {
    const [s, i] = this.table.locate(item);
    const src = this.table.sources[s];
    if (src.type === "folder" || src.type === "file") return await loadImage(src.files[i]);
    if (src.type === "gif") {
      if (this.#gifPath !== src.path) {
        this.#gifFrames = await loadFrames(src.path);
        this.#gifPath = src.path;
      }
      const f = this.#gifFrames[i];
      if (!f) {
        throw new ImageError(
          src.path,
          `GIF has ${this.#gifFrames.length} frames, frame ${i} requested`,
        );
      }
      return f;
    }
    let v = this.#videos.get(src.path);
    if (!v) {
      if (this.#videos.size >= 4) {
        const [oldest, stream] = this.#videos.entries().next().value!;
        await stream.close();
        this.#videos.delete(oldest);
      }
      v = new VideoFrameReader(src.path, { signal: this.signal });
      this.#videos.set(src.path, v);
    }
    return await v.frame(i);
  }

  /** The tokenizer input of an image key. */
  async render(key: number, opts: RenderOptions): Promise<RgbImage> {
    return renderVariant(await this.load(keyItem(key)), key, opts);
  }

  /** Stops every decoder. */
  async close(): Promise<void> {
    for (const v of this.#videos.values()) await v.close();
    this.#videos.clear();
  }
}

/**
 * Decodes and renders image files on worker threads (file items only: video and GIF frames are
 * read in order on the calling thread). The result does not depend on the number of workers.
 */
export class RenderPool {
  #workers: Worker[] = [];
  #next = 0;
  #id = 0;
  #pending = new Map<
    number,
    { resolve: (img: RgbImage) => void; reject: (e: Error) => void; path: string }
  >();

  /** Starts `n` workers. */
  constructor(n: number) {
    for (let i = 0; i < n; i++) {
      const w = new Worker(new URL("./_render_worker.ts", import.meta.url).href, {
        type: "module",
      });
      w.onmessage = (e: MessageEvent) => {
        const p = this.#pending.get(e.data.id);
        if (!p) return;
        this.#pending.delete(e.data.id);
        const err = e.data.error;
        if (err !== undefined) {
          // The worker's ImageError, rebuilt with its type (a too-large image stays one).
          p.reject(
            err.tooLarge
              ? new ImageTooLargeError(p.path, err.tooLarge[0], err.tooLarge[1], err.tooLarge[2])
              : new ImageError(p.path, err.message.replace(`${p.path}: `, "")),
          );
        } else p.resolve({ width: e.data.width, height: e.data.height, data: e.data.data });
      };
      w.onerror = (e: ErrorEvent) => {
        e.preventDefault();
        for (const p of this.#pending.values()) {
          p.reject(new Error(`render worker failed: ${e.message}`));
        }
        this.#pending.clear();
      };
      this.#workers.push(w);
    }
  }

  /** Number of workers. */
  get size(): number {
    return this.#workers.length;
  }

  /** Loads `path` and renders `key` on the next worker (round robin). */
  render(path: string, key: number, opts: RenderOptions): Promise<RgbImage> {
    const id = this.#id++;
    const w = this.#workers[this.#next++ % this.#workers.length];
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, path });
      w.postMessage({ id, path, key, render: opts });
    });
  }

  /** Stops the workers. */
  close(): void {
    for (const w of this.#workers) w.terminate();
    this.#workers = [];
  }
}
