/**
 * The training loop on a 2-layer model and a learnable synthetic dataset: the loss falls, a resumed
 * run equals an uninterrupted one bit for bit, gradient accumulation equals a bigger batch,
 * checkpoints are complete and pruned, an abort saves, and the evaluations match a CPU log-softmax
 * over unpadded logits.
 */
import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import { assertClose } from "@lvm/util/testing";
import { writeTestDataset } from "@lvm/sentence/testing";
import { loadLlama } from "@lvm/transformer/fs";
import {
  commitCheckpoint,
  LATEST_FILE,
  listCheckpoints,
  OPTIMIZER_FILE,
  readTrainerState,
  STATE_FILE,
} from "./checkpoint.ts";
import { makeTrainConfig, type TrainConfigInput } from "./config.ts";
import { evaluateImagePerplexity, evaluateLoss } from "./evaluate.ts";
import { lrAt } from "./schedule.ts";
import { overrideSchedule, Trainer } from "./trainer.ts";
import {
  assert,
  assertBitEqual,
  assertEquals,
  assertRejects,
  assertThrows,
  MINI,
  patternDataset,
} from "./testing.ts";

const gpu = await getGpu();
const { root, data } = await patternDataset(64, 16);

function config(over: Partial<TrainConfigInput> = {}) {
  return makeTrainConfig({
    data,
    model: MINI,
    steps: 6,
    batch: 2,
    seq: 32,
    lr: 1e-2,
    minLr: 1e-3,
    warmup: 2,
    valFraction: 0.1,
    logEvery: 2,
    evalEvery: 0,
    saveEvery: 0,
    seed: 3,
    ...over,
  });
}

async function readAll(trainer: Trainer) {
  const names = [...trainer.model.params.keys()];
  const tensors = names.flatMap((n) => [
    trainer.model.param(n),
    trainer.optimizer.m(n),
    trainer.optimizer.v(n),
  ]);
  const vals = await gpu.readMany(tensors);
  return new Map(names.flatMap((n, i) => [
    [`${n}`, vals[3 * i] as Float32Array],
    [`${n}.m`, vals[3 * i + 1] as Float32Array],
    [`${n}.v`, vals[3 * i + 2] as Float32Array],
  ]));
}

Deno.test("Trainer.train()", async (t) => {
  await t.step("the loss falls far below ln(vocab) in 20 steps", async () => {
    const trainer = await Trainer.create(
      gpu,
      config({ steps: 20, batch: 4, logEvery: 5, lr: 3e-2, minLr: 3e-3 }),
    );
    const recs = await trainer.train();
    trainer.release();
    assertEquals(recs.map((r) => r.step), Array.from({ length: 20 }, (_, i) => i + 1));
    const first = recs[0].loss, last = recs.slice(-3).reduce((s, r) => s + r.loss, 0) / 3;
    assert(Math.abs(first - Math.log(8292)) < 0.3, `initial loss ${first}, expected ~ln(8292)`);
    assert(last < 0.5 * first, `loss fell only from ${first} to ${last}`);
    assertEquals(recs[0].lr, 0); // warmup starts at 0, as optax/HF
    assertEquals(recs[1].lr, lrAt(trainer.config.schedule, 1));
    assert(recs.every((r) => r.gradNorm > 0 && Number.isFinite(r.gradNorm)), "grad norms");
  });
});

