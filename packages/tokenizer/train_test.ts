/**
 * Training: the loss goes down on a few steps, a resumed run equals an uninterrupted one bit for bit
 * (weights, AdamW moments, RNG, data order), dead codes are restarted from latents, the schedule.
 */
import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { makeImage } from "@lvm/image";
import { getGpu } from "./_deps.ts";
import { parseConfig } from "./config.ts";
import { type ImageSource, sampleBatch } from "./data.ts";
import { initWeights, Vqgan } from "./model.ts";
import { learningRate, TRAIN_DEFAULTS, type TrainOptions, VqganTrainer } from "./train.ts";

const CONFIG = parseConfig({
  resolution: 16,
  hidden_channels: 32,
  channel_mult: [1, 1],
  num_res_blocks: 1,
  attn_resolutions: [],
  no_attn_mid_block: true,
  z_channels: 8,
  num_embeddings: 32,
  quantized_embed_dim: 8,
});
const OPTS: TrainOptions = {
  ...TRAIN_DEFAULTS,
  batchSize: 4,
  lr: 3e-3,
  warmup: 2,
  steps: 40,
  restartEvery: 3,
};

/** Smooth synthetic images (colour ramps and blobs), 24x20. */
function sources(): ImageSource[] {
  return Array.from({ length: 5 }, (_, k) => {
    const img = makeImage(24, 20);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < 20; y++) {
        for (let x = 0; x < 24; x++) {
          img.data[(c * 20 + y) * 24 + x] = 0.5 +
            0.4 * Math.sin((x * (k + 1)) / 7 + c) * Math.cos((y + 3 * c) / (4 + k));
        }
      }
    }
    return { name: `synthetic${k}`, frames: [img] };
  });
}

async function trainer(config = CONFIG, batchSize = 4): Promise<VqganTrainer> {
  const gpu = await getGpu();
  return new VqganTrainer(Vqgan.fromWeights(gpu, config, initWeights(config, 3)), {
    ...OPTS,
    batchSize,
  });
}

async function steps(tr: VqganTrainer, n: number, src: ImageSource[]) {
  const out = [];
  const B = tr.options.batchSize;
  for (let i = 0; i < n; i++) {
    const x = tr.gpu.upload(sampleBatch(src, B, 16, tr.rng), [B, 3, 16, 16]);
    out.push(await tr.trainStep(x));
    x.release();
  }
  return out;
}

async function snapshot(tr: VqganTrainer): Promise<Float32Array[]> {
  const names = [...tr.model.params.keys()];
  return (await tr.gpu.readMany(
    names.flatMap((n) => [tr.model.p(n), tr.m.get(n)!, tr.v.get(n)!]),
  )) as Float32Array[];
}

Deno.test("VqganTrainer()", async (t) => {
  const src = sources();
  await t.step("a few steps lower the loss", async () => {
    const tr = await trainer();
    const s = await steps(tr, 12, src);
    const first = (s[0].loss + s[1].loss) / 2, last = (s[10].loss + s[11].loss) / 2;
    ok(last < 0.7 * first, `loss ${first} -> ${last}`);
    ok(s[11].psnr > s[0].psnr + 2, `psnr ${s[0].psnr} -> ${s[11].psnr}`);
    equal(s[0].restarted, CONFIG.numEmbeddings); // step 1 initialises the whole codebook
    tr.release();
    tr.model.release();
  });
  await t.step("resume from a checkpoint equals the uninterrupted run bit for bit", async () => {
    const dir = await Deno.makeTempDir();
    const a = await trainer(CONFIG, 2);
    const sa = await steps(a, 5, src);
    const b = await trainer(CONFIG, 2);
    await steps(b, 3, src);
    await b.save(dir, { note: "x" });
    b.release();
    b.model.release();
    const c = await trainer(CONFIG, 2); // fresh weights: everything must come from the checkpoint
    deepStrictEqual(await c.load(dir), { note: "x" });
    equal(c.step, 3);
    const sc = await steps(c, 2, src);
    deepStrictEqual(sc.map((s) => s.loss), sa.slice(3).map((s) => s.loss));
    equal(c.rng.state, a.rng.state);
    const [pa, pc] = [await snapshot(a), await snapshot(c)];
    pa.forEach((v, i) => deepStrictEqual(pc[i], v, `tensor ${i}`));
    // Only the latest checkpoint is kept; latest.json points at it.
    await c.save(dir);
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    deepStrictEqual(names, ["ckpt-0000005", "latest.json"]);
    for (const tr of [a, c]) {
      tr.release();
      tr.model.release();
    }
    await Deno.remove(dir, { recursive: true });
  });
  await t.step("dead codes are re-initialised to latents of the batch", async () => {
    const K = 512; // more codes than one batch's 128 latents: some are always unused
    const tr = await trainer({ ...CONFIG, numEmbeddings: K }, 2);
    await steps(tr, 2, src);
    const before = (await tr.gpu.readF32(tr.model.p("quantize.embedding.weight"))).slice();
    const used = new Set<number>();
    tr.usage.forEach((c, k) => c > 0 && used.add(k));
    ok(used.size < K, "some codes unused in the window");
    const s = (await steps(tr, 1, src))[0]; // step 3 ends the window
    equal(s.restarted, K - s.codesUsed);
    const after = await tr.gpu.readF32(tr.model.p("quantize.embedding.weight"));
    let changed = 0;
    for (let k = 0; k < K; k++) {
      const row = (a: Float32Array) => a.slice(k * 8, k * 8 + 8).join();
      if (row(before) !== row(after)) changed++;
    }
    ok(changed >= s.restarted, `${changed} rows changed, ${s.restarted} restarted`);
    deepStrictEqual(Array.from(tr.usage), new Array(K).fill(0));
    tr.release();
    tr.model.release();
  });
});

Deno.test("learningRate()", () => {
  const o = { ...TRAIN_DEFAULTS, lr: 1, warmup: 10, steps: 110 };
  equal(learningRate(o, 5), 0.5);
  equal(learningRate(o, 10), 1);
  ok(Math.abs(learningRate(o, 60) - 0.55) < 1e-12);
  ok(Math.abs(learningRate(o, 110) - 0.1) < 1e-12);
});
