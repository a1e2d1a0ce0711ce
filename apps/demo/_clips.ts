/**
 * The demo's built-in data: synthetic "videos" of 8 frames of 32x32, a square of one of 6 colours
 * and 8 or 12 px moving one token cell (4 px) to the right per frame and wrapping around.
 * @module
 */
import { join } from "node:path";
import { makeImage, type RgbImage } from "@lvm/image";
import { savePng } from "@lvm/image/fs";
import { Rng } from "@lvm/util";

/** Frame side in pixels. */
export const R = 32;
/** Frames per clip. */
export const FRAMES = 8;
/** Token cell: the tokenizer maps each 4x4 pixel block to one code (32x32 -> 8x8). */
export const CELL = 4;
const PALETTE = [
  [0.9, 0.2, 0.2],
  [0.2, 0.8, 0.3],
  [0.25, 0.4, 0.95],
  [0.95, 0.85, 0.2],
  [0.85, 0.3, 0.85],
  [0.2, 0.85, 0.85],
];

/**
 * One clip: a square of a palette colour, 2 or 3 cells wide, on the cell grid, moving one cell to
 * the right per frame and wrapping around. Squares on the grid with one motion are what a model
 * this small learns in minutes: next frame = this frame shifted by one token. (With free
 * positions, colours and velocities, 150-400 steps learn the within-frame statistics, score the
 * true next frame well, and greedy decoding still draws only the background: measured.)
 */
export function clip(seed: number): RgbImage[] {
  const r = new Rng(seed).fn();
  const col = PALETTE[Math.floor(r() * PALETTE.length)];
  const s = CELL * (2 + Math.floor(r() * 2));
  let x = CELL * Math.floor(r() * (R / CELL));
  const y = CELL * Math.floor(r() * (R / CELL));
  const frames = [];
  for (let f = 0; f < FRAMES; f++) {
    const img = makeImage(R, R);
    img.data.fill(0.05);
    for (let c = 0; c < 3; c++) {
      for (let dy = 0; dy < s; dy++) {
        for (let dx = 0; dx < s; dx++) {
          img.data[c * R * R + ((y + dy) % R) * R + ((x + dx) % R)] = col[c];
        }
      }
    }
    frames.push(img);
    x = (x + CELL) % R;
  }
  return frames;
}

/**
 * Writes `count` training clips and one held-out clip as folders of PNG frames under `dir`;
 * returns the training folders and the held-out one.
 */
export async function writeClips(
  dir: string,
  count: number,
): Promise<{ clips: string[]; heldout: string }> {
  const clips: string[] = [];
  for (let k = 0; k <= count; k++) {
    const d = join(dir, k < count ? `clip${String(k).padStart(3, "0")}` : "heldout");
    await Deno.mkdir(d, { recursive: true });
    const frames = clip(1000 + k);
    for (let f = 0; f < FRAMES; f++) await savePng(join(d, `frame${f}.png`), frames[f]);
    if (k < count) clips.push(d);
  }
  return { clips, heldout: join(dir, "heldout") };
}

/** PSNR in dB of `a` against `b` (pixels in [0, 1]). */
export function psnr(a: RgbImage, b: RgbImage): number {
  let se = 0;
  for (let i = 0; i < a.data.length; i++) se += (a.data[i] - b.data[i]) ** 2;
  return 10 * Math.log10(a.data.length / se);
}
