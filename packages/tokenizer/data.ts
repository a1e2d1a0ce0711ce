/**
 * Training images for the tokenizer: sources (image files, GIFs, videos, frame folders; loaded by
 * `loadSources` of `@lvm/tokenizer/fs`) at a reduced size, a seeded batch sampler with light augmentation, a held-out split by source, and
 * the reconstruction PSNR evaluation.
 *
 * A source is what the held-out split keeps whole, so that near-identical frames never sit on both
 * sides: an image file, every frame of a GIF or a video, or every image of a frame folder. A folder
 * given on the command line contributes its image files as separate sources and each of its
 * sub-folders (one level) as one frame-folder source. A GIF, a video or a frame folder keeps at most
 * `maxFrames` of its frames, evenly spaced (default {@link DEFAULT_MAX_FRAMES}; 0 keeps every frame).
 * @module
 */
import { crop, flipH, resize, type RgbImage } from "@lvm/image";
import type { Rng } from "@lvm/util";

/** One source of training images (see the module doc). */
export interface ImageSource {
  /** The file or folder. */
  name: string;
  /** Its images, shorter side at most `maxSide` (aspect kept). */
  frames: RgbImage[];
}

/** Shrinks an image so its shorter side is at most `maxSide` (PIL bicubic); smaller ones are kept. */
export function shrink(img: RgbImage, maxSide: number): RgbImage {
  const s = Math.min(img.width, img.height);
  if (s <= maxSide) return img;
  const f = maxSide / s;
  return resize(
    img,
    Math.max(1, Math.round(img.width * f)),
    Math.max(1, Math.round(img.height * f)),
  );
}

/** At most n items of xs, evenly spaced (all of them when n is 0). */
export function evenlySpaced<T>(xs: T[], n: number): T[] {
  if (n <= 0 || xs.length <= n) return xs;
  return Array.from({ length: n }, (_, i) => xs[Math.floor((i * xs.length) / n)]);
}

/** {@link holdOut} was asked to hold out every source, leaving none to train on. */
export class HoldOutError extends RangeError {
  override name = "HoldOutError";
}

/**
 * Splits sources: every `every`-th one (indices every-1, 2*every-1, ...) is held out; 0 holds none,
 * and so does a single source. `every` 1 would hold out all of two or more sources: a
 * {@link HoldOutError}.
 */
export function holdOut(
  sources: ImageSource[],
  every: number,
): { train: ImageSource[]; held: ImageSource[] } {
  if (every <= 0 || sources.length < 2) return { train: sources, held: [] };
  if (every === 1) {
    throw new HoldOutError(
      `holding out every 1st source holds out all ${sources.length} sources, leaving none to train on`,
    );
  }
  const held = sources.filter((_, i) => i % every === every - 1);
  const train = sources.filter((_, i) => i % every !== every - 1);
  if (!held.length) return { train: sources.slice(0, -1), held: sources.slice(-1) };
  return { train, held };
}

/**
 * One training example: a random frame of a random source; with probability 1/4 the whole frame
 * squash-resized (what encoding does), else a random square crop of 40-100% of the shorter side;
 * mirrored with probability 1/2; resized (PIL bicubic) to `R` x `R`.
 */
export function sampleImage(sources: ImageSource[], R: number, rng: Rng): RgbImage {
  if (!sources.length) throw new RangeError("sampleImage: no training sources to sample from");
  const src = sources[rng.int(sources.length)];
  let img = src.frames[rng.int(src.frames.length)];
  if (rng.next() >= 0.25) {
    const m = Math.min(img.width, img.height);
    const side = Math.max(1, Math.round(m * (0.4 + 0.6 * rng.next())));
    const x = rng.int(img.width - side + 1), y = rng.int(img.height - side + 1);
    img = crop(img, x, y, side, side);
  }
  if (rng.next() < 0.5) img = flipH(img);
  return img.width === R && img.height === R ? img : resize(img, R, R);
}

/** A batch (B,3,R,R) of {@link sampleImage} examples. */
export function sampleBatch(sources: ImageSource[], B: number, R: number, rng: Rng): Float32Array {
  const P = 3 * R * R, out = new Float32Array(B * P);
  for (let i = 0; i < B; i++) out.set(sampleImage(sources, R, rng).data, i * P);
  return out;
}

/** The evaluation images of held-out sources: at most `perSource` frames each, evenly spaced. */
export function evalImages(sources: ImageSource[], perSource = 4): RgbImage[] {
  return sources.flatMap((s) => evenlySpaced(s.frames, perSource));
}

/** Reconstruction quality: mean of per-image PSNR (dB) and the overall MSE, on [0,1] pixels. */
export interface EvalResult {
  images: number;
  psnr: number;
  mse: number;
}

/**
 * Encodes and decodes `images` (squash-resized to the tokenizer's resolution) and compares with the
 * resized inputs: mean per-image PSNR and MSE.
 */
export async function evaluateReconstruction(
  tok: {
    resolution: number;
    encode(images: RgbImage[]): Promise<Int32Array[]>;
    decode(tokens: ArrayLike<number>[]): Promise<RgbImage[]>;
  },
  images: RgbImage[],
): Promise<EvalResult> {
  const R = tok.resolution;
  const inputs = images.map((m) => (m.width === R && m.height === R ? m : resize(m, R, R)));
  const out = await tok.decode(await tok.encode(inputs));
  let psnrSum = 0, mseSum = 0;
  inputs.forEach((m, i) => {
    let s = 0;
    const a = m.data, b = out[i].data;
    for (let j = 0; j < a.length; j++) s += (a[j] - b[j]) ** 2;
    const mse = s / a.length;
    mseSum += mse;
    psnrSum += mse > 0 ? 10 * Math.log10(1 / mse) : 100;
  });
  const n = Math.max(1, images.length);
  return { images: images.length, psnr: psnrSum / n, mse: mseSum / n };
}
