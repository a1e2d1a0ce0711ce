/**
 * Training: the loss goes down on a few steps, a resumed run equals an uninterrupted one bit for bit
 * (weights, AdamW moments, RNG, data order), dead codes are restarted from latents of the batch, a
 * fine-tuning trainer keeps its codebook, the schedule, and the batch-size check against the
 * adapter's storage-binding limit.
 */
import { deepStrictEqual, equal, ok, throws } from "node:assert/strict";
import { makeImage } from "@lvm/image";
import { getGpu, nchwToRows } from "./_deps.ts";
import { parseConfig, presetConfig, PRESETS, type VqganConfig } from "./config.ts";
import { type ImageSource, sampleBatch } from "./data.ts";
import {
  activationBytesPerImage,
  checkBatchFits,
  initWeights,
  maxBatchFor,
  Vqgan,
} from "./model.ts";
import {
  learningRate,
  releaseLoss,
  Rng,
  TRAIN_DEFAULTS,
  type TrainOptions,
  vqganLossAndGrads,
  VqganTrainer,
} from "./train.ts";

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

async function trainer(
  config = CONFIG,
  batchSize = 4,
  extra: Partial<TrainOptions> = {},
  fineTune = false,
): Promise<VqganTrainer> {
  const gpu = await getGpu();
  return new VqganTrainer(
    Vqgan.fromWeights(gpu, config, initWeights(config, 3)),
    { ...OPTS, batchSize, ...extra },
    { fineTune },
  );
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
    const K = 512, E = CONFIG.quantizedEmbedDim; // more codes than one batch's 128 latents
    const tr = await trainer({ ...CONFIG, numEmbeddings: K }, 2);
    const gpu = tr.gpu;
    await steps(tr, 2, src);
    const before = (await gpu.readF32(tr.model.p("quantize.embedding.weight"))).slice();
    const usedBefore = tr.usage.slice();
    // Step 3 ends the window. Its batch, and the latents and codes the step will compute from it
    // (the same kernels on the same weights: bit-identical).
    const x = gpu.upload(sampleBatch(src, 2, 16, tr.rng), [2, 3, 16, 16]);
    const z = tr.model.encode(x);
    const zt = nchwToRows(gpu, z), idt = tr.model.codes(z);
    const [zr, ids] = [await gpu.readF32(zt), (await gpu.read(idt)) as Int32Array];
    for (const u of [z, zt, idt]) u.release();
    const N = zr.length / E; // 128 latents
    const s = await tr.trainStep(x);
    x.release();
    const used = new Set(ids);
    const dead = [...Array(K).keys()].filter((k) => usedBefore[k] === 0 && !used.has(k));
    ok(dead.length > N, `${dead.length} dead codes, more than the ${N} latents`);
    equal(s.restarted, dead.length);
    const after = await gpu.readF32(tr.model.p("quantize.embedding.weight"));
    const row = (a: Float32Array, k: number) => Array.from(a.subarray(k * E, (k + 1) * E));
    const latents = Array.from({ length: N }, (_, i) => row(zr, i));
    let rms = 0;
    for (const v of zr) rms += v * v;
    rms = Math.sqrt(rms / zr.length);
    const nearest = (r: number[]) =>
      Math.min(...latents.map((l) => Math.max(...l.map((v, d) => Math.abs(v - r[d])))));
    // The first N dead codes (in index order) take the N latents, each once, exactly; the rest take
    // latents again plus noise of 0.01 x their RMS.
    const exact = dead.slice(0, N).map((k) => row(after, k).join());
    deepStrictEqual(exact.slice().sort(), latents.map((l) => l.join()).sort());
    for (const k of dead.slice(N)) {
      const d = nearest(row(after, k));
      ok(d > 0 && d < 0.01 * rms * 6, `code ${k}: ${d} from the nearest latent (rms ${rms})`);
    }
    // Codes used in the window keep their (AdamW-updated) values: none became a latent copy.
    const isLatent = new Set(latents.map((l) => l.join()));
    for (let k = 0; k < K; k++) {
      if (dead.includes(k)) continue;
      ok(!isLatent.has(row(after, k).join()) || row(before, k).join() === row(after, k).join());
    }
    deepStrictEqual(Array.from(tr.usage), new Array(K).fill(0));
    tr.release();
    tr.model.release();
  });
  await t.step("a fine-tuning trainer keeps the codebook at step 1", async () => {
    for (const fineTune of [false, true]) {
      const tr = await trainer(CONFIG, 2, { lr: 0, restartEvery: 0 }, fineTune);
      const cb0 = (await tr.gpu.readF32(tr.model.p("quantize.embedding.weight"))).slice();
      const [s] = await steps(tr, 1, src);
      const cb1 = await tr.gpu.readF32(tr.model.p("quantize.embedding.weight"));
      equal(s.restarted, fineTune ? 0 : CONFIG.numEmbeddings);
      equal(cb1.every((v, i) => v === cb0[i]), fineTune, `fineTune ${fineTune}`);
      tr.release();
      tr.model.release();
    }
  });
});

