/**
 * Image files: decoding PNG, JPEG, GIF (all frames) and TIFF with imagescript (npm, WebAssembly;
 * run with -A), encoding PNG, and listing an image folder in natural order.
 *
 * Alpha is DROPPED, not composited: a pixel keeps the RGB stored in the file whatever its alpha,
 * which is what PIL's `convert("RGB")` (the official loader) does for PNG. For GIF, frames are
 * composited by imagescript's decoder (its disposal handling); a pixel transparent in every frame
 * so far reads black (PIL would return the transparent palette entry's colour there).
 * @module
 */
import { join } from "node:path";
import { writeFileAtomic } from "@lvm/kernels/fs";
import { checkImage } from "./_check.ts";
import { fromUint8, ImageError, type RgbImage, toUint8 } from "./image.ts";

/** File extensions (lower case, no dot) that {@link decodeImageBytes} can decode. */
export const IMAGE_EXTENSIONS: readonly string[] = ["png", "jpg", "jpeg", "gif", "tif", "tiff"];

/** The container format from the first bytes, or null when unknown. */
export function sniffFormat(bytes: Uint8Array): string | null {
  const b = (i: number) => bytes[i];
  if (bytes.length >= 8 && b(0) === 0x89 && b(1) === 0x50 && b(2) === 0x4e && b(3) === 0x47) {
    return "png";
  }
  if (bytes.length >= 3 && b(0) === 0xff && b(1) === 0xd8 && b(2) === 0xff) return "jpeg";
  if (bytes.length >= 6 && b(0) === 0x47 && b(1) === 0x49 && b(2) === 0x46) return "gif";
  if (bytes.length >= 4 && b(0) === 0x49 && b(1) === 0x49 && b(2) === 0x2a && b(3) === 0) {
    return "tiff";
  }
  if (bytes.length >= 4 && b(0) === 0x4d && b(1) === 0x4d && b(2) === 0 && b(3) === 0x2a) {
    return "tiff-big-endian";
  }
  if (bytes.length >= 2 && b(0) === 0x42 && b(1) === 0x4d) return "bmp";
  if (
    bytes.length >= 12 && b(0) === 0x52 && b(1) === 0x49 && b(2) === 0x46 && b(3) === 0x46 &&
    b(8) === 0x57 && b(9) === 0x45 && b(10) === 0x42 && b(11) === 0x50
  ) return "webp";
  return null;
}

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

