/**
 * Image files (file system side of `@lvm/image`, exported from `@lvm/image/fs`): decoding PNG,
 * JPEG, GIF (all frames) and TIFF with imagescript (npm; loads a native addon, run with -A),
 * loading and saving files atomically, and listing an image folder in natural order. Every
 * decode checks the size the header declares first (see codec.ts).
 * @module
 */
import { join } from "node:path";
import { pathKind, writeFileAtomic } from "@lvm/util/fs";
import {
  checkDeclaredSize,
  type DecodeOptions,
  encodePng,
  IMAGE_EXTENSIONS,
  maxImagePixels,
  naturalCompare,
  sniffFormat,
} from "./codec.ts";
import { fromUint8, ImageError, type RgbImage } from "./image.ts";
import { type ChartOptions, renderChart } from "./chart.ts";

const SUPPORTED = new Set(["png", "jpeg", "gif", "tiff"]);

// imagescript is imported on first decode, not at module load: it loads a native addon (needs -A),
// and the pixel functions of this package must stay usable without permissions.
let imagescript: Promise<typeof import("imagescript")> | null = null;
function decoder(): Promise<typeof import("imagescript")> {
  imagescript ??= import("imagescript");
  return imagescript;
}

/** imagescript's RGBA bitmap (H, W, 4) to an RgbImage, alpha dropped. */
function fromBitmap(bitmap: Uint8ClampedArray, width: number, height: number): RgbImage {
  return fromUint8(bitmap, width, height, 4);
}

async function decodeAll(
  bytes: Uint8Array,
  name: string,
  firstOnly: boolean,
  opts: DecodeOptions = {},
) {
  const fmt = sniffFormat(bytes);
  if (fmt === null) {
    throw new ImageError(
      name,
      bytes.length === 0
        ? "empty file, expected image data"
        : "not a recognised image (expected PNG, JPEG, GIF or TIFF signature)",
    );
  }
  if (!SUPPORTED.has(fmt)) {
    throw new ImageError(
      name,
      `unsupported image format ${fmt.toUpperCase()} (decodable: PNG, JPEG, GIF, little-endian ` +
        `TIFF); convert it first, e.g. ffmpeg -i in.${fmt} out.png`,
    );
  }
  checkDeclaredSize(bytes, name, maxImagePixels(opts.maxPixels), firstOnly);
  let decode: (typeof import("imagescript"))["decode"];
  try {
    ({ decode } = await decoder());
  } catch (e) {
    imagescript = null;
    throw new ImageError(
      name,
      `cannot load the imagescript decoder (run deno with -A: it loads a native addon): ${
        (e as Error)?.message ?? e
      }`,
      { cause: e },
    );
  }
  let decoded: any;
  try {
    decoded = await decode(bytes, firstOnly);
  } catch (e) {
    throw new ImageError(
      name,
      `corrupt or unreadable ${fmt.toUpperCase()} data (${(e as Error)?.message ?? e})`,
      { cause: e },
    );
  }
  const frames: RgbImage[] = [];
  if (fmt === "gif") {
    for (const f of decoded as Iterable<any>) {
      frames.push(fromBitmap(f.bitmap, f.width, f.height));
      if (firstOnly) break;
    }
  } else {
    frames.push(fromBitmap(decoded.bitmap, decoded.width, decoded.height));
  }
  if (frames.length === 0) throw new ImageError(name, `${fmt.toUpperCase()} holds no frames`);
  return frames;
}

/**
 * Decodes image bytes: every frame of a GIF, one frame otherwise. `name` labels errors.
 * Throws {@link ImageError} on unsupported or corrupt data, {@link ImageTooLargeError} when the
 * header declares more pixels than the limit (see {@link DecodeOptions}).
 */
export function decodeImageBytes(
  bytes: Uint8Array,
  name = "<bytes>",
  opts?: DecodeOptions,
): Promise<RgbImage[]> {
  return decodeAll(bytes, name, false, opts);
}

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    const st = await Deno.stat(path);
    if (!st.isFile && !st.isDirectory) {
      // A FIFO or device would block the read, or never end.
      throw new ImageError(
        path,
        "not a regular file (a FIFO, socket or device), expected an image",
      );
    }
    return await Deno.readFile(path);
  } catch (e) {
    if (e instanceof ImageError) throw e;
    if (e instanceof Deno.errors.NotFound) {
      throw new ImageError(path, "file not found", { cause: e });
    }
    if (e instanceof Deno.errors.IsADirectory) {
      throw new ImageError(path, "is a directory, expected an image file", { cause: e });
    }
    throw new ImageError(path, `cannot read file (${(e as Error)?.message ?? e})`, { cause: e });
  }
}

/**
 * Loads an image file (PNG, JPEG, TIFF, or the first frame of a GIF) as planar float RGB in
 * [0,1]; alpha is dropped. Throws {@link ImageError} naming the file when it is missing,
 * unreadable, corrupt or of an unsupported format, {@link ImageTooLargeError} when it declares
 * more pixels than the limit (see {@link DecodeOptions}).
 */
export async function loadImage(path: string, opts?: DecodeOptions): Promise<RgbImage> {
  return (await decodeAll(await readBytes(path), path, true, opts))[0];
}

/** Loads every frame of a GIF (composited by imagescript), or the single image of other files. */
export async function loadFrames(path: string, opts?: DecodeOptions): Promise<RgbImage[]> {
  return decodeAll(await readBytes(path), path, false, opts);
}

/**
 * Writes an image as PNG atomically (temp file in the same folder, then rename): a reader never
 * sees a partial file. Values are clamped, *255 and truncated to uint8 (the official save path).
 */
export async function savePng(path: string, img: RgbImage): Promise<void> {
  const bytes = await encodePng(img);
  try {
    await writeFileAtomic(path, bytes);
  } catch (e) {
    throw new ImageError(path, `cannot write PNG (${(e as Error)?.message ?? e})`, { cause: e });
  }
}

/**
 * The decodable image files directly in `dir` (extensions {@link IMAGE_EXTENSIONS}, any case;
 * not recursive), as `join(dir, name)` in natural order (frame2 before frame10).
 */
export async function listImages(dir: string): Promise<string[]> {
  const names: string[] = [], symlinks: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const dot = e.name.lastIndexOf(".");
      if (dot <= 0 || !IMAGE_EXTENSIONS.includes(e.name.slice(dot + 1).toLowerCase())) continue;
      if (e.isFile) names.push(e.name);
      else if (e.isSymlink) symlinks.push(e.name);
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ImageError(dir, "folder not found", { cause: e });
    }
    throw new ImageError(dir, `cannot list folder (${(e as Error)?.message ?? e})`, { cause: e });
  }
  // Symlinks are followed: a dangling one is skipped, a loop is an error naming it.
  for (const n of symlinks) {
    const path = join(dir, n);
    let kind;
    try {
      kind = await pathKind(path);
    } catch (e) {
      throw new ImageError(path, (e as Error).message.replace(`${path}: `, ""), { cause: e });
    }
    if (kind === "file") names.push(n);
  }
  return names.sort(naturalCompare).map((n) => join(dir, n));
}

/** Draws a chart and writes it as a PNG, atomically (a reader never sees a partial file). */
export async function saveChart(path: string, o: ChartOptions): Promise<void> {
  await savePng(path, renderChart(o));
}