Deno.test("Trainer.resume()", async (t) => {
  await t.step("6 steps straight == 3 steps + save + resume + 3 steps, bit for bit", async () => {
    const a = await Trainer.create(gpu, config());
    const straight = await a.train();
    const wa = await readAll(a);
    const loaderA = a.loader.state();
    a.release();

    const run = join(root, "resume");
    const b = await Trainer.create(gpu, config());
    const first = await b.train(3);
    const path = await b.save(run);
    b.release();
    const c = await Trainer.resume(gpu, run);
    assertEquals(c.step, 3);
    const second = await c.train();
    const wc = await readAll(c);
    assertEquals(c.optimizer.step, 6);
    assertEquals(c.loader.state(), loaderA);
    c.release();

    assertEquals([...first, ...second], straight);
    for (const [k, v] of wa) assertBitEqual(wc.get(k)!, v, k);
    // The checkpoint is a Hugging Face model folder plus the optimizer and the trainer state.
    const state = await readTrainerState(path);
    assertEquals([state.step, state.tokens], [3, 3 * 2 * 32]);
    assertEquals(state.next_lr, lrAt(state.config.schedule, 3));
    // A new run may start from it (--init): same weights, fresh optimizer, data from the start.
    const m = await loadLlama(gpu, path);
    assertEquals(m.config, MINI);
    const d = await Trainer.create(gpu, config({ init: path }));
    assertEquals([d.step, d.optimizer.step, d.loader.state().rows], [0, 0, 0]);
    const names = [...m.params.keys()];
    const [x, y] = await Promise.all([
      gpu.readMany(names.map((n) => m.param(n))),
      gpu.readMany(names.map((n) => d.model.param(n))),
    ]);
    names.forEach((n, i) => assertBitEqual(y[i] as Float32Array, x[i] as Float32Array, n));
    m.release();
    d.release();
  });

  await t.step("a checkpoint from other data is refused", async () => {
    const other = join(root, "other");
    await writeTestDataset(other, [[1, 2, 3, 4, 5, 6, 7, 8]], 1);
    await assertRejects(
      () => Trainer.resume(gpu, join(root, "resume"), { data: other }),
      RangeError,
      "another dataset",
    );
  });
});

Deno.test("Trainer.accumulateGradients()", async (t) => {
  await t.step("2 micro-batches of B == 1 batch of 2B (gradients and loss)", async () => {
    const big = await Trainer.create(gpu, config({ batch: 4, gradAccum: 1 }));
    const acc = await Trainer.create(gpu, config({ batch: 2, gradAccum: 2 }));
    const names = [...big.model.params.keys()];
    const lb = await big.accumulateGradients();
    const la = await acc.accumulateGradients();
    const [gb, ga] = await Promise.all([
      gpu.readMany([...lb, ...names.map((n) => big.model.grads.get(n)!)]),
      gpu.readMany([...la, ...names.map((n) => acc.model.grads.get(n)!)]),
    ]);
    assertClose([(ga[0][0] + ga[1][0]) / 2], gb[0], { atol: 0, rtol: 1e-6 }, "loss");
    names.forEach((n, i) => {
      const ref = gb[i + 1], got = ga[i + 2];
      const scale = Array.from(ref).reduce((m, x) => Math.max(m, Math.abs(x)), 0);
      assert(scale > 0, `gradient of ${n} is zero`);
      assertClose(got, ref, { atol: 1e-5 * scale, rtol: 1e-4 }, `d ${n}`);
    });
    assertEquals(acc.loader.state().rows, big.loader.state().rows);
    [...la, ...lb].forEach((l) => l.release());
    big.release();
    acc.release();
  });
});

