/**
 * Image formats without files: the declared size of PNG, JPEG, GIF and TIFF images read from their
 * headers (checked against a pixel limit before anything is decoded), format sniffing, PNG
 * encoding, and natural name order. Decoding and files are `@lvm/image/fs` (files.ts).
 *
 * Alpha is DROPPED, not composited: a pixel keeps the RGB stored in the file whatever its alpha,
 * which is what PIL's `convert("RGB")` (the official loader) does for PNG. For GIF, frames are
 * composited by imagescript's decoder (its disposal handling); a pixel transparent in every frame
 * so far reads black (PIL would return the transparent palette entry's colour there).
 *
 * Decompression bombs: the size an image declares in its header (PNG IHDR, JPEG SOF, GIF screen
 * and frame descriptors, TIFF IFD) is read BEFORE anything is decoded or allocated, and checked
 * against a pixel limit: {@link DEFAULT_MAX_IMAGE_PIXELS} (64 Mpixel, 8192x8192: an 8K frame or a
 * 48-megapixel photo fits; decoding one costs about 1 GB, RGBA plus float RGB), raised or lowered
 * by the `maxPixels` option or the `LVM_MAX_IMAGE_PIXELS` environment variable. All frames of an
 * animation together may hold 4x the limit. An image over it is an {@link ImageTooLargeError}
 * ("too large", naming the file, its size and the limit), never "corrupt".
 * @module
 */
import { crc32 } from "@lvm/util";
import { checkImage } from "./_check.ts";
import { ImageError, type RgbImage, toUint8 } from "./image.ts";

/** File extensions (lower case, no dot) that {@link decodeImageBytes} can decode. */
export const IMAGE_EXTENSIONS: readonly string[] = ["png", "jpg", "jpeg", "gif", "tif", "tiff"];

/** Pixels an image may hold unless the option or `LVM_MAX_IMAGE_PIXELS` says (64 Mpixel). */
export const DEFAULT_MAX_IMAGE_PIXELS = 64 * 1024 * 1024;

/** The environment variable that sets the pixel limit of decoding (a positive integer). */
export const MAX_IMAGE_PIXELS_ENV = "LVM_MAX_IMAGE_PIXELS";

/** Options of the decoders ({@link decodeImageBytes}, {@link loadImage}, {@link loadFrames}). */
export interface DecodeOptions {
  /**
   * Most pixels (width x height) one image or frame may declare; default `LVM_MAX_IMAGE_PIXELS`
   * when set, else {@link DEFAULT_MAX_IMAGE_PIXELS}. Every frame of an animation together may
   * hold 4x this.
   */
  maxPixels?: number;
}

/**
 * The pixel limit in force: `maxPixels` when given, else the `LVM_MAX_IMAGE_PIXELS` environment
 * variable when set (and readable), else {@link DEFAULT_MAX_IMAGE_PIXELS}. A value that is not a
 * positive integer is a RangeError naming where it came from.
 */
export function maxImagePixels(maxPixels?: number): number {
  let v: number | undefined = maxPixels, from = "maxPixels";
  if (v === undefined) {
    let env: string | undefined;
    try {
      const D = (globalThis as any).Deno;
      // Read only when already allowed: never a permission prompt in the middle of a decode.
      const st = D?.permissions?.querySync?.({ name: "env", variable: MAX_IMAGE_PIXELS_ENV });
      if (st?.state === "granted") env = D.env.get(MAX_IMAGE_PIXELS_ENV);
    } catch { /* no env permission (or no Deno): the default */ }
    if (env === undefined || env.trim() === "") return DEFAULT_MAX_IMAGE_PIXELS;
    v = Number(env.trim().replace(/_/g, ""));
    from = MAX_IMAGE_PIXELS_ENV;
  }
  if (!Number.isSafeInteger(v) || v < 1) {
    throw new RangeError(`${from} must be a positive integer (pixels), found ${v}`);
  }
  return v;
}

const mpix = (n: number) => `${(n / 1e6).toFixed(1)} Mpixel`;

/**
 * An image whose header declares more pixels than the decoding limit (a decompression bomb, or
 * a legitimately huge image): nothing was decoded. Names the file, the declared size and the limit.
 */
export class ImageTooLargeError extends ImageError {
  /** Declared width and height (of the largest frame), and frames when all were counted. */
  readonly width: number;
  readonly height: number;
  /** The pixel limit that was exceeded. */
  readonly limit: number;
  constructor(
    path: string,
    width: number,
    height: number,
    limit: number,
    frames = 1,
    options?: ErrorOptions,
  ) {
    const what = frames > 1
      ? `${frames} frames of ${width}x${height} = ${mpix(frames * width * height)} exceed ` +
        `the animation limit of ${mpix(4 * limit)} (4x ${limit} pixels)`
      : `${width}x${height} = ${mpix(width * height)} exceeds the limit of ${mpix(limit)} ` +
        `(${limit} pixels)`;
    super(
      path,
      `image too large: ${what}; nothing was decoded (raise it with ${MAX_IMAGE_PIXELS_ENV}=N ` +
        `or the maxPixels option if the image is trusted)`,
      options,
    );
    this.name = "ImageTooLargeError";
    this.width = width;
    this.height = height;
    this.limit = limit;
  }
}

