/**
 * The VQGAN trained by the shared Trainer (tests moved here from @lvm/tokenizer's train_test.ts
 * with the loop): the loss goes down on a few steps, a resumed run equals an uninterrupted one bit
 * for bit (weights, AdamW moments, RNG, data order, code usage), dead codes are restarted from
 * latents of the batch, a fine-tuning run keeps its codebook, the batch-size check, gradient
 * accumulation, and the discriminator (off before `start`, then trained; resumes exactly).
 */
import { assert, assertEquals, assertStrictEquals, assertThrows } from "@lvm/util/testing";
import { getGpu, type Tensor } from "@lvm/gpu";
import { makeImage } from "@lvm/image";
import { nchwToRows } from "@lvm/kernels";
import {
  configToJson,
  initVqganWeights,
  parseConfig,
  presetConfig,
  sampleBatch,
  TRAIN_DEFAULTS,
  type Vqgan,
} from "@lvm/tokenizer";
import { syntheticSources, TINY_CONFIG as CONFIG } from "@lvm/tokenizer/testing";
import { writeSafetensors } from "@lvm/weights/fs";
import { Rng } from "@lvm/util";
import { join } from "node:path";
import { listCheckpoints, readTrainerState } from "./checkpoint.ts";
import { lrAt } from "./schedule.ts";
import { Trainer } from "./trainer.ts";
import {
  legacyRunConfig,
  makeVqganRunConfig,
  readLegacyVqganCheckpoint,
  resumeLegacyVqgan,
  type VqganRunConfig,
  type VqganRunInput,
  vqganSchedule,
  VqganTrainable,
} from "./vqgan.ts";

const gpu = await getGpu();
const SRC = syntheticSources();

function runConfig(over: Partial<VqganRunInput> = {}): VqganRunConfig {
  return makeVqganRunConfig({
    config: CONFIG,
    steps: 40,
    batch: 4,
    lr: 3e-3,
    warmup: 2,
    restartEvery: 3,
    logEvery: 40,
    ...over,
  });
}

async function trainer(over: Partial<VqganRunInput> = {}, seed = 3) {
  const config = runConfig(over);
  const vc = parseConfig(config.tokenizer);
  const model = await VqganTrainable.open(gpu, config, { train: SRC, eval: [] }, {
    weights: initVqganWeights(vc, seed),
  });
  return new Trainer(gpu, model, config);
}

async function snapshot(tr: Trainer<VqganTrainable, VqganRunConfig>): Promise<Float32Array[]> {
  const names = [...tr.model.params.keys()];
  return (await gpu.readMany(
    names.flatMap((n) => [tr.model.params.get(n)!, tr.optimizer.m(n), tr.optimizer.v(n)]),
  )) as Float32Array[];
}

Deno.test("the schedule: warmup then cosine to lr/10, updates counted from 1", () => {
  // The tokenizer trainer's own formula before it shared the loop: lr * t / warmup for t <= warmup,
  // then lr * (0.1 + 0.9 * 0.5 * (1 + cos(pi * (t - warmup) / (steps - warmup)))).
  const s = vqganSchedule(1, 10, 110);
  const at = (t: number) => lrAt(s, t - 1); // t: 1-based update
  assertStrictEquals(at(5), 0.5);
  assertStrictEquals(at(10), 1);
  assert(Math.abs(at(60) - 0.55) < 1e-12);
  assert(Math.abs(at(110) - 0.1) < 1e-12);
});