async function decodeAll(bytes: Uint8Array, name: string, firstOnly: boolean) {
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
 * Throws {@link ImageError} on unsupported or corrupt data.
 */
export function decodeImageBytes(bytes: Uint8Array, name = "<bytes>"): Promise<RgbImage[]> {
  return decodeAll(bytes, name, false);
}

async function readBytes(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (e) {
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
 * unreadable, corrupt or of an unsupported format.
 */
export async function loadImage(path: string): Promise<RgbImage> {
  return (await decodeAll(await readBytes(path), path, true))[0];
}

/** Loads every frame of a GIF (composited by imagescript), or the single image of other files. */
export async function loadFrames(path: string): Promise<RgbImage[]> {
  return decodeAll(await readBytes(path), path, false);
}

// ---- PNG encoder: 8-bit RGB, zlib via CompressionStream, per-row filter chosen by min-sum-abs.

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes: Uint8Array, crc = 0xffffffff): number {
  for (let i = 0; i < bytes.length; i++) crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return crc;
}

function chunk(type: string, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + body.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, body.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(body, 8);
  dv.setUint32(8 + body.length, (crc32(out.subarray(4, 8 + body.length)) ^ 0xffffffff) >>> 0);
  return out;
}

function paeth(a: number, b: number, c: number): number {
  const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** Filtered scanlines: each row is a filter byte then the filtered (W*3) bytes. */
function filterRows(rgb: Uint8Array, W: number, H: number): Uint8Array {
  const stride = W * 3, bpp = 3;
  const out = new Uint8Array(H * (stride + 1));
  const cand = Array.from({ length: 5 }, () => new Uint8Array(stride));
  const zero = new Uint8Array(stride);
  for (let y = 0; y < H; y++) {
    const row = rgb.subarray(y * stride, (y + 1) * stride);
    const up = y > 0 ? rgb.subarray((y - 1) * stride, y * stride) : zero;
    let best = 0, bestSum = Infinity;
    for (let f = 0; f < 5; f++) {
      const o = cand[f];
      let sum = 0;
      for (let i = 0; i < stride; i++) {
        const a = i >= bpp ? row[i - bpp] : 0, b = up[i], c = i >= bpp ? up[i - bpp] : 0;
        const pred = f === 0
          ? 0
          : f === 1
          ? a
          : f === 2
          ? b
          : f === 3
          ? (a + b) >> 1
          : paeth(a, b, c);
        const v = (row[i] - pred) & 0xff;
        o[i] = v;
        sum += v < 128 ? v : 256 - v;
      }
      if (sum < bestSum) [best, bestSum] = [f, sum];
    }
    out[y * (stride + 1)] = best;
    out.set(cand[best], y * (stride + 1) + 1);
  }
  return out;
}

async function zlib(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream()
    .pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/**
 * Encodes an image as an 8-bit RGB PNG (no metadata, deterministic). Values are clamped to [0,1],
 * *255 and truncated as in {@link toUint8}.
 */
export async function encodePng(img: RgbImage): Promise<Uint8Array> {
  checkImage("encodePng", img);
  const { width: W, height: H } = img;
  const ihdr = new Uint8Array(13);
  const dv = new DataView(ihdr.buffer);
  dv.setUint32(0, W);
  dv.setUint32(4, H);
  ihdr.set([8, 2, 0, 0, 0], 8); // bit depth 8, colour type 2 (RGB), deflate, adaptive, no interlace
  const idat = await zlib(filterRows(toUint8(img), W, H));
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", idat),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) [out.set(p, o), o += p.length];
  return out;
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
 * Compares names in natural order: digit runs compare as numbers ("frame2" < "frame10"), the
 * rest by code point; ties broken by plain code-point order.
 */
export function naturalCompare(a: string, b: string): number {
  const ta = a.match(/\d+|\D+/g) ?? [], tb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.min(ta.length, tb.length); i++) {
    const x = ta[i], y = tb[i];
    const dx = x.charCodeAt(0) >= 48 && x.charCodeAt(0) <= 57;
    const dy = y.charCodeAt(0) >= 48 && y.charCodeAt(0) <= 57;
    if (dx && dy) {
      const nx = x.replace(/^0+(?=\d)/, ""), ny = y.replace(/^0+(?=\d)/, "");
      if (nx.length !== ny.length) return nx.length - ny.length;
      if (nx !== ny) return nx < ny ? -1 : 1;
    } else if (x !== y) {
      return x < y ? -1 : 1;
    }
  }
  if (ta.length !== tb.length) return ta.length - tb.length;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * The decodable image files directly in `dir` (extensions {@link IMAGE_EXTENSIONS}, any case;
 * not recursive), as `join(dir, name)` in natural order (frame2 before frame10).
 */
export async function listImages(dir: string): Promise<string[]> {
  const names: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const dot = e.name.lastIndexOf(".");
      if (dot <= 0 || !IMAGE_EXTENSIONS.includes(e.name.slice(dot + 1).toLowerCase())) continue;
      if (
        e.isFile || (e.isSymlink && (await Deno.stat(join(dir, e.name)).catch(() => null))?.isFile)
      ) {
        names.push(e.name);
      }
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ImageError(dir, "folder not found", { cause: e });
    }
    throw new ImageError(dir, `cannot list folder (${(e as Error)?.message ?? e})`, { cause: e });
  }
  return names.sort(naturalCompare).map((n) => join(dir, n));
}
