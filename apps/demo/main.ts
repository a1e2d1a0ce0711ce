/**
 * `deno task demo [--out DIR] [--quick]`: the whole LVM pipeline at laptop scale, on built-in data,
 * through the same CLIs a user runs:
 *
 * 1. writes synthetic "videos": 8 frames of 32x32, a square of one of 6 colours and 8 or 12 px moving
 *    one token cell (4 px) to the right per frame and wrapping around;
 * 2. `train tokenizer`  a tiny VQGAN on the frames (32x32 -> 8x8 = 64 codes per image, 128 codes:
 *                       the `tiny` preset with a smaller codebook, given as an open-muse config.json);
 * 3. `train dataset`    tokenizes the clips into visual sentences of 8 frames;
 * 4. `train model`      a tiny LLaMA on the sentences (next-token prediction);
 * 5. `train eval`       loss, perplexity and the official image perplexity;
 * 6. `infer complete`   prompts with the first 4 frames of an unseen clip and generates the next
 *                       frame, written as PNG next to a strip of prompt + generated.
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { mkdirSync } from "node:fs";
import { loadImage, makeImage, type RgbImage, savePng } from "@lvm/image";
import { rng } from "@lvm/util/testing";
import { latestCheckpoint } from "@lvm/train";
import { configToJson, loadTokenizer, presetConfig } from "@lvm/tokenizer";
import { main as train } from "../train/main.ts";
import { main as infer } from "../infer/main.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "out/demo" },
    quick: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(
    "usage: deno task demo [--out DIR] [--quick]   (--quick: fewer steps, for a smoke test)",
  );
  Deno.exit(0);
}
const out = values.out!;
const q = values.quick;
const R = 32, FRAMES = 8, CLIPS = q ? 12 : 96;
/** Token cell: the tokenizer maps each 4x4 pixel block to one code (32x32 -> 8x8). */
const CELL = 4;
const PALETTE = [
  [0.9, 0.2, 0.2],
  [0.2, 0.8, 0.3],
  [0.25, 0.4, 0.95],
  [0.95, 0.85, 0.2],
  [0.85, 0.3, 0.85],
  [0.2, 0.85, 0.85],
];

/**
 * One clip: a square of a palette colour, 2 or 3 cells wide, on the cell grid, moving one cell to the
 * right per frame and wrapping around. Squares on the grid with one motion are what a model this
 * small learns in minutes: next frame = this frame shifted by one token. (With free positions,
 * colours and velocities, 150-400 steps learn the within-frame statistics, score the true next
 * frame well, and greedy decoding still draws only the background: measured.)
 */
function clip(seed: number) {
  const r = rng(seed);
  const col = PALETTE[Math.floor(r() * PALETTE.length)];
  const s = CELL * (2 + Math.floor(r() * 2));
  let x = CELL * Math.floor(r() * (R / CELL)), y = CELL * Math.floor(r() * (R / CELL));
  const vx = CELL, vy = 0;
  const frames = [];
  for (let f = 0; f < FRAMES; f++) {
    const img = makeImage(R, R);
    img.data.fill(0.05);
    for (let c = 0; c < 3; c++) {
      for (let dy = 0; dy < s; dy++) {
        for (let dx = 0; dx < s; dx++) {
          const px = Math.floor(x + dx) % R, py = Math.floor(y + dy) % R;
          img.data[c * R * R + py * R + px] = col[c];
        }
      }
    }
    frames.push(img);
    x = (x + vx + R) % R;
    y = (y + vy + R) % R;
  }
  return frames;
}