Deno.test("VqganTrainable + Trainer", async (t) => {
  await t.step("a few steps lower the loss", async () => {
    const tr = await trainer();
    const s = await tr.train(12);
    const first = (s[0].loss + s[1].loss) / 2, last = (s[10].loss + s[11].loss) / 2;
    assert(last < 0.7 * first, `loss ${first} -> ${last}`);
    assert(
      s[11].metrics!.psnr > s[0].metrics!.psnr + 2,
      `psnr ${s[0].metrics!.psnr} -> ${s[11].metrics!.psnr}`,
    );
    assertStrictEquals(s[0].metrics!.restarted, CONFIG.numEmbeddings); // step 1 initialises the whole codebook
    assertStrictEquals(tr.tokens, 12 * 4); // images
    tr.release();
  });

  await t.step("resume from a checkpoint equals the uninterrupted run bit for bit", async () => {
    const dir = await Deno.makeTempDir();
    const a = await trainer({ batch: 2 });
    const sa = await a.train(5);
    const b = await trainer({ batch: 2 });
    await b.train(3);
    const path = await b.save(dir);
    b.release();
    const state = await readTrainerState<VqganRunConfig>(path, "vqgan");
    assertStrictEquals(state.step, 3);
    // Fresh weights: everything must come from the checkpoint.
    const model = await VqganTrainable.open(gpu, state.config, { train: SRC, eval: [] }, {
      checkpoint: path,
      state: { rng: state.rng as number, usage: state.usage as number[] },
    });
    const c = await Trainer.fromCheckpoint(gpu, model, state.config, path, state);
    assertStrictEquals(c.step, 3);
    const sc = await c.train(2);
    assertEquals(sc.map((s) => s.loss), sa.slice(3).map((s) => s.loss));
    assertStrictEquals(c.model.rng.state, a.model.rng.state);
    assertEquals(await c.model.restarts.readUsage(gpu), await a.model.restarts.readUsage(gpu));
    const [pa, pc] = [await snapshot(a), await snapshot(c)];
    pa.forEach((v, i) => assertEquals(pc[i], v, `tensor ${i}`));
    // keep 1: only the latest checkpoint stays; it is a loadable tokenizer folder.
    await c.save(dir);
    assertEquals((await listCheckpoints(dir)).map((x) => x.step), [5]);
    const files = [...Deno.readDirSync(join(dir, "checkpoint-5"))].map((e) => e.name).sort();
    assertEquals(files, [
      "config.json",
      "model.safetensors",
      "optimizer.safetensors",
      "trainer_state.json",
    ]);
    a.release();
    c.release();
    await Deno.remove(dir, { recursive: true });
  });

  await t.step("a checkpoint of the previous tokenizer trainer resumes exactly", async () => {
    // Its layout, written by hand from a run at step 3: DIR/latest.json -> DIR/ckpt-0000003/
    // {model.safetensors, optimizer.safetensors (m.<param>, v.<param>), state.json}.
    const dir = await Deno.makeTempDir();
    const a = await trainer({ batch: 2 });
    const sa = await a.train(5);
    const b = await trainer({ batch: 2 });
    await b.train(3);
    const ck = join(dir, "ckpt-0000003");
    await Deno.mkdir(ck);
    const names = [...b.model.params.keys()];
    const vals = await gpu.readMany(
      names.flatMap((n) => [b.model.params.get(n)!, b.optimizer.m(n), b.optimizer.v(n)]),
    );
    const f32 = (i: number, n: string) => ({
      dtype: "F32" as const,
      shape: [...b.model.params.get(n)!.shape],
      data: vals[i] as Float32Array,
    });
    await writeSafetensors(
      join(ck, "model.safetensors"),
      Object.fromEntries(names.map((n, i) => [n, f32(3 * i, n)])),
    );
    await writeSafetensors(
      join(ck, "optimizer.safetensors"),
      Object.fromEntries(
        names.flatMap((n, i) => [[`m.${n}`, f32(3 * i + 1, n)], [`v.${n}`, f32(3 * i + 2, n)]]),
      ),
    );
    const options = {
      ...TRAIN_DEFAULTS,
      batchSize: 2,
      lr: 3e-3,
      warmup: 2,
      steps: 40,
      restartEvery: 3,
    };
    await Deno.writeTextFile(
      join(ck, "state.json"),
      JSON.stringify({
        version: 1,
        step: 3,
        rng: b.model.rng.state,
        options,
        config: configToJson(CONFIG),
        usage: Array.from(await b.model.restarts.readUsage(gpu)),
        extra: { sources: ["x:1"], adversarial: null },
      }),
    );
    await Deno.writeTextFile(
      join(dir, "latest.json"),
      JSON.stringify({ checkpoint: "ckpt-0000003", step: 3 }),
    );
    b.release();
    const legacy = (await readLegacyVqganCheckpoint(dir))!;
    assertEquals([legacy.step, legacy.sources], [3, ["x:1"]]);
    const run = legacyRunConfig(legacy, { steps: 40, logEvery: 40 });
    assertEquals(run.schedule, runConfig({ batch: 2 }).schedule);
    const c = await resumeLegacyVqgan(gpu, legacy, run, { train: SRC, eval: [] });
    assertStrictEquals(c.step, 3);
    const sc = await c.train(2);
    assertEquals(sc.map((s) => s.loss), sa.slice(3).map((s) => s.loss));
    const [pa, pc] = [await snapshot(a), await snapshot(c)];
    pa.forEach((v, i) => assertEquals(pc[i], v, `tensor ${i}`));
    a.release();
    c.release();
    assertStrictEquals(await readLegacyVqganCheckpoint(join(dir, "none")), null);
    await Deno.remove(dir, { recursive: true });
  });

  await t.step("dead codes are re-initialised to latents of the batch", async () => {
    const K = 512, E = CONFIG.quantizedEmbedDim; // more codes than one batch's 128 latents
    const tr = await trainer({ config: { ...CONFIG, numEmbeddings: K }, batch: 2 });
    const m = tr.model, vq = m.model;
    await tr.train(2);
    const before = (await gpu.readF32(vq.p("quantize.embedding.weight"))).slice();
    const usedBefore = (await m.restarts.readUsage(gpu)).slice();
    // Step 3 ends the window. Its batch (the same draws from a copy of the RNG), and the latents
    // and codes the step will compute from it (the same kernels on the same weights: identical;
    // inference and training both take the norms' statistics from the convs that gathered them).
    const x = gpu.upload(sampleBatch(SRC, 2, 16, new Rng(m.rng.state)), [2, 3, 16, 16]);
    const z = vq.encode(x);
    const zt = nchwToRows(gpu, z), idt = vq.codes(z);
    const [zr, ids] = [await gpu.readF32(zt), (await gpu.read(idt)) as Int32Array];
    for (const u of [x, z, zt, idt] as Tensor[]) u.release();
    const N = zr.length / E; // 128 latents
    const [s] = await tr.train(1);
    const used = new Set(ids);
    const dead = [...Array(K).keys()].filter((k) => usedBefore[k] === 0 && !used.has(k));
    assert(dead.length > N, `${dead.length} dead codes, more than the ${N} latents`);
    assertStrictEquals(s.metrics!.restarted, dead.length);
    const after = await gpu.readF32(vq.p("quantize.embedding.weight"));
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
    assertEquals(exact.slice().sort(), latents.map((l) => l.join()).sort());
    for (const k of dead.slice(N)) {
      const d = nearest(row(after, k));
      assert(d > 0 && d < 0.01 * rms * 6, `code ${k}: ${d} from the nearest latent (rms ${rms})`);
    }
    // Codes used in the window keep their (AdamW-updated) values: none became a latent copy.
    const isLatent = new Set(latents.map((l) => l.join()));
    for (let k = 0; k < K; k++) {
      if (dead.includes(k)) continue;
      assert(!isLatent.has(row(after, k).join()) || row(before, k).join() === row(after, k).join());
    }
    // Their moments were reset too.
    const [mm, vv] = await gpu.readMany([
      tr.optimizer.m("quantize.embedding.weight"),
      tr.optimizer.v("quantize.embedding.weight"),
    ]);
    for (const k of dead) {
      assert(row(mm as Float32Array, k).every((v) => v === 0) && vv[k * E] === 0);
    }
    assertEquals(Array.from(await m.restarts.readUsage(gpu)), new Array(K).fill(0));
    tr.release();
  });

  await t.step("a fine-tuning run keeps the codebook at step 1", async () => {
    for (const fineTune of [false, true]) {
      const tr = await trainer({ batch: 2, lr: 0, restartEvery: 0, fineTune });
      const p = tr.model.model.p("quantize.embedding.weight");
      const cb0 = (await gpu.readF32(p)).slice();
      const [s] = await tr.train(1);
      const cb1 = await gpu.readF32(p);
      assertStrictEquals(s.metrics!.restarted, fineTune ? 0 : CONFIG.numEmbeddings);
      assertStrictEquals(cb1.every((v, i) => v === cb0[i]), fineTune, `fineTune ${fineTune}`);
      tr.release();
    }
  });

  await t.step("gradient accumulation: 2 micro-batches of 2 images per step", async () => {
    const tr = await trainer({ batch: 2, gradAccum: 2 });
    const s = await tr.train(3);
    assert(s.every((r) => Number.isFinite(r.loss) && r.gradNorm > 0), JSON.stringify(s));
    assertStrictEquals(tr.tokens, 3 * 2 * 2);
    tr.release();
  });

  await t.step("a batch that cannot fit is refused before allocating", () => {
    const MiB = 2 ** 20;
    const lvm = presetConfig("lvm");
    const fake = {
      config: lvm,
      gpu: { limits: { maxStorageBufferBindingSize: 128 * MiB } },
      params: new Map(),
    } as unknown as Vqgan;
    assertThrows(
      () =>
        new VqganTrainable(fake, runConfig({ config: lvm, batch: 16 }), { train: [], eval: [] }),
      Error,
      /16: at most 1 image/,
    );
  });

  await t.step("the discriminator: off before start, then trained; resume is exact", async () => {
    const img = makeImage(20, 20);
    img.data.forEach((_, i) => (img.data[i] = 0.5 + 0.4 * Math.sin(i / 5)));
    const src = [{ name: "a", frames: [img] }];
    const config = runConfig({
      batch: 2,
      lr: 2e-3,
      warmup: 1,
      steps: 10,
      restartEvery: 25,
      adversarial: { start: 2, weight: 0.1, channels: 8 },
    });
    const make = async (from: { checkpoint?: string; state?: { rng: number; usage: number[] } }) =>
      await VqganTrainable.open(gpu, config, { train: src, eval: [] }, {
        weights: initVqganWeights(CONFIG, 1),
        ...from,
      });
    const a = new Trainer(gpu, await make({}), config);
    const sa = await a.train(4);
    assertStrictEquals(sa[0].metrics!.d_loss, 0);
    assert(sa[1].metrics!.d_loss > 0 && sa[3].metrics!.d_loss > 0, "d_loss");
    assert(sa[3].metrics!.g_adv !== 0);
    const dir = await Deno.makeTempDir();
    const b = new Trainer(gpu, await make({}), config);
    await b.train(2);
    const path = await b.save(dir);
    b.release();
    const state = await readTrainerState<VqganRunConfig>(path, "vqgan");
    const c = await Trainer.fromCheckpoint(
      gpu,
      await make({
        checkpoint: path,
        state: { rng: state.rng as number, usage: state.usage as number[] },
      }),
      config,
      path,
      state,
    );
    const sc = await c.train(2);
    const pick = (s: typeof sa) => s.map((r) => [r.loss, r.metrics!.d_loss, r.metrics!.g_adv]);
    assertEquals(pick(sc), pick(sa.slice(2)));
    const dState = async (tr: Trainer<VqganTrainable, VqganRunConfig>) =>
      await gpu.readMany([...tr.model.discriminator!.state().values()]);
    assertEquals(await dState(c), await dState(a));
    a.release();
    c.release();
    await Deno.remove(dir, { recursive: true });
  });
});

