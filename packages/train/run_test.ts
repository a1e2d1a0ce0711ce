/**
 * The run setup the train commands share (llama_run.ts, vqgan_run.ts, heldout.ts, RunLock.hold),
 * without a GPU: model folders, architectures, the checks before a new or resumed run, a resumed
 * tokenizer run's schedule, held-out folders. The runs themselves are exercised end to end by the
 * CLI tests (apps/train/*_test.ts).
 */
import { join } from "node:path";
import { UsageError } from "@lvm/cli";
import { makeImage } from "@lvm/image";
import { savePng } from "@lvm/image/fs";
import { writeTestDataset } from "@lvm/sentence/testing";
import { TINY_CONFIG, TINY_CONFIG_JSON } from "@lvm/tokenizer/testing";
import { configToHf, makeConfig, preset } from "@lvm/transformer";
import { assert, assertEquals, assertRejects, assertThrows, MINI } from "./testing.ts";
import {
  checkNewRun,
  checkpointConfig,
  checkResume,
  checkSources,
  codeCounts,
  findVqganCheckpoint,
  formatLogEntry,
  loadHeldout,
  LOCK_FILE,
  makeVqganRunConfig,
  modelFolder,
  resolveModelConfig,
  resolveVqganConfig,
  resumedVqganRun,
  RunLock,
  STATE_FILE,
  tokenizerFolder,
  trainingTokenizer,
  type VqganResumePoint,
  withDataVocab,
} from "./mod.ts";

/** A run folder holding checkpoint-STEP/ with a trainer state at `step` (nothing else). */
async function fakeRun(root: string, step: number): Promise<string> {
  const ckpt = join(root, `checkpoint-${step}`);
  await Deno.mkdir(ckpt, { recursive: true });
  const config = { data: "nowhere", model: MINI, steps: 10 };
  await Deno.writeTextFile(
    join(ckpt, STATE_FILE),
    JSON.stringify({
      format: "lvm-trainer-state",
      version: 1,
      kind: "llama",
      step,
      tokens: 0,
      elapsed_s: 0,
      config,
      loader: {},
    }),
  );
  await Deno.writeTextFile(join(root, "latest"), `checkpoint-${step}\n`);
  return ckpt;
}

