/**
 * Bicubic squash-resize, bit-exact with PIL's `Image.resize((w, h), Image.BICUBIC)` on 8-bit RGB
 * (the official LVM/VQGAN preprocessing resizes with PIL bicubic, no crop).
 *
 * This is a port of PIL's libImaging/Resample.c (`ImagingResampleInner` with the 8 bpc passes):
 * - kernel: cubic convolution with a = -0.5 on support 2; when shrinking, the support is widened
 *   by the scale factor (antialias) and the argument divided by it;
 * - per output pixel: window [trunc(center - support + 0.5), trunc(center + support + 0.5)) clipped
 *   to the image, weights normalised to sum 1 (in double), then converted to fixed point with
 *   PRECISION_BITS = 32 - 8 - 2 = 22 fractional bits, rounded half away from zero;
 * - a pass accumulates `pixel * weight` in int32 starting from 1 << 21 (round half up), and
 *   `clip8` takes `acc >> 22` clamped to [0, 255];
 * - the horizontal pass runs first (only on the rows the vertical pass reads) and its result is
 *   stored as uint8; then the vertical pass. A pass whose size does not change is skipped, and an
 *   unchanged size returns a copy.
 * Everything is done in the same double and int32 arithmetic as the C code, in the same order.
 * @module
 */
import { checkImage, checkSize } from "./_check.ts";
import type { RgbImage } from "./image.ts";

const PRECISION_BITS = 32 - 8 - 2;
const SUPPORT = 2.0; // bicubic

/** PIL's `bicubic_filter` (a = -0.5), same operation order so the doubles are identical. */
function bicubic(x: number): number {
  const a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

/** Fixed-point coefficients of one axis: output i reads `n[i]` inputs from `start[i]`. */
interface Coeffs {
  ksize: number;
  start: Int32Array; // (out)
  n: Int32Array; // (out)
  k: Int32Array; // (out, ksize), weights * 2^22
}

/** PIL's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box [0, inSize). */
function coeffs(inSize: number, outSize: number): Coeffs {
  const scale = inSize / outSize; // (double)(in1 - in0) / outSize with in0 = 0, in1 = inSize
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = SUPPORT * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize), n = new Int32Array(outSize);
  const k = new Int32Array(outSize * ksize);
  const w = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = 0 + (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5); // C (int) cast truncates toward zero
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const v = bicubic((x + xmin - center + 0.5) * ss);
      w[x] = v;
      ww += v;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? w[x] / ww : w[x];
      // normalize_coeffs_8bpc: (int)(±0.5 + v * (1 << PRECISION_BITS))
      k[xx * ksize + x] = v < 0
        ? Math.trunc(-0.5 + v * (1 << PRECISION_BITS))
        : Math.trunc(0.5 + v * (1 << PRECISION_BITS));
    }
    start[xx] = xmin;
    n[xx] = xmax;
  }
  return { ksize, start, n, k };
}

/** PIL's clip8: acc >> PRECISION_BITS (arithmetic shift) clamped to a byte. */
function clip8(acc: number): number {
  const v = acc >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Resizes interleaved 8-bit pixels (H, W, C) to (outH, outW, C), bit-exact with PIL's BICUBIC
 * resize of an 8-bit image of C channels (C = 3 for RGB; C = 1 for "L").
 */
export function resizeUint8(
  src: Uint8Array,
  width: number,
  height: number,
  outWidth: number,
  outHeight: number,
  channels = 3,
): Uint8Array {
  checkSize("resizeUint8 (input)", width, height);
  checkSize("resizeUint8 (output)", outWidth, outHeight);
  if (!Number.isInteger(channels) || channels < 1) {
    throw new RangeError(`resizeUint8: channels must be a positive integer, found ${channels}`);
  }
  if (src.length !== width * height * channels) {
    throw new RangeError(
      `resizeUint8: expected ${height}*${width}*${channels} bytes (H,W,C), found ${src.length}`,
    );
  }
  const C = channels;
  if (outWidth === width && outHeight === height) return src.slice();
  const needH = outWidth !== width, needV = outHeight !== height;
  const ch = coeffs(width, outWidth), cv = coeffs(height, outHeight);
  const half = 1 << (PRECISION_BITS - 1);

  // Horizontal pass over the rows [yFirst, yLast) that the vertical pass reads.
  let tmp = src, tmpW = width;
  let yFirst = 0;
  if (needH) {
    yFirst = cv.start[0];
    const yLast = cv.start[outHeight - 1] + cv.n[outHeight - 1];
    const rows = yLast - yFirst;
    tmp = new Uint8Array(rows * outWidth * C); // (rows, outW, C)
    tmpW = outWidth;
    for (let yy = 0; yy < rows; yy++) {
      const rowIn = (yy + yFirst) * width * C;
      for (let xx = 0; xx < outWidth; xx++) {
        const xmin = ch.start[xx], xn = ch.n[xx], kb = xx * ch.ksize;
        for (let c = 0; c < C; c++) {
          let ss = half;
          for (let x = 0; x < xn; x++) ss += src[rowIn + (x + xmin) * C + c] * ch.k[kb + x];
          tmp[(yy * outWidth + xx) * C + c] = clip8(ss);
        }
      }
    }
  }
  if (!needV) return tmp;

  // Vertical pass (bounds shifted by yFirst when the horizontal pass cropped the rows).
  const out = new Uint8Array(outHeight * tmpW * C); // (outH, outW, C)
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = cv.start[yy] - yFirst, yn = cv.n[yy], kb = yy * cv.ksize;
    for (let xx = 0; xx < tmpW; xx++) {
      for (let c = 0; c < C; c++) {
        let ss = half;
        for (let y = 0; y < yn; y++) ss += tmp[((y + ymin) * tmpW + xx) * C + c] * cv.k[kb + y];
        out[(yy * tmpW + xx) * C + c] = clip8(ss);
      }
    }
  }
  return out;
}

/**
 * Squash-resizes to `width` x `height` (no crop, aspect ratio not kept) with PIL's bicubic.
 *
 * The image is quantised to bytes first (`round(clamp(v, 0, 1) * 255)`, which recovers the exact
 * bytes of an image that came from uint8), resized bit-exactly as PIL does, and returned as
 * `byte / 255`. So the result always lies on the 1/255 grid, like the official preprocessing
 * (PIL resize, then /255). An unchanged size returns an unquantised copy (PIL returns a copy too).
 *
 * @example
 * ```ts
 * import { makeImage } from "./image.ts";
 * import { resize } from "./resize.ts";
 * const small = resize(makeImage(37, 23), 16, 16);
 * if (small.width !== 16 || small.height !== 16) throw new Error("size");
 * ```
 */
export function resize(img: RgbImage, width: number, height: number): RgbImage {
  checkImage("resize", img);
  checkSize("resize", width, height);
  const { width: W, height: H, data } = img;
  if (W === width && H === height) return { width, height, data: data.slice() };
  const P = W * H, Q = width * height;
  const bytes = new Uint8Array(3 * P); // (H,W,3)
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < P; i++) {
      const v = data[c * P + i];
      bytes[i * 3 + c] = v > 0 ? (v < 1 ? Math.round(v * 255) : 255) : 0;
    }
  }
  const res = resizeUint8(bytes, W, H, width, height, 3); // (height,width,3)
  const out = new Float32Array(3 * Q); // (3,height,width)
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < Q; i++) out[c * Q + i] = res[i * 3 + c] / 255;
  }
  return { width, height, data: out };
}
