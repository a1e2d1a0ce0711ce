/**
 * Test doubles for the data pipeline. **Not a tokenizer to train with**: the real one is the
 * VQGAN of @lvm/tokenizer. Nothing in the library uses these by default.
 * @module
 */

import { join } from "node:path";
import type { RgbImage } from "@lvm/image";
import { makeLayout } from "./layout.ts";
import {
  countShards,
  type DatasetIndex,
  tokenShardFileName,
  writeIndex,
  writeShard,
} from "./shards.ts";
import type { ImageTokenizer } from "./tokenizer.ts";

/**
 * A deterministic stand-in for the VQGAN: the image (resolution x resolution) is cut into
 * 16x16-pixel blocks in raster order, and each block's mean colour is quantized to 4 bits red,
 * 4 bits green, 5 bits blue: code = r*512 + g*32 + b, 8192 codes like the VQGAN. At resolution
 * 256 it gives 256 tokens per image, the VQGAN's layout. Pure CPU, exact, fast.
 */
export class BlockMeanTestTokenizer implements ImageTokenizer {
  readonly id: string;
  readonly tokensPerImage: number;
  readonly codebookSize = 8192;
  /** Images seen by `encode` (tests count redone work with it). */
  encoded = 0;
  /** Calls of `encode` with their batch sizes. */
  readonly batches: number[] = [];

  constructor(readonly resolution = 256) {
    if (!Number.isInteger(resolution) || resolution < 16 || resolution % 16) {
      throw new RangeError(
        `BlockMeanTestTokenizer: resolution must be a multiple of 16, found ${resolution}`,
      );
    }
    this.tokensPerImage = (resolution / 16) ** 2;
    this.id = `test-block-mean-${resolution}px-v1`;
  }

  /** Codes of one image. */
  encodeOne(img: RgbImage): Int32Array {
    const R = this.resolution, g = R / 16, P = R * R;
    if (img.width !== R || img.height !== R) {
      throw new RangeError(
        `BlockMeanTestTokenizer: expected ${R}x${R} images, found ${img.width}x${img.height}`,
      );
    }
    const out = new Int32Array(g * g);
    for (let by = 0; by < g; by++) {
      for (let bx = 0; bx < g; bx++) {
        const m = [0, 0, 0];
        for (let c = 0; c < 3; c++) {
          let s = 0;
          for (let y = by * 16; y < by * 16 + 16; y++) {
            for (let x = bx * 16; x < bx * 16 + 16; x++) s += img.data[c * P + y * R + x];
          }
          m[c] = s / 256;
        }
        const q = (v: number, levels: number) =>
          Math.min(levels - 1, Math.max(0, Math.floor(v * levels)));
        out[by * g + bx] = q(m[0], 16) * 512 + q(m[1], 16) * 32 + q(m[2], 32);
      }
    }
    return out;
  }

  encode(images: RgbImage[]): Promise<Int32Array[]> {
    this.encoded += images.length;
    this.batches.push(images.length);
    return Promise.resolve(images.map((im) => this.encodeOne(im)));
  }
}

/** Solid colour image (3,H,W). */
function solid(w: number, h: number, rgb: [number, number, number]): RgbImage {
  const P = w * h, data = new Float32Array(3 * P);
  for (let c = 0; c < 3; c++) data.fill(rgb[c], c * P, (c + 1) * P);
  return { width: w, height: h, data };
}

/** Image whose four quadrants have distinct colours (so rotations and flips change its codes). */
function quadrants(w: number, h: number, i: number): RgbImage {
  const img = solid(w, h, [0, 0, 0]), P = w * h;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const q = (y < h / 2 ? 0 : 2) + (x < w / 2 ? 0 : 1);
      img.data[y * w + x] = (q + 0.5) / 4;
      img.data[P + y * w + x] = (i + 0.5) / 16;
      img.data[2 * P + y * w + x] = ((q * 5 + i) % 32 + 0.5) / 32;
    }
  }
  return img;
}

/** Paths of the fixture tree written by {@link writeTestInputs}. */
export interface TestInputs {
  /** 20 frames; frame k is solid blue (k+0.5)/32: every block codes to k. */
  frames: string;
  /** Animated GIF of 10 frames. */
  gif: string;
  /** 9 quadrant images (plain images for the derived tasks). */
  images: string;
  /** Paired folders: x/pK.png and y/pK.png (the inverted image), K = 0..8. */
  x: string;
  y: string;
  /** Three modality folders with scenes s0..s6 (s6 missing from the last). */
  modalities: string[];
  /** Root of class folders c0 (5 images), c1 (4), c2 (3). */
  classes: string;
}

/**
 * Writes a small tree of synthetic inputs for every sentence kind under `root` (PNG files, odd
 * sizes so the squash-resize is exercised, and one GIF).
 */