/** What an image's header declares, read without decoding (see {@link readImageHeader}). */
export interface ImageHeader {
  format: "png" | "jpeg" | "gif" | "tiff";
  width: number;
  height: number;
  /** GIF: frames found by walking the blocks, and the largest frame's size. */
  frames?: number;
  maxFrameWidth?: number;
  maxFrameHeight?: number;
}

/**
 * The size an image declares in its header (PNG IHDR, the first JPEG SOF marker, GIF logical
 * screen plus every frame descriptor, little-endian TIFF's first IFD), read from the bytes without
 * decoding or allocating. Null when the header cannot be read (the decoder then says what is wrong).
 */
export function readImageHeader(bytes: Uint8Array): ImageHeader | null {
  const fmt = sniffFormat(bytes);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.length;
  if (fmt === "png") {
    // Signature (8), IHDR length (4), "IHDR", width, height (big-endian u32).
    if (n < 24 || String.fromCharCode(...bytes.subarray(12, 16)) !== "IHDR") return null;
    return { format: "png", width: dv.getUint32(16), height: dv.getUint32(20) };
  }
  if (fmt === "jpeg") {
    let p = 2;
    while (p + 4 <= n) {
      if (bytes[p] !== 0xff) return null;
      const m = bytes[p + 1];
      if (m === 0xff) { // fill byte
        p++;
        continue;
      }
      if (m === 0xd8 || m === 0x01 || (m >= 0xd0 && m <= 0xd7)) { // no length
        p += 2;
        continue;
      }
      if (m === 0xd9 || m === 0xda) return null; // end, or scan data before any frame header
      const len = dv.getUint16(p + 2);
      const sof = m >= 0xc0 && m <= 0xcf && m !== 0xc4 && m !== 0xc8 && m !== 0xcc;
      if (sof) {
        if (p + 9 > n) return null;
        return { format: "jpeg", height: dv.getUint16(p + 5), width: dv.getUint16(p + 7) };
      }
      p += 2 + len;
    }
    return null;
  }
  if (fmt === "gif") {
    if (n < 13) return null;
    const h: ImageHeader = {
      format: "gif",
      width: dv.getUint16(6, true),
      height: dv.getUint16(8, true),
      frames: 0,
      maxFrameWidth: 0,
      maxFrameHeight: 0,
    };
    let p = 13 + (bytes[10] & 0x80 ? 3 * (2 << (bytes[10] & 7)) : 0);
    const skipBlocks = () => {
      while (p < n && bytes[p] !== 0) p += bytes[p] + 1;
      p++;
    };
    while (p < n) {
      const b = bytes[p];
      if (b === 0x3b) break; // trailer
      if (b === 0x21) { // extension: label, sub-blocks
        p += 2;
        skipBlocks();
      } else if (b === 0x2c) { // image descriptor
        if (p + 10 > n) break;
        const w = dv.getUint16(p + 5, true), fh = dv.getUint16(p + 7, true);
        if (w * fh > h.maxFrameWidth! * h.maxFrameHeight!) {
          [h.maxFrameWidth, h.maxFrameHeight] = [w, fh];
        }
        h.frames!++;
        const packed = bytes[p + 9];
        p += 10 + (packed & 0x80 ? 3 * (2 << (packed & 7)) : 0) + 1; // + LZW code size
        skipBlocks();
      } else break; // corrupt: the decoder will say so
    }
    return h;
  }
  if (fmt === "tiff") {
    if (n < 8) return null;
    const ifd = dv.getUint32(4, true);
    if (ifd + 2 > n) return null;
    const count = dv.getUint16(ifd, true);
    let width = -1, height = -1;
    for (let k = 0; k < count; k++) {
      const e = ifd + 2 + 12 * k;
      if (e + 12 > n) break;
      const tag = dv.getUint16(e, true), type = dv.getUint16(e + 2, true);
      const v = type === 3 ? dv.getUint16(e + 8, true) : dv.getUint32(e + 8, true);
      if (tag === 256) width = v;
      if (tag === 257) height = v;
    }
    return width >= 0 && height >= 0 ? { format: "tiff", width, height } : null;
  }
  return null;
}

/** Throws {@link ImageTooLargeError} when the header of `bytes` declares more than the limit. */
/** Throws {@link ImageTooLargeError} when the header of `bytes` declares more pixels than `limit`. */
export function checkDeclaredSize(
  bytes: Uint8Array,
  name: string,
  limit: number,
  firstOnly: boolean,
) {
  const h = readImageHeader(bytes);
  if (!h) return;
  if (h.width * h.height > limit) throw new ImageTooLargeError(name, h.width, h.height, limit);
  if (h.format !== "gif") return;
  const fw = h.maxFrameWidth!, fh = h.maxFrameHeight!;
  if (fw * fh > limit) throw new ImageTooLargeError(name, fw, fh, limit);
  // Frames are composited at the screen size (or the largest frame's, when bigger).
  const px = Math.max(h.width * h.height, fw * fh);
  if (!firstOnly && h.frames! > 1 && h.frames! * px > 4 * limit) {
    const [w, hh] = fw * fh > h.width * h.height ? [fw, fh] : [h.width, h.height];
    throw new ImageTooLargeError(name, w, hh, limit, h.frames);
  }
}

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

// ---- PNG encoder: 8-bit RGB, zlib via CompressionStream, per-row filter chosen by min-sum-abs.

function chunk(type: string, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + body.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, body.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(body, 8);
  dv.setUint32(8 + body.length, crc32(out.subarray(4, 8 + body.length)));
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
