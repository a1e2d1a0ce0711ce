/** Argument checks shared by the image files (private). @module */
import type { RgbImage } from "./image.ts";

/** Throws a RangeError unless width and height are positive integers. */
export function checkSize(fn: string, width: number, height: number): void {
  for (const [name, v] of [["width", width], ["height", height]] as const) {
    if (!Number.isInteger(v) || v < 1) {
      throw new RangeError(`${fn}: ${name} must be a positive integer, found ${v}`);
    }
  }
}

/** Throws unless `img` is a well-formed RgbImage. */
export function checkImage(fn: string, img: RgbImage): void {
  if (!img || !(img.data instanceof Float32Array)) {
    throw new TypeError(`${fn}: expected an RgbImage {width, height, data: Float32Array}`);
  }
  checkSize(fn, img.width, img.height);
  if (img.data.length !== 3 * img.width * img.height) {
    throw new RangeError(
      `${fn}: image data must hold 3*${img.height}*${img.width} floats, found ${img.data.length}`,
    );
  }
}
