/**
 * `deno task demo [--out DIR] [--quick]`: the whole LVM pipeline at laptop scale, on built-in data,
 * through the same CLIs a user runs:
 *
 * 1. writes synthetic "videos" (a coloured square moving across a 32x32 frame, 8 frames each);
 * 2. `train tokenizer`  a tiny VQGAN on the frames (32x32 -> 8x8 = 64 codes per image);
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
import { makeImage, savePng } from "@lvm/image";
import { rng } from "@lvm/kernels/testing";
import { latestCheckpoint } from "@lvm/train";
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
const R = 32, FRAMES = 8, CLIPS = q ? 12 : 48;

/** One clip: a square of a random colour and size moving at a constant velocity, wrapping around. */
function clip(seed: number) {
  const r = rng(seed);
  const col = [0.2 + 0.8 * r(), 0.2 + 0.8 * r(), 0.2 + 0.8 * r()];
  const s = 6 + Math.floor(r() * 6);
  let x = r() * R, y = r() * R;
  const vx = (r() < 0.5 ? -1 : 1) * (2 + Math.floor(r() * 3)), vy = Math.floor(r() * 5) - 2;
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
await step(
  "train tokenizer",
  train([
    "tokenizer",
    "--images",
    ...clips,
    "--preset",
    "tiny",
    "--steps",
    q ? "20" : "150",
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
    q ? "10" : "150",
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
console.log(`\ndemo finished: prompt + generated frame in ${join(out, "result", "strip.png")}`);
console.log(`the true next frame is ${join(held, "frame4.png")}`);