export async function writeTestInputs(root: string): Promise<TestInputs> {
  const { savePng } = await import("@lvm/image/fs");
  const { GIF, Frame } = await import("imagescript");
  const j = (...p: string[]) => [root, ...p].join("/");
  const mk = (d: string) => Deno.mkdir(d, { recursive: true });
  await mk(j("frames"));
  for (let k = 0; k < 20; k++) {
    await savePng(j("frames", `f${k}.png`), solid(23, 17, [0, 0, (k + 0.5) / 32]));
  }
  await mk(j("images"));
  await mk(j("x"));
  await mk(j("y"));
  for (let i = 0; i < 9; i++) {
    const q = quadrants(37, 29, i);
    await savePng(j("images", `i${i}.png`), q);
    await savePng(j("x", `p${i}.png`), q);
    await savePng(j("y", `p${i}.png`), { ...q, data: q.data.map((v) => 1 - v) });
  }
  const modalities = ["rgb", "depth", "edge"].map((m) => j("modal", m));
  for (const [m, dir] of modalities.entries()) {
    await mk(dir);
    for (let s = 0; s < (m === 2 ? 6 : 7); s++) {
      await savePng(`${dir}/s${s}.png`, solid(20, 20, [(m + 0.5) / 16, (s + 0.5) / 16, 0.5]));
    }
  }
  for (const [c, n] of [[0, 5], [1, 4], [2, 3]]) {
    await mk(j("classes", `c${c}`));
    for (let i = 0; i < n; i++) {
      await savePng(
        j("classes", `c${c}`, `${i}.png`),
        solid(28, 28, [(c + 0.5) / 16, (i + 0.5) / 16, 0]),
      );
    }
  }
  const frames = Array.from({ length: 10 }, (_, k) => {
    const f = new Frame(24, 24, 100);
    f.fill(Frame.rgbToColor(k * 25, 255 - k * 25, 128));
    return f;
  });
  await Deno.writeFile(j("anim.gif"), await new GIF(frames).encode());
  return {
    frames: j("frames"),
    gif: j("anim.gif"),
    images: j("images"),
    x: j("x"),
    y: j("y"),
    modalities,
    classes: j("classes"),
  };
}

/**
 * Writes an MJPEG AVI of `frames` test-pattern frames (48x36, needs ffmpeg) whose every frame's
 * JPEG data is replaced by garbage: the container probes fine, no frame decodes. With
 * `frameCount: false` the headers' frame counts are zeroed too, so a frame count must come from
 * decoding. Returns `path`.
 */
export async function writeCorruptAvi(
  path: string,
  opts: { frames?: number; frameCount?: boolean } = {},
): Promise<string> {
  const frames = opts.frames ?? 12;
  const gen = await new Deno.Command("ffmpeg", {
    args: [
      ...["-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=48x36:rate=10"],
      ...["-frames:v", String(frames), "-c:v", "mjpeg", "-q:v", "3", path],
    ],
    stdin: "null",
    stderr: "piped",
  }).output();
  if (!gen.success) throw new Error(`ffmpeg: ${new TextDecoder().decode(gen.stderr)}`);
  const b = await Deno.readFile(path);
  const dv = new DataView(b.buffer);
  const tag = (i: number) => String.fromCharCode(b[i], b[i + 1], b[i + 2], b[i + 3]);
  let i = 12;
  while (i + 12 <= b.length && !(tag(i) === "LIST" && tag(i + 8) === "movi")) {
    i += 8 + dv.getUint32(i + 4, true);
  }
  if (i + 12 > b.length) throw new Error(`${path}: no movi list`);
  let garbled = 0;
  for (i += 12; i + 8 <= b.length && tag(i) !== "idx1";) {
    const size = dv.getUint32(i + 4, true);
    if (tag(i).endsWith("dc")) {
      for (let k = 0; k < size; k++) b[i + 8 + k] = (k * 37 + 11) & 0xff;
      garbled++;
    }
    i += 8 + size + (size & 1);
  }
  if (garbled !== frames) throw new Error(`${path}: garbled ${garbled} of ${frames} frames`);
  if (opts.frameCount === false) {
    // avih.dwTotalFrames and the video strh.dwLength.
    dv.setUint32(48, 0, true);
    let strh = 12;
    while (strh + 4 < b.length && tag(strh) !== "strh") strh++;
    dv.setUint32(strh + 8 + 32, 0, true);
  }
  await Deno.writeFile(path, b);
  return path;
}

/**
 * Writes a dataset of the given (variable-length) sentences into `dir`, `perShard` per shard,
 * layout of 2 tokens per image (for shard and loader tests).
 */
export async function writeTestDataset(
  dir: string,
  sentences: number[][],
  perShard: number,
  vocabSize = 8292,
  codebookSize = Math.min(8192, vocabSize),
): Promise<DatasetIndex> {
  await Deno.mkdir(dir, { recursive: true });
  const layout = makeLayout({ tokensPerImage: 2, imagesPerSentence: 0, vocabSize, codebookSize });
  const dtype: "u16" | "i32" = vocabSize <= 65536 ? "u16" : "i32";
  const shards = [];
  for (let i = 0; i * perShard < sentences.length; i++) {
    shards.push(
      await writeShard(
        join(dir, tokenShardFileName(i)),
        sentences.slice(i * perShard, (i + 1) * perShard),
        dtype,
        vocabSize,
      ),
    );
  }
  const index: DatasetIndex = {
    format: "lvm-token-shards",
    version: 1,
    layout,
    dtype,
    tokenizer: { id: "t", resolution: 32, tokensPerImage: 2, codebookSize: 8192 },
    provenance: {},
    sources: [],
    counts: countShards(layout, shards),
    shards,
  };
  await writeIndex(dir, index);
  return index;
}
