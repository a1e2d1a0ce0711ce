/**
 * The demo's two training stages, composed from @lvm/train: a VQGAN on the frames (its Trainer with
 * VqganTrainable) and a LLaMA on the visual sentences (its Trainer), with progress lines.
 * @module
 */
import { formatProgress } from "@lvm/cli";
import type { Gpu } from "@lvm/gpu";
import { TokenDataset } from "@lvm/sentence";
import { evalImages, presetConfig } from "@lvm/tokenizer";
import { DEFAULT_MAX_FRAMES, loadSources } from "@lvm/tokenizer/fs";
import { saveTokenizer } from "@lvm/tokenizer/fs";
import { makeConfig, preset } from "@lvm/transformer";
import * as train from "@lvm/train";
import { FRAMES, R } from "./_clips.ts";

const log = (s: string) => console.error(s);
/** A trainer's progress line. */
const progress = (label: string) => (e: train.LogEntry) =>
  log(formatProgress({
    label,
    unit: "step",
    done: e.step,
    total: e.steps,
    seconds: e.elapsedSec,
    rate: e.tokensPerSec,
    rateUnit: e.unit,
    eta: e.etaSec,
    fields: [`loss ${e.loss.toFixed(4)}`],
  }));

/** Trains the tokenizer on the frames of `clips` (held-out PSNR on `heldout`), saved in `tokDir`. */
export async function trainTokenizer(
  gpu: Gpu,
  clips: string[],
  heldout: string,
  tokDir: string,
  quick: boolean,
): Promise<void> {
  // The `tiny` preset with 128 codes: these frames hold a handful of distinct cells.
  const config = { ...presetConfig("tiny"), numEmbeddings: 128 };
  const opts = { maxSide: 4 * R, maxFrames: DEFAULT_MAX_FRAMES };
  const data = {
    train: await loadSources(clips, opts),
    eval: evalImages(await loadSources([heldout], opts)),
  };
  const run = train.makeVqganRunConfig({ config, steps: quick ? 20 : 200, batch: 4, logEvery: 25 });
  const trainer = new train.Trainer(gpu, await train.VqganTrainable.open(gpu, run, data), run);
  try {
    const r = await trainer.run({ out: null, finalEval: true, onLog: progress("[tokenizer]") });
    if (r.eval) log(`held-out PSNR ${r.eval.psnr.toFixed(2)} dB (${r.eval.images} images)`);
    await saveTokenizer(tokDir, config, await trainer.model.model.readWeights(), {
      steps: String(r.step),
    });
  } finally {
    trainer.release();
  }
}

/** Trains the model on the dataset in `dataDir`, checkpoints in `runDir`; returns the last one. */
export async function trainModel(
  gpu: Gpu,
  dataDir: string,
  runDir: string,
  quick: boolean,
): Promise<string> {
  // The `tiny` preset sized for the dataset's vocabulary (128 codes + 100 reserved ids).
  const { layout } = await TokenDataset.open(dataDir);
  const model = makeConfig({
    ...preset("tiny"),
    vocab: layout.vocabSize,
    imageCodes: layout.codebookSize,
  });
  const config = train.makeTrainConfig({
    ...{
      data: dataDir,
      model,
      preset: "tiny",
      steps: quick ? 10 : 400,
      batch: 2,
      seq: FRAMES * 64,
    },
    ...{ lr: 3e-3, minLr: 3e-4, warmup: 20, valFraction: 0.1, evalEvery: 0, saveEvery: 1000 },
    logEvery: 25,
  });
  await train.clearRun(runDir);
  const trainer = await train.Trainer.create(gpu, config);
  const r = await trainer.run({ out: runDir, onLog: progress("[train]") }).finally(() =>
    trainer.release()
  );
  log(`trained ${r.step} steps, last loss ${r.loss.toFixed(4)}; model: ${r.checkpoint}`);
  return r.checkpoint!;
}