Deno.test("Trainer: the VQGAN's per-step figures ride with the loss slots (no wait between logged steps)", async (t) => {
  // The step's figures are staged on the GPU (ctx.stage) and the code usage is counted there, so a
  // run waits once per logged step and once per restart window's end (steps 1, 3, 6 here). The
  // records equal those of the same run read after every step, where codes_used is checked
  // against the counts read back.
  const steps = 8, restartEvery = 3;
  const run = async (logEvery: number, readAfter = false) => {
    const tr = await trainer({ logEvery, steps, restartEvery });
    if (readAfter) {
      // A model that reads after every update through ctx.readMany: the slots (figures too) come
      // along, so a flush then reads nothing.
      const m = tr.model, after = m.afterUpdate.bind(m);
      m.afterUpdate = async (ctx) => {
        const r = await after(ctx);
        await ctx.readMany([m.model.p("quantize.embedding.weight")]);
        return r;
      };
    }
    const readMany = gpu.readMany;
    let reads = 0;
    gpu.readMany = (ts) => (reads++, readMany.call(gpu, ts));
    const recs = [];
    const used: number[] = [];
    try {
      for (let i = 0; i < steps; i++) {
        await tr.trainStep();
        if ((i + 1) % logEvery === 0) recs.push(...(await tr.flush()));
        if (logEvery === 1) {
          gpu.readMany = readMany; // not counted
          used.push((await tr.model.restarts.readUsage(gpu)).filter((c) => c > 0).length);
          gpu.readMany = (ts) => (reads++, readMany.call(gpu, ts));
        }
      }
    } finally {
      gpu.readMany = readMany;
    }
    tr.release();
    return { reads, recs, used };
  };
  await t.step("logEvery 4 against 1", async () => {
    const a = await run(4), b = await run(1);
    assertEquals(a.recs.length, steps);
    assertEquals(a.recs, b.recs);
    assertEquals(a.reads, steps / 4 + 3, "waits: 2 logged steps + 3 restarts");
    assertEquals(b.reads, steps + 3);
    for (const [i, r] of b.recs.entries()) {
      const m = r.metrics!;
      for (const k of ["rec", "vq", "psnr", "codes_used", "restarted"]) {
        assert(Number.isFinite(m[k]), `step ${r.step}: ${k} = ${m[k]}`);
      }
      // Read after the step: 0 after a restart (a new window), else the window's codes so far.
      const restart = r.step === 1 || r.step % restartEvery === 0;
      if (!restart) assertStrictEquals(m.codes_used, b.used[i], `step ${r.step}`);
      else assertStrictEquals(b.used[i], 0);
      assert(m.codes_used > 0 && m.codes_used <= CONFIG.numEmbeddings);
    }
  });
  await t.step("a read in afterUpdate takes the slots along", async () => {
    const a = await run(2), c = await run(2, true);
    assertEquals(c.recs, a.recs);
    assertEquals(
      c.reads,
      steps + 3,
      "one wait per step (its own read) + 3 restarts, none at a flush",
    );
  });
});