Deno.test("Trainer.run()", async (t) => {
  await t.step("logs, validates, saves every N keeping K, and an abort saves", async () => {
    const run = join(root, "run");
    const trainer = await Trainer.create(
      gpu,
      config({ steps: 9, logEvery: 3, evalEvery: 3, evalBatches: 2, saveEvery: 2, keep: 2 }),
    );
    const logs: number[] = [], evals: number[] = [], saves: number[] = [];
    const ac = new AbortController();
    const r = await trainer.run({
      out: run,
      signal: ac.signal,
      onLog: (e) => {
        logs.push(e.step);
        // Saving at step 4 must not swallow that step's record.
        assert(e.tokensPerSec > 0 && e.etaSec >= 0 && e.records.length === 3, "log entry");
        if (e.step === 6) ac.abort();
      },
      onEval: (e) => {
        evals.push(e.step);
        assert(e.tokens > 0 && Math.abs(e.perplexity - Math.exp(e.loss)) < 1e-9, "eval entry");
      },
      onSave: (_, s) => saves.push(s),
    });
    trainer.release();
    assertEquals([r.step, r.interrupted], [6, true]);
    assertEquals(logs, [3, 6]);
    assertEquals(evals, [3, 6]);
    assertEquals(saves, [2, 4, 6]);
    assertEquals((await listCheckpoints(run)).map((c) => c.step), [4, 6]);
    assertEquals((await Deno.readTextFile(join(run, LATEST_FILE))).trim(), "checkpoint-6");
    const files = [...Deno.readDirSync(join(run, "checkpoint-6"))].map((e) => e.name).sort();
    assertEquals(files, ["config.json", "model.safetensors", OPTIMIZER_FILE, STATE_FILE].sort());
    const state = await readTrainerState(join(run, "checkpoint-6"));
    assertEquals(state.log_history.map((h) => h.step), [3, 6]);
    assert(state.log_history[1].val_loss! > 0, "val loss recorded");
  });

  await t.step("a failed checkpoint write leaves the run as it was", async () => {
    const run = join(root, "run");
    await assertRejects(
      () =>
        commitCheckpoint(run, 7, 2, async (dir) => {
          await Deno.writeTextFile(join(dir, "partial"), "x");
          throw new RangeError("disk full");
        }),
      RangeError,
      "disk full",
    );
    const names = [...Deno.readDirSync(run)].map((e) => e.name).sort();
    assertEquals(names, ["checkpoint-4", "checkpoint-6", LATEST_FILE]);
    assertEquals((await Deno.readTextFile(join(run, LATEST_FILE))).trim(), "checkpoint-6");
    // The next save also clears what a killed save left behind (a process that is gone: no such
    // pid), but never the temp folder of a live process (pid 1), which may be saving right now.
    await Deno.mkdir(join(run, ".checkpoint-7.tmp-4194999-abc"));
    await Deno.mkdir(join(run, ".checkpoint-9.tmp-1-abc"));
    await commitCheckpoint(run, 8, 2, (dir) => Deno.writeTextFile(join(dir, "x"), "x"));
    const after = [...Deno.readDirSync(run)].map((e) => e.name).sort();
    assertEquals(after, [".checkpoint-9.tmp-1-abc", "checkpoint-6", "checkpoint-8", LATEST_FILE]);
    await Deno.remove(join(run, ".checkpoint-9.tmp-1-abc"));
  });
});

