/**
 * The image type shared by the tokenizer and the sentence pipeline, and the pixel operations on it.
 *
 * An {@link RgbImage} is planar float RGB: `data` is (3, H, W), channel-major, values in [0, 1]
 * (what the VQGAN reads: x/255, no mean/std). Conversions to and from bytes follow the official
 * LVM code, which works in float32: bytes -> `b / 255`; floats -> `clamp(x, 0, 1) * 255` in float32,
 * truncated to uint8 (`astype(np.uint8)`), so a byte image survives the round trip exactly.
 * @module
 */
import { checkImage, checkSize } from "./_check.ts";

/** Planar RGB float image: `data` is (3, H, W) in [0,1]. */
export interface RgbImage {
  width: number;
  height: number;
  /** (3, H, W): plane c starts at c*H*W, pixel (x, y) of a plane at y*W + x. */
  data: Float32Array;
}

/**
 * An image file or byte buffer that could not be read: missing, unreadable, corrupt or of an
 * unsupported format. `path` is the file (or the name given for a byte buffer).
 */
export class ImageError extends Error {
  /** The file or buffer name the error is about. */
  readonly path: string;
  /** Creates an error whose message starts with the path. */
  constructor(path: string, message: string, options?: ErrorOptions) {
    super(`${path}: ${message}`, options);
    this.name = "ImageError";
    this.path = path;
  }
}

/**
 * Makes an image of `width` x `height`, black unless `data` (3, H, W) is given (used, not copied).
 *
 * @example
 * ```ts
 * import { makeImage } from "./image.ts";
 * const img = makeImage(4, 2);
 * if (img.data.length !== 3 * 4 * 2) throw new Error("size");
 * ```
 */
export function makeImage(width: number, height: number, data?: Float32Array): RgbImage {
  checkSize("makeImage", width, height);
  const n = 3 * width * height;
  if (data && data.length !== n) {
    throw new RangeError(
      `makeImage: data must hold 3*${height}*${width} = ${n} floats (3,H,W), found ${data.length}`,
    );
  }
  return { width, height, data: data ?? new Float32Array(n) };
}

/** One float in [0,1] to a byte as the official code does: clamp, *255 in float32, truncate. */
export function floatToByte(v: number): number {
  if (!(v > 0)) return 0; // also maps NaN to 0, as a float->uint8 cast of clamp(NaN) does in practice
  if (v >= 1) return 255;
  return Math.trunc(Math.fround(Math.fround(v) * 255));
}

/**
 * HWC RGB bytes of an image: clamp to [0,1], *255, truncate (the official save path).
 *
 * @example
 * ```ts
 * import { makeImage, toUint8 } from "./image.ts";
 * const img = makeImage(1, 1, new Float32Array([1, 0.5, -3]));
 * const px = toUint8(img); // [255, 127, 0]
 * if (px[1] !== 127) throw new Error("truncate");
 * ```
 */
export function toUint8(img: RgbImage): Uint8Array {
  checkImage("toUint8", img);
  const { width: W, height: H, data } = img;
  const P = W * H;
  const out = new Uint8Array(3 * P); // (H,W,3)
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < P; i++) out[i * 3 + c] = floatToByte(data[c * P + i]);
  }
  return out;
}

/**
 * Image from HWC bytes (RGB, or RGBA whose alpha is dropped): `b / 255` in float32.
 *
 * @example
 * ```ts
 * import { fromUint8 } from "./image.ts";
 * const img = fromUint8(new Uint8Array([255, 0, 51]), 1, 1);
 * if (img.data[0] !== 1 || img.data[2] !== Math.fround(0.2)) throw new Error("scale");
 * ```
 */
export function fromUint8(
  rgb: Uint8Array | Uint8ClampedArray,
  width: number,
  height: number,
  channels: 3 | 4 = 3,
): RgbImage {
  checkSize("fromUint8", width, height);
  if (channels !== 3 && channels !== 4) {
    throw new RangeError(`fromUint8: channels must be 3 or 4, found ${channels}`);
  }
  const P = width * height;
  if (rgb.length !== P * channels) {
    throw new RangeError(
      `fromUint8: expected ${height}*${width}*${channels} = ${P * channels} bytes (H,W,C), ` +
        `found ${rgb.length}`,
    );
  }
  const data = new Float32Array(3 * P); // (3,H,W)
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < P; i++) data[c * P + i] = rgb[i * channels + c] / 255;
  }
  return { width, height, data };
}

/**
 * Grayscale as the official colorization data: 0.2989 R + 0.5870 G + 0.1140 B, replicated to the
 * three channels.
 */
export function toGray(img: RgbImage): RgbImage {
  checkImage("toGray", img);
  const P = img.width * img.height, d = img.data;
  const out = new Float32Array(3 * P);
  for (let i = 0; i < P; i++) {
    const g = 0.2989 * d[i] + 0.587 * d[P + i] + 0.114 * d[2 * P + i];
    out[i] = out[P + i] = out[2 * P + i] = g;
  }
  return { width: img.width, height: img.height, data: out };
}

/** Copies `src` into `dst` with its top-left corner at (x0, y0); `dst` must contain it. */
function blit(dst: RgbImage, src: RgbImage, x0: number, y0: number): void {
  const Pd = dst.width * dst.height, Ps = src.width * src.height;
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < src.height; y++) {
      const s = c * Ps + y * src.width;
      dst.data.set(src.data.subarray(s, s + src.width), c * Pd + (y0 + y) * dst.width + x0);
    }
  }
}