async function step(title: string, run: Promise<number>) {
  console.error(`\n== ${title}`);
  const t0 = performance.now();
  const code = await run;
  if (code !== 0) {
    console.error(`demo: "${title}" failed (exit ${code})`);
    Deno.exit(code);
  }
  console.error(`== ${title}: done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
}

const framesDir = join(out, "frames");
const clips: string[] = [];
for (let k = 0; k < CLIPS + 1; k++) {
  const dir = join(framesDir, k < CLIPS ? `clip${String(k).padStart(3, "0")}` : "heldout");
  mkdirSync(dir, { recursive: true });
  const frames = clip(1000 + k);
  for (let f = 0; f < FRAMES; f++) await savePng(join(dir, `frame${f}.png`), frames[f]);
  if (k < CLIPS) clips.push(dir);
}
console.error(
  `wrote ${CLIPS} training clips + 1 held-out clip of ${FRAMES} frames to ${framesDir}`,
);

const tok = join(out, "tokenizer"), data = join(out, "dataset"), run = join(out, "model");
// The `tiny` tokenizer preset with 128 codes: these frames hold a handful of distinct cells.
const tokConfig = join(out, "tokenizer-config.json");
await Deno.writeTextFile(
  tokConfig,
  JSON.stringify(configToJson({ ...presetConfig("tiny"), numEmbeddings: 128 }), null, 2) + "\n",
);
await step(
  "train tokenizer",
  train([
    "tokenizer",
    "--images",
    ...clips,
    "--config",
    tokConfig,
    "--steps",
    q ? "20" : "200",
    "--batch",
    "4",
    "--out",
    tok,
    "--eval-images",
    join(framesDir, "heldout"),
    "--save-every",
    "1000",
  ]),
);
await step(
  "train dataset",
  train([
    "dataset",
    "--tokenizer",
    tok,
    "--kind",
    "sequence",
    "--input",
    ...clips,
    "--images",
    String(FRAMES),
    "--out",
    data,
    "--overwrite",
    "--quiet",
  ]),
);
await step(
  "train model",
  train([
    "model",
    "--data",
    data,
    "--preset",
    "tiny",
    "--steps",
    q ? "10" : "400",
    "--out",
    run,
    "--batch",
    "2",
    "--seq",
    String(FRAMES * 64),
    "--lr",
    "3e-3",
    "--min-lr",
    "3e-4",
    "--warmup",
    "20",
    "--val-fraction",
    "0.1",
    "--eval-every",
    "0",
    "--save-every",
    "1000",
    "--log-every",
    "25",
    "--overwrite",
  ]),
);
const ckpt = await latestCheckpoint(run);
if (!ckpt) throw new Error(`no checkpoint in ${run}`);
await step("train eval", train(["eval", "--model", ckpt, "--data", data, "--split", "all"]));
const held = join(framesDir, "heldout");
await step(
  "infer complete",
  infer([
    "complete",
    "--model",
    ckpt,
    "--tokenizer",
    tok,
    "--out",
    join(out, "result"),
    "--greedy",
    ...[0, 1, 2, 3].map((f) => join(held, `frame${f}.png`)),
  ]),
);

// How close the generated frame is to the true next frame: in codes (the model's own accuracy) and
// in pixels, beside what the tokenizer alone reaches on that frame (the ceiling of any model here).
const truth = await loadImage(join(held, "frame4.png"));
const generated = await loadImage(join(out, "result", "next-1.png"));
const made: number[] = JSON.parse(await Deno.readTextFile(join(out, "result", "codes.json")))
  .tokens[0];
const tokenizer = await loadTokenizer(tok);
const [trueCodes] = await tokenizer.encode([truth]);
const [rebuilt] = await tokenizer.decode([trueCodes]);
tokenizer.release();
const same = made.filter((id, i) => id === trueCodes[i]).length;
console.log(
  `\nnext frame: ${same}/${made.length} generated codes equal the true frame's codes; PSNR ${
    psnr(generated, truth).toFixed(1)
  } dB to the true frame (the tokenizer's own reconstruction of it: ${
    psnr(rebuilt, truth).toFixed(1)
  } dB)`,
);
console.log(`demo finished: prompt + generated frame in ${join(out, "result", "strip.png")}`);
console.log(`the true next frame is ${join(held, "frame4.png")}`);

function psnr(a: RgbImage, b: RgbImage): number {
  let se = 0;
  for (let i = 0; i < a.data.length; i++) se += (a.data[i] - b.data[i]) ** 2;
  return 10 * Math.log10(a.data.length / se);
}