Deno.test("evaluateLoss(), evaluateImagePerplexity()", async (t) => {
  // Sentences of 2-token "images": 4, 3, 4.5 (not whole: skipped) and 1 image (skipped).
  const dir = join(root, "evaldata");
  const s = [
    [100, 137, 174, 211, 248, 285, 322, 359],
    [500, 501, 502, 503, 504, 505],
    [7, 8, 9, 10, 11, 12, 13, 14, 15],
    [42, 43],
    [900, 901, 902, 903, 904, 905, 906, 907],
  ];
  await writeTestDataset(dir, s, 2);
  const trainer = await Trainer.create(gpu, config({ steps: 3 }));
  await trainer.train();
  const model = trainer.model.llama;

  /** log p(ids[j] | ids[<j]) for j >= 1, from one unpadded forward and a CPU log-softmax. */
  async function logprobs(ids: number[]): Promise<number[]> {
    const { logits } = model.forward({ B: 1, T: ids.length, inputs: ids });
    const x = await gpu.readF32(logits![0]);
    logits!.forEach((l) => l.release());
    const V = model.config.vocab;
    return ids.slice(1).map((id, p) => {
      let m = -Infinity, z = 0;
      for (let v = 0; v < V; v++) m = Math.max(m, x[p * V + v]);
      for (let v = 0; v < V; v++) z += Math.exp(x[p * V + v] - m);
      return x[p * V + id] - m - Math.log(z);
    });
  }

  await t.step(
    "image perplexity == mean exp(NLL of the last image), unpadded reference",
    async () => {
      const r = await evaluateImagePerplexity(model, dir, { split: "all", batch: 2 });
      assert(r, "no result");
      assertEquals([r.examples, r.skipped, r.image_tokens], [3, 2, 2]);
      let ppl = 0, nll = 0;
      for (const ids of [s[0], s[1], s[4]]) {
        const lp = await logprobs(ids); // lp[j-1] = log p(ids[j] | ids[<j])
        const n = -(lp[ids.length - 3] + lp[ids.length - 2]) / 2;
        nll += n / 3;
        ppl += Math.exp(n) / 3;
      }
      assertClose([r.image_perplexity, r.image_nll], [ppl, nll], { atol: 0, rtol: 2e-5 }, "image");
      const one = await evaluateImagePerplexity(model, dir, {
        split: "all",
        maxExamples: 1,
        batch: 2,
      });
      assertEquals(one!.examples, 1);
    },
  );

  await t.step("loss over one packed row == mean -log p of the stream", async () => {
    const stream = s.flat();
    const r = await evaluateLoss(model, dir, { split: "all", seq: stream.length });
    assert(r, "no result");
    assertEquals([r.tokens, r.batches], [stream.length - 1, 1]);
    const lp = await logprobs(stream);
    const ref = -lp.reduce((a, b) => a + b, 0) / lp.length;
    assertClose([r.loss, r.perplexity], [ref, Math.exp(ref)], { atol: 0, rtol: 2e-5 }, "loss");
    // Rows of 8: each row's last target is the next row's first token, so every token but the
    // first is still scored once; the last row (1 token) has no target and is not a batch.
    const rows = await evaluateLoss(model, dir, { split: "all", seq: 8, batch: 2 });
    assertEquals([rows!.tokens, rows!.batches], [stream.length - 1, 2]);
    assertEquals(await evaluateLoss(model, dir, { split: "val", valFraction: 0 }), null);
  });
  trainer.release();
});

Deno.test("Trainer.create() errors", async (t) => {
  await t.step("data whose vocabulary exceeds the model's", async () => {
    const small = { ...MINI, vocab: 100, imageCodes: 100 };
    await assertRejects(
      () => Trainer.create(gpu, config({ model: small })),
      RangeError,
      "does not fit the model's 100",
    );
  });
  await Deno.remove(root, { recursive: true });
});

Deno.test("overrideSchedule(): a resumed run's learning rate", async (t) => {
  const saved = config({ steps: 300, lr: 1e-3, minLr: undefined, warmup: 30 });
  await t.step("--decay-steps stretches the cosine over added steps (a warm restart)", () => {
    assertEquals(lrAt(saved.schedule, 400), saved.schedule.minLr); // past the old end: the floor
    const c = overrideSchedule(saved, { decaySteps: 1500 });
    assertEquals([c.schedule.decaySteps, c.schedule.lr, c.schedule.warmup], [1500, 1e-3, 30]);
    const mid = (30 + 1500) / 2; // halfway through the decay: the midpoint of peak and floor
    assertClose([lrAt(c.schedule, mid)], [(1e-3 + c.schedule.minLr) / 2], { atol: 1e-12 });
    assert(lrAt(c.schedule, 300) > lrAt(saved.schedule, 300), "restarts above the old floor");
    assertEquals(lrAt(c.schedule, 1500), c.schedule.minLr);
  });
  await t.step("a new peak keeps the floor's ratio; an end before the warmup is refused", () => {
    const c = overrideSchedule(saved, { lr: 5e-4 });
    assertClose([c.schedule.minLr / c.schedule.lr], [saved.schedule.minLr / 1e-3], { atol: 1e-12 });
    assertThrows(
      () => overrideSchedule(saved, { decaySteps: 10 }),
      RangeError,
      "at least the warmup",
    );
  });
});