/**
 * Lays images out left to right, each at its own width, `gap` pixels apart (gaps and padding
 * filled with `fill`, white by default), top aligned; the strip is as tall as the tallest image.
 */
export function hstack(images: RgbImage[], gap = 0, fill = 1): RgbImage {
  checkLayout("hstack", images, gap);
  const W = images.reduce((s, im) => s + im.width, 0) + gap * (images.length - 1);
  const out = makeImage(W, Math.max(...images.map((im) => im.height)));
  if (fill !== 0) out.data.fill(fill);
  let x = 0;
  for (const im of images) {
    blit(out, im, x, 0);
    x += im.width + gap;
  }
  return out;
}

function checkLayout(fn: string, images: RgbImage[], gap: number): void {
  if (!Array.isArray(images) || images.length === 0) {
    throw new RangeError(`${fn}: expected at least one image, found ${images?.length ?? 0}`);
  }
  if (!Number.isInteger(gap) || gap < 0) {
    throw new RangeError(`${fn}: gap must be a non-negative integer, found ${gap}`);
  }
  images.forEach((im, i) => checkImage(`${fn}: image ${i}`, im));
}

/**
 * Lays images out row-major in `cols` columns, `gap` pixels apart (filled with `fill`, white by
 * default). Every cell is as large as the largest image; images sit at their cell's top-left.
 * Empty cells of the last row stay `fill`.
 */
export function gridImage(images: RgbImage[], cols: number, gap = 0, fill = 1): RgbImage {
  checkLayout("gridImage", images, gap);
  if (!Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`gridImage: cols must be a positive integer, found ${cols}`);
  }
  const cw = Math.max(...images.map((im) => im.width));
  const ch = Math.max(...images.map((im) => im.height));
  const nc = Math.min(cols, images.length), nr = Math.ceil(images.length / cols);
  const out = makeImage(nc * cw + (nc - 1) * gap, nr * ch + (nr - 1) * gap);
  if (fill !== 0) out.data.fill(fill);
  images.forEach((im, i) => {
    blit(out, im, (i % cols) * (cw + gap), Math.floor(i / cols) * (ch + gap));
  });
  return out;
}

/** The `w` x `h` region whose top-left pixel is (x, y); it must lie inside the image. */
export function crop(img: RgbImage, x: number, y: number, w: number, h: number): RgbImage {
  checkImage("crop", img);
  checkSize("crop", w, h);
  if (!Number.isInteger(x) || !Number.isInteger(y) || x < 0 || y < 0) {
    throw new RangeError(`crop: x, y must be non-negative integers, found (${x}, ${y})`);
  }
  if (x + w > img.width || y + h > img.height) {
    throw new RangeError(
      `crop: region x=${x} y=${y} ${w}x${h} exceeds the ${img.width}x${img.height} image`,
    );
  }
  const P = img.width * img.height, out = makeImage(w, h), Q = w * h;
  for (let c = 0; c < 3; c++) {
    for (let r = 0; r < h; r++) {
      const s = c * P + (y + r) * img.width + x;
      out.data.set(img.data.subarray(s, s + w), c * Q + r * w);
    }
  }
  return out;
}

/** Maps every pixel: out(x, y) = img(srcX(x, y), srcY(x, y)) for an output of size w x h. */
function remap(
  img: RgbImage,
  w: number,
  h: number,
  src: (x: number, y: number) => number,
): RgbImage {
  const P = img.width * img.height, out = makeImage(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const s = src(x, y), o = y * w + x;
      out.data[o] = img.data[s];
      out.data[P + o] = img.data[P + s];
      out.data[2 * P + o] = img.data[2 * P + s];
    }
  }
  return out;
}

/** Mirror left-right. */
export function flipH(img: RgbImage): RgbImage {
  checkImage("flipH", img);
  const W = img.width;
  return remap(img, W, img.height, (x, y) => y * W + (W - 1 - x));
}

/** Mirror top-bottom. */
export function flipV(img: RgbImage): RgbImage {
  checkImage("flipV", img);
  const { width: W, height: H } = img;
  return remap(img, W, H, (x, y) => (H - 1 - y) * W + x);
}

/**
 * Rotates by `k` quarter turns counter-clockwise (the `np.rot90` convention; k may be negative).
 * Odd k swaps width and height.
 */
export function rotate90(img: RgbImage, k = 1): RgbImage {
  checkImage("rotate90", img);
  if (!Number.isInteger(k)) throw new RangeError(`rotate90: k must be an integer, found ${k}`);
  const { width: W, height: H } = img;
  switch (((k % 4) + 4) % 4) {
    case 0:
      return { width: W, height: H, data: img.data.slice() };
    case 1: // out (W x H tall): out(x, y) = in(W-1-y, x)
      return remap(img, H, W, (x, y) => x * W + (W - 1 - y));
    case 2:
      return remap(img, W, H, (x, y) => (H - 1 - y) * W + (W - 1 - x));
    default: // 3: out(x, y) = in(y, H-1-x)
      return remap(img, H, W, (x, y) => (H - 1 - x) * W + y);
  }
}

/** 1 - v for every value. */
export function invert(img: RgbImage): RgbImage {
  checkImage("invert", img);
  const out = new Float32Array(img.data.length);
  for (let i = 0; i < out.length; i++) out[i] = 1 - img.data[i];
  return { width: img.width, height: img.height, data: out };
}