Deno.test("learningRate()", () => {
  const o = { ...TRAIN_DEFAULTS, lr: 1, warmup: 10, steps: 110 };
  equal(learningRate(o, 5), 0.5);
  equal(learningRate(o, 10), 1);
  ok(Math.abs(learningRate(o, 60) - 0.55) < 1e-12);
  ok(Math.abs(learningRate(o, 110) - 0.1) < 1e-12);
});

Deno.test("batch size against the storage-binding limit", async (t) => {
  const MiB = 2 ** 20;
  await t.step("lvm preset: the estimate, the largest batch, the error", () => {
    const lvm = presetConfig("lvm");
    // Level 0 of the decoder: its upsample conv reads 256 channels at 256x256 (+ padding slack).
    equal(activationBytesPerImage(lvm), 256 * 260 * 264 * 4);
    equal(maxBatchFor(lvm, 128 * MiB), 1); // the WebGPU default binding limit (lavapipe's)
    equal(maxBatchFor(lvm, 2 ** 31 - 1), 30);
    equal(maxBatchFor(lvm, 64 * MiB), 0);
    checkBatchFits(lvm, 1, 128 * MiB);
    throws(
      () => checkBatchFits(lvm, 16, 128 * MiB, "--batch"),
      /^RangeError: --batch 16: at most 1 image of 256x256 per step fit this adapter \(its largest tensor takes 67\.0 MiB per image; one storage binding holds at most 128\.0 MiB\); use --batch 1 or less$/,
    );
    throws(() => checkBatchFits(lvm, 1, 64 * MiB), /at most 0 images of 256x256 per step fit/);
  });
  await t.step("the trainer refuses a batch that cannot fit, before allocating", () => {
    const lvm = presetConfig("lvm");
    const fake = {
      config: lvm,
      gpu: { limits: { maxStorageBufferBindingSize: 128 * MiB } },
      params: new Map(),
    } as unknown as Vqgan;
    throws(
      () => new VqganTrainer(fake, { ...OPTS, batchSize: 16 }),
      /batchSize 16: at most 1 image/,
    );
  });
  // The estimate is only useful if no per-batch tensor of a real step is larger: record every
  // allocation of a training step (forward, backward, losses) of configs whose widest tensors sit at
  // different levels, and compare those that grow with the batch: (B,C,H,W) activations and their
  // gradients, (B*h*w, E) latent rows. (A conv's split weight-gradient partials, (slices, weight
  // size), do not grow with the batch; the largest, lvm's 768x768 3x3 conv, is one 21 MiB slice.)
  const cases: [string, VqganConfig][] = [
    ["tiny", presetConfig("tiny")],
    ["[1,2,1] x 32", {
      ...PRESETS.tiny,
      resolution: 32,
      hiddenChannels: 32,
      channelMult: [1, 2, 1],
    }],
    ["[2,1] x 16", { ...CONFIG, channelMult: [2, 1] }],
  ];
  for (const [label, config] of cases) {
    await t.step(
      `${label}: every per-batch tensor of a training step fits B x the estimate`,
      async () => {
        const gpu = await getGpu();
        const B = 2, R = config.resolution;
        const model = Vqgan.fromWeights(gpu, config, initWeights(config, 1));
        const x = gpu.upload(sampleBatch(sources(), B, R, new Rng(1)), [B, 3, R, R]);
        const G = R / 2 ** (config.channelMult.length - 1);
        let largest = 0, seen = 0;
        const empty = gpu.empty;
        gpu.empty = (shape, dtype) => {
          const t = empty.call(gpu, shape, dtype);
          if (
            (shape.length === 4 && shape[0] === B) || (shape.length === 2 && shape[0] === B * G * G)
          ) {
            largest = Math.max(largest, t.size * (dtype === "f16" ? 2 : 4));
            seen++;
          }
          return t;
        };
        try {
          releaseLoss(vqganLossAndGrads(model, x));
          await gpu.sync();
        } finally {
          gpu.empty = empty;
        }
        const bound = B * activationBytesPerImage(config);
        ok(seen > 50, `${seen} per-batch tensors recorded`);
        ok(
          largest > 0 && largest <= bound,
          `${label}: largest tensor ${largest} B > bound ${bound} B`,
        );
        ok(largest > bound / 4, `${label}: the bound ${bound} B is loose (largest ${largest} B)`);
        x.release();
        model.release();
      },
    );
  }
});