Deno.test("llama run setup", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "lvm-run-" });
  try {
    await t.step(
      "modelFolder(): an HF folder, a run folder's latest, else a usage error",
      async () => {
        const hf = join(root, "hf");
        await Deno.mkdir(hf);
        await Deno.writeTextFile(join(hf, "config.json"), JSON.stringify(configToHf(MINI)));
        assertEquals(await modelFolder("model", hf), hf);
        const run = join(root, "run");
        const ckpt = await fakeRun(run, 3);
        assertEquals(await modelFolder("model", run), ckpt);
        assertEquals((await checkpointConfig(ckpt))?.steps, 10); // the run's settings
        assertEquals(await checkpointConfig(hf), null);
        await assertRejects(
          () => modelFolder("model", join(root, "none")),
          UsageError,
          `--model ${join(root, "none")}: holds no config.json and no checkpoint (expected a ` +
            `Hugging Face model folder, a checkpoint-STEP folder or a training run folder)`,
        );
      },
    );

    await t.step(
      "resolveModelConfig(): one source; a preset takes the data's vocabulary",
      async () => {
        await assertRejects(
          () => resolveModelConfig({ preset: "tiny", config: "x.json" }),
          UsageError,
          "give one of --preset, --config, --init; found --preset and --config",
        );
        await assertRejects(
          () => resolveModelConfig({ preset: "nope" }),
          UsageError,
          "--preset nope:",
        );
        await assertRejects(
          () => resolveModelConfig({ config: join(root, "missing.json") }),
          UsageError,
          "cannot read a JSON config",
        );
        const data = join(root, "data");
        await writeTestDataset(data, [[1, 2, 3, 4]], 1, 600, 512);
        const small = await resolveModelConfig({}, data);
        assertEquals([small.preset, small.init, small.model.vocab], ["tiny", null, 600]);
        assertEquals(small.model.imageCodes, 512);
        const kept = await resolveModelConfig({ presetVocab: true }, data);
        assertEquals(kept.model.vocab, preset("tiny").vocab);
        const init = await resolveModelConfig({ init: join(root, "hf") });
        assertEquals([init.init, init.preset, init.model.hidden], [join(root, "hf"), null, 32]);
      },
    );

    await t.step("withDataVocab(): LVM data leaves the model as it is", () => {
      const layout = { vocabSize: MINI.vocab, codebookSize: MINI.imageCodes } as never;
      assert(withDataVocab(MINI, layout) === MINI);
      const other = withDataVocab(MINI, { vocabSize: 300, codebookSize: 256 } as never);
      assertEquals([other.vocab, other.imageCodes], [300, 256]);
      assertEquals(other, makeConfig({ ...MINI, vocab: 300, imageCodes: 256 }));
    });

    await t.step("checkResume() / checkNewRun()", async () => {
      const run = join(root, "run");
      const ckpt = join(run, "checkpoint-3");
      assertEquals(await checkResume(run, ckpt, 5, ["out", "resume", "steps"]), ckpt);
      await assertRejects(
        () => checkResume(run, ckpt, 5, ["out", "batch", "seed"]),
        UsageError,
        "--batch, --seed cannot change (allowed: --out --data --steps",
      );
      await assertRejects(() => checkResume(run, null, 5, []), UsageError, "holds no checkpoint");
      await assertRejects(
        () => checkResume(run, ckpt, 2, []),
        UsageError,
        "--steps 2: the checkpoint is already at step 3",
      );
      await checkNewRun(run, null, false);
      await checkNewRun(run, ckpt, true);
      await assertRejects(
        () => checkNewRun(run, ckpt, false),
        UsageError,
        `${run} already holds checkpoint-3; pass --resume to continue that run or --overwrite`,
      );
    });

    await t.step("formatLogEntry(): the progress line", () => {
      const line = formatLogEntry({
        step: 20,
        steps: 100,
        loss: 1.23456,
        lr: 1.5e-4,
        gradNorm: 0.5,
        tokens: 0,
        tokensPerSec: 12345.6,
        unit: "tokens",
        elapsedSec: 61,
        etaSec: 3600,
        stepsPerSec: 1,
        records: [],
      });
      assert(
        line.startsWith(
          "[train] step 20/100 · loss 1.2346 · lr 1.50e-4 · grad norm 0.500 · " +
            "12,346 tokens/s · elapsed ",
        ),
        line,
      );
    });

    await t.step("RunLock.hold() releases the lock however the work ends", async () => {
      const dir = join(root, "locked");
      assertEquals(await RunLock.hold(dir, "test", () => Promise.resolve(7)), 7);
      await assertRejects(() =>
        RunLock.hold(dir, "test", () => {
          throw new RangeError("boom");
        }), RangeError);
      await assertRejects(() => Deno.stat(join(dir, LOCK_FILE)), Deno.errors.NotFound);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("vqgan run setup", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "lvm-vqrun-" });
  try {
    await t.step("resolveVqganConfig(): a preset by default; one source", async () => {
      assertEquals((await resolveVqganConfig({})).init, null);
      await assertRejects(
        () => resolveVqganConfig({ preset: "tiny", config: "c.json" }),
        UsageError,
        "give --preset or --config, not both",
      );
      await assertRejects(
        () => resolveVqganConfig({ preset: "tiny", init: "dir" }),
        UsageError,
        "--init dir takes the architecture from its config.json: give no --preset",
      );
      await assertRejects(() => resolveVqganConfig({ preset: "nope" }), UsageError, "--preset:");
      const path = join(root, "config.json");
      await Deno.writeTextFile(path, JSON.stringify(TINY_CONFIG_JSON));
      assertEquals((await resolveVqganConfig({ config: path })).config, TINY_CONFIG);
    });

    await t.step("resumedVqganRun(): new steps and cadence, the cosine stretched", () => {
      const saved = makeVqganRunConfig({ config: TINY_CONFIG, steps: 10, lr: 1e-3, warmup: 2 });
      const point: VqganResumePoint = {
        latest: "x",
        state: { config: saved } as never,
        legacy: null,
        step: 10,
      };
      const cadence = { steps: 30, saveEvery: 5, evalEvery: 0, logEvery: 1, keep: 2 };
      const run = resumedVqganRun(point, cadence);
      assertEquals([run.steps, run.saveEvery, run.keep], [30, 5, 2]);
      assertEquals(
        run.schedule,
        makeVqganRunConfig({ config: TINY_CONFIG, steps: 30, lr: 1e-3, warmup: 2 }).schedule,
      );
      const lower = resumedVqganRun(point, { ...cadence, lr: 1e-4, warmup: 0 });
      assertEquals([lower.schedule.lr, lower.schedule.warmup], [1e-4, 0]);
    });

    await t.step("checkSources(): a resumed run needs the same sources", () => {
      const run = makeVqganRunConfig({ config: TINY_CONFIG, steps: 10 });
      const src = [{ name: "a", frames: [makeImage(2, 2)] }] as never;
      checkSources(run, null, src);
      assertEquals(run.sources, ["a:1"]);
      const point = { latest: "x", state: {} as never, legacy: null, step: 1 };
      checkSources(run, point, src);
      assertThrows(
        () => checkSources({ ...run, sources: ["b:1"] }, point, src),
        UsageError,
        "the training sources differ",
      );
    });

    await t.step("findVqganCheckpoint(): none in an empty folder", async () => {
      assertEquals(await findVqganCheckpoint(root), null);
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("held-out evaluation folders", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "lvm-heldout-" });
  try {
    await t.step(
      "loadHeldout(): split.sh's layout; a missing folder is a usage error",
      async () => {
        const img = makeImage(4, 4);
        for (
          const p of ["heldout/mnist/3/a.png", "heldout/video/v1/0.png", "heldout/video/v1/1.png"]
        ) {
          await Deno.mkdir(join(root, p, ".."), { recursive: true });
          await savePng(join(root, p), img);
        }
        for (const i of [0, 1, 2]) {
          await Deno.mkdir(join(root, "train/mnist/3"), { recursive: true });
          await savePng(join(root, `train/mnist/3/${i}.png`), img);
        }
        const h = await loadHeldout(join(root, "heldout"), join(root, "train"), 2);
        assertEquals(h.digits.map((d) => d.length), [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assertEquals([h.videos.length, h.videos[0].length, h.photos.length], [1, 2, 0]);
        assertEquals(h.trainDigits[3].length, 2);
        await assertRejects(
          () => loadHeldout(join(root, "none"), root, 1),
          UsageError,
          `--heldout ${join(root, "none")}: no such folder`,
        );
      },
    );

    await t.step("tokenizerFolder(): a tokenizer folder as it is, else a usage error", async () => {
      const tok = join(root, "tok");
      await Deno.mkdir(tok);
      await Deno.writeTextFile(join(tok, "config.json"), "{}");
      const [dir, clean] = await tokenizerFolder(tok);
      assertEquals(dir, tok);
      await clean();
      await assertRejects(() => tokenizerFolder(root), UsageError, "no tokenizer checkpoint");
    });

    await t.step("trainingTokenizer() / codeCounts()", async () => {
      assertEquals(await trainingTokenizer(root), null);
      const data = join(root, "data");
      await writeTestDataset(data, [[1, 1, 2, 550]], 1, 600, 512);
      const counts = await codeCounts(data);
      assertEquals([counts.length, counts[1], counts[2]], [512, 2, 1]);
      const ckpt = join(root, "ckpt");
      await Deno.mkdir(ckpt);
      await Deno.writeTextFile(join(ckpt, STATE_FILE), JSON.stringify({ config: { data } }));
      assertEquals(await trainingTokenizer(ckpt), "t");
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
