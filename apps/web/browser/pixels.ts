/**
 * Images in and out of the page: the browser's own decoders (`createImageBitmap`, any format and
 * size it reads) to planar RGB floats in [0,1] (b/255, as `@lvm/image`'s file decoders give), and
 * RGB floats to a canvas.
 * @module
 */
import { fromUint8, type RgbImage, toUint8 } from "@lvm/image";

/** Decodes an image file or blob to RGB floats (alpha dropped, no colour-space conversion). */
export async function decodeImage(blob: Blob): Promise<RgbImage> {
  const bmp = await createImageBitmap(blob, {
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  try {
    const c = new OffscreenCanvas(bmp.width, bmp.height);
    const ctx = c.getContext("2d", { willReadFrequently: true })!;
    ctx.drawImage(bmp, 0, 0);
    const { data } = ctx.getImageData(0, 0, bmp.width, bmp.height);
    return fromUint8(data, bmp.width, bmp.height, 4);
  } finally {
    bmp.close();
  }
}

/** Draws an image on a canvas of its size (CSS scales it, pixelated). */
export function drawImage(canvas: HTMLCanvasElement, img: RgbImage): void {
  canvas.width = img.width;
  canvas.height = img.height;
  const rgb = toUint8(img), P = img.width * img.height;
  const rgba = new Uint8ClampedArray(4 * P);
  for (let i = 0; i < P; i++) {
    rgba[4 * i] = rgb[3 * i];
    rgba[4 * i + 1] = rgb[3 * i + 1];
    rgba[4 * i + 2] = rgb[3 * i + 2];
    rgba[4 * i + 3] = 255;
  }
  canvas.getContext("2d")!.putImageData(new ImageData(rgba, img.width, img.height), 0, 0);
}
