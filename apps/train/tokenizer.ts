/**
 * `deno task train tokenizer`: trains a VQGAN tokenizer (@lvm/tokenizer) from images, frame folders,
 * GIFs or videos with @lvm/train's Trainer (the loop `train model` uses too); progress on stderr;
 * resumable checkpoints; the output directory loads with `deno task infer encode/decode
 * --tokenizer DIR` and `loadTokenizer(DIR)`.
 * @module
 */
import { join } from "node:path";
import {
  type AdversarialOptions,
  checkBatchFits,
  evalImages,
  holdOut,
  HoldOutError,
  type ImageSource,
  parseConfig,
  presetConfig,
  type ReconLoss,
  TRAIN_DEFAULTS,
  VQGAN_PRESETS,
  type VqganConfig,
} from "@lvm/tokenizer";
import { DEFAULT_MAX_FRAMES, loadSources } from "@lvm/tokenizer/fs";
import { readTokenizerDir, saveTokenizer, type TokenizerFiles } from "@lvm/tokenizer/fs";
import { getGpu } from "@lvm/gpu";
import {
  latestCheckpoint,
  legacyRunConfig,
  makeVqganRunConfig,
  MetricsLog,
  readLegacyVqganCheckpoint,
  readTrainerState,
  resumeLegacyVqgan,
  RunLock,
  stopOnSignals,
  Trainer,
  vqganConfig,
  type VqganRunConfig,
  vqganSchedule,
  VqganTrainable,
} from "@lvm/train";
import { type Command, floatFlag, intFlag, parseFlags, UsageError } from "@lvm/cli";

const USAGE = `usage:
  deno task train tokenizer --images PATH... --preset NAME --steps N --out DIR [options]
  deno task train tokenizer --images PATH... --init DIR --steps N --out DIR [options]
  deno task train tokenizer --out DIR --steps N --resume [--images PATH...]

Trains the VQGAN (open-muse architecture) from images: reconstruction loss (L2 by default, no
perceptual loss) + codebook loss + 0.25 x commitment loss, straight-through gradients, AdamW,
dead-code restarts. Writes DIR/config.json + DIR/model.safetensors (loadable by
\`deno task infer encode/decode --tokenizer DIR\`), resumable checkpoints in
DIR/checkpoints/checkpoint-STEP/ (each a loadable tokenizer too; DIR/checkpoints/latest names the
newest) and DIR/loss.png (training loss and held-out MSE by step). Progress (stderr): step, loss,
batch PSNR, codebook usage, steps/s, ETA. At the end the PSNR of held-out images (never trained on)
is printed. Ctrl-C (or SIGTERM) finishes the step, saves a checkpoint and exits (130; 143 after
SIGTERM); a diverged run stops before saving (exit 1) naming the last good checkpoint; one run at
a time per DIR (DIR/train.lock; a second run is refused, exit 1).

inputs:
  --images PATH...      image files (PNG/JPEG/GIF/TIFF; a GIF gives its frames, up to --max-frames),
                        videos (avi/mp4/mkv/mov/webm, through ffmpeg, 1 frame per second, up to
                        --max-frames), or folders: a folder's images are separate sources and each
                        sub-folder is one frame-folder source (up to --max-frames) (repeatable)
  --eval-images PATH    held-out evaluation sources (same forms); default: every --holdout-th source
  --holdout K           hold out every K-th source for evaluation when --eval-images is absent
                        (default 8; 0 = none; 1 is refused: it would leave nothing to train on)
  --max-side N          shorter side of the in-memory copies (default 4 x resolution)
  --max-frames N        frames kept per GIF, video or frame folder, evenly spaced (default
                        ${DEFAULT_MAX_FRAMES}; 0 = every frame; a GIF is decoded whole first)

model:
  --preset NAME         ${Object.keys(VQGAN_PRESETS).join(", ")} (default tiny)
  --config FILE         an open-muse config.json instead of a preset
  --init DIR            start from this tokenizer (fine-tuning): its config.json (resolution,
                        channels, codebook) and weights, codebook included, instead of a preset
                        and random weights (not with --preset / --config)

training:
  --steps N             total steps (required; with --resume, the new total)
  --out DIR             output folder (required)
  --batch N             images per step (default ${TRAIN_DEFAULTS.batchSize}); refused up front when one
                        step's largest tensor would not fit the adapter's storage-binding limit
  --lr X                peak learning rate (default ${TRAIN_DEFAULTS.lr}); warmup then cosine to lr/10
  --warmup N            warmup steps (default ${TRAIN_DEFAULTS.warmup})
  --recon l2|l1         reconstruction loss (default l2: mean squared error, what PSNR measures)
  --restart-every N     dead-code restart window in steps (default ${TRAIN_DEFAULTS.restartEvery}; 0 = off)
  --clip X              gradient-norm clip (default ${TRAIN_DEFAULTS.clip}; 0 = off)
  --weight-decay X      AdamW weight decay (default ${TRAIN_DEFAULTS.weightDecay})
  --seed N              data order, augmentation and init seed (default 0)
  --save-every N        checkpoint interval in steps (default 100)
  --keep N              checkpoints kept in DIR/checkpoints (default 1)
  --eval-every N        evaluate on the held-out images every N steps (default 0: at the end)
  --log-every N         progress line interval (default 10)
  --json-log FILE       also append one JSON object per progress/eval/save line to FILE
  --resume              continue from DIR/checkpoints (exactly: same data order, RNG, optimizer);
                        the other settings come from the checkpoint, except --steps, the cadence
                        flags and the learning rate: --lr X (new peak, floor lr/10) and
                        --warmup N apply to the remaining steps (e.g. after a divergence)
  --adv-start N         switch on the adversarial patch loss at step N: a PatchGAN discriminator
                        (3 convs, hinge loss) whose verdict on the reconstruction is added to the
                        loss with a fixed weight (no adaptive weight, no perceptual loss)
  --adv-weight X        weight of the adversarial term (default 0.1)
  --adv-channels N      discriminator width (default 64)
  --json                print a JSON summary on stdout at the end
  --quiet               no progress lines`;

const OPTIONS = {
  images: { type: "string", multiple: true },
  "eval-images": { type: "string", multiple: true },
  holdout: { type: "string" },
  "max-side": { type: "string" },
  "max-frames": { type: "string" },
  preset: { type: "string" },
  config: { type: "string" },
  init: { type: "string" },
  steps: { type: "string" },
  out: { type: "string" },
  batch: { type: "string" },
  lr: { type: "string" },
  warmup: { type: "string" },
  recon: { type: "string" },
  "restart-every": { type: "string" },
  clip: { type: "string" },
  "weight-decay": { type: "string" },
  seed: { type: "string" },
  "save-every": { type: "string" },
  keep: { type: "string" },
  "json-log": { type: "string" },
  "eval-every": { type: "string" },
  "log-every": { type: "string" },
  resume: { type: "boolean" },
  "adv-start": { type: "string" },
  "adv-weight": { type: "string" },
  "adv-channels": { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
} as const;

/** A number flag >= `min` (default 0), `fallback` when not given. */
function num(flag: string, v: string | undefined, fallback: number, min = 0): number {
  return floatFlag(flag, v, fallback, { min });
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s) || s < 0) return "?";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h
    ? `${h}h${String(m).padStart(2, "0")}m`
    : m
    ? `${m}m${String(sec).padStart(2, "0")}s`
    : `${sec}s`;
}

/** What identifies the training data (a resumed run must see the same sources). */
function sourceKey(sources: ImageSource[]): string[] {
  return sources.map((s) => `${s.name}:${s.frames.length}`);
}

/** The progress line of a step (the format the tokenizer trainer has always printed). */
function progressLine(
  e: { step: number; steps: number; stepsPerSec: number; etaSec: number },
  r: { loss: number; lr: number; metrics?: Record<string, number> },
  K: number,
  adversarial: AdversarialOptions | null,
): string {
  const m = r.metrics ?? {};
  return `step ${e.step}/${e.steps}  loss ${r.loss.toFixed(5)}  rec ${m.rec.toFixed(5)}  vq ${
    m.vq.toFixed(5)
  }  psnr ${m.psnr.toFixed(2)} dB  codes ${m.codes_used}/${K}${
    m.restarted ? ` (${m.restarted} restarted)` : ""
  }${
    adversarial && e.step >= adversarial.start
      ? `  d ${m.d_loss.toFixed(4)} g_adv ${m.g_adv.toFixed(4)}`
      : ""
  }  lr ${r.lr.toExponential(2)}  ${e.stepsPerSec.toFixed(2)} steps/s  eta ${fmtTime(e.etaSec)}`;
}

/** `deno task train tokenizer`. */
export const tokenizer: Command = {
  summary: "train a VQGAN image tokenizer from images, frame folders, GIFs or videos",
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values: v, positionals } = parseFlags({
      args,
      options: OPTIONS,
      allowPositionals: true,
    });
    // `--images A B C` (as the issue spells it): bare words are more --images paths.
    if (positionals.length) {
      if (!v.images?.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
      v.images = [...v.images, ...positionals];
    }
    if (!v.out) throw new UsageError("--out DIR is required");
    if (v.steps === undefined) throw new UsageError("--steps N is required");
    const steps = intFlag("steps", v.steps, 0, { min: 1 });
    const out = v.out, ckptDir = join(out, "checkpoints");
    const log = (s: string) => {
      if (!v.quiet) console.error(s);
    };
    const cadence = {
      saveEvery: intFlag("save-every", v["save-every"], 100, { min: 1 }),
      evalEvery: intFlag("eval-every", v["eval-every"], 0, { min: 0 }),
      logEvery: intFlag("log-every", v["log-every"], 10, { min: 1 }),
      keep: intFlag("keep", v.keep, 1, { min: 1 }),
    };

    // Config: from the checkpoint when resuming, else from the flags.
    let run: VqganRunConfig;
    let config: VqganConfig;
    let init: TokenizerFiles | null = null;
    const latest = v.resume ? await latestCheckpoint(ckptDir) : null;
    // A checkpoint of the trainer before the shared loop (latest.json + ckpt-STEP/) resumes too.
    const legacy = v.resume && !latest ? await readLegacyVqganCheckpoint(ckptDir) : null;
    const resuming = latest !== null || legacy !== null;
    if (v.resume && !resuming) log(`no checkpoint in ${ckptDir}: starting a new run`);
    if (v.init && resuming) log(`--init ${v.init} ignored: the checkpoint holds the weights`);
    const state = latest ? await readTrainerState<VqganRunConfig>(latest, "vqgan") : null;
    if (state || legacy) {
      const at = state?.step ?? legacy!.step;
      if (steps <= at) {
        throw new UsageError(`--steps ${steps}: the checkpoint is already at step ${at}`);
      }
      // The saved schedule, its cosine stretched to the new last step (as it always has been),
      // with a new peak (floor lr / 10) and warmup when given.
      const lr = v.lr === undefined
        ? state?.config.schedule.lr ?? legacy!.options.lr
        : num("lr", v.lr, 0);
      const warmup = v.warmup === undefined
        ? state?.config.schedule.warmup ?? legacy!.options.warmup
        : intFlag("warmup", v.warmup, 0, { min: 0 });
      run = state
        ? { ...state.config, ...cadence, steps, schedule: vqganSchedule(lr, warmup, steps) }
        : legacyRunConfig(legacy!, { ...cadence, steps, lr, warmup });
      config = vqganConfig(run);
    } else {
      if (!v.images?.length) throw new UsageError("--images PATH is required");
      if (v.preset && v.config) throw new UsageError("give --preset or --config, not both");
      if (v.init && (v.preset || v.config)) {
        throw new UsageError(
          `--init ${v.init} takes the architecture from its config.json: give no --${
            v.preset ? "preset" : "config"
          }`,
        );
      }
      if (v.init) {
        init = await readTokenizerDir(v.init);
        config = init.config;
      } else if (v.config) {
        config = parseConfig(JSON.parse(await Deno.readTextFile(v.config)), v.config);
      } else {
        try {
          config = presetConfig(v.preset ?? "tiny");
        } catch (e) {
          throw new UsageError(`--preset: ${(e as Error).message}`);
        }
      }
      const recon = (v.recon ?? "l2") as ReconLoss;
      if (recon !== "l1" && recon !== "l2") {
        throw new UsageError(`--recon ${v.recon}: expected l1 or l2`);
      }
      const seed = intFlag("seed", v.seed, 0, { min: 0 });
      let adversarial: AdversarialOptions | null = null;
      if (v["adv-start"] !== undefined) {
        adversarial = {
          start: intFlag("adv-start", v["adv-start"], 1, { min: 1 }),
          weight: num("adv-weight", v["adv-weight"], 0.1),
          channels: intFlag("adv-channels", v["adv-channels"], 64, { min: 1 }),
          seed,
        };
      } else if (v["adv-weight"] !== undefined || v["adv-channels"] !== undefined) {
        throw new UsageError("--adv-weight / --adv-channels need --adv-start N");
      }
      run = makeVqganRunConfig({
        config,
        steps,
        batch: intFlag("batch", v.batch, TRAIN_DEFAULTS.batchSize, { min: 1 }),
        lr: num("lr", v.lr, TRAIN_DEFAULTS.lr),
        warmup: intFlag("warmup", v.warmup, TRAIN_DEFAULTS.warmup, { min: 0 }),
        weightDecay: num("weight-decay", v["weight-decay"], TRAIN_DEFAULTS.weightDecay),
        clip: num("clip", v.clip, TRAIN_DEFAULTS.clip),
        recon,
        restartEvery: intFlag("restart-every", v["restart-every"], TRAIN_DEFAULTS.restartEvery, {
          min: 0,
        }),
        seed,
        fineTune: !!v.init,
        adversarial,
        ...cadence,
      });
    }
    if (!v.images?.length) {
      throw new UsageError("--images PATH is required (the same inputs as the run being resumed)");
    }
    const R = config.resolution;
    const maxSide = intFlag("max-side", v["max-side"], 4 * R, { min: R });
    const maxFrames = intFlag("max-frames", v["max-frames"], DEFAULT_MAX_FRAMES, { min: 0 });
    const holdout = intFlag("holdout", v.holdout, 8, { min: 0 });

    // The batch must fit the adapter: checked before the data is loaded.
    const gpu = await getGpu();
    try {
      checkBatchFits(config, run.batch, gpu.limits.maxStorageBufferBindingSize, "--batch");
    } catch (e) {
      throw new UsageError((e as Error).message);
    }

    // Data.
    const t0 = performance.now();
    const all = await loadSources(v.images, { maxSide, maxFrames });
    let train: ImageSource[], held: ImageSource[];
    if (v["eval-images"]?.length) {
      train = all;
      held = await loadSources(v["eval-images"], { maxSide, maxFrames });
    } else {
      try {
        ({ train, held } = holdOut(all, holdout));
      } catch (e) {
        if (!(e instanceof HoldOutError)) throw e;
        throw new UsageError(
          `--holdout ${holdout}: ${e.message}; use --holdout 0 (no evaluation), a K of 2 or more, or --eval-images`,
        );
      }
    }
    const frames = (ss: ImageSource[]) => ss.reduce((a, s) => a + s.frames.length, 0);
    log(
      `data: ${train.length} training sources (${frames(train)} images), ${held.length} held out (${
        frames(held)
      } images), loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    const savedSources = state ? run.sources : legacy?.sources;
    if (savedSources && JSON.stringify(savedSources) !== JSON.stringify(sourceKey(train))) {
      throw new UsageError(
        "--resume: the training sources differ from the checkpoint's (give the same --images, --eval-images and --holdout)",
      );
    }
    run.sources = sourceKey(train);

    // Model and trainer: the checkpoint's weights when resuming, else the --init tokenizer's,
    // else random ones.
    const lock = await RunLock.acquire(out, "train tokenizer");
    try {
      const data = { train, eval: evalImages(held) };
      let trainer: Trainer<VqganTrainable, VqganRunConfig>;
      if (legacy) {
        trainer = await resumeLegacyVqgan(gpu, legacy, run, data);
        log(
          `resumed from ${legacy.path} (written by the previous tokenizer trainer; new ` +
            `checkpoints go beside it as checkpoint-STEP/) at step ${trainer.step}`,
        );
      } else {
        const model = await VqganTrainable.open(gpu, run, data, {
          checkpoint: latest ?? undefined,
          state: state ? { rng: state.rng as number, usage: state.usage as number[] } : undefined,
          weights: init?.weights,
        });
        init = null; // the host copy is no longer needed
        trainer = state
          ? await Trainer.fromCheckpoint(gpu, model, run, latest!, state)
          : new Trainer(gpu, model, run);
        if (state) log(`resumed from ${latest} at step ${trainer.step}`);
      }
      return await trainTokenizer(
        trainer,
        out,
        ckptDir,
        v["json-log"],
        log,
        held.length,
        !!v.json,
        lock,
      );
    } finally {
      await lock.release();
    }
  },
};

/** Trains to the end (or a signal), then writes the tokenizer and reports held-out PSNR. */
async function trainTokenizer(
  trainer: Trainer<VqganTrainable, VqganRunConfig>,
  out: string,
  ckptDir: string,
  jsonPath: string | undefined,
  log: (s: string) => void,
  heldSources: number,
  json: boolean,
  lock: RunLock,
): Promise<number> {
  const { gpu, model } = trainer;
  const config = model.model.config, run = trainer.config;
  const K = config.numEmbeddings;
  log(
    `model: ${config.resolution}x${config.resolution} -> ${model.model.geometry.grid}x${model.model.geometry.grid} tokens, ${K} codes; ${gpu.describe()}`,
  );
  const metrics = new MetricsLog(jsonPath ?? null);
  const stop = stopOnSignals((m) => console.error(m), () => lock.releaseSync());
  const tStart = performance.now();
  let result;
  try {
    result = await trainer.run({
      out: ckptDir,
      signal: stop.signal,
      logFirst: true,
      finalEval: true,
      chart: join(out, "loss.png"),
      chartTitle: `tokenizer loss (${config.resolution}px, ${K} codes)`,
      chartEvalName: "held-out MSE",
      onLog(e) {
        const r = e.records[e.records.length - 1];
        log(progressLine(e, r, K, run.adversarial));
        metrics.write({
          type: "train",
          step: e.step,
          steps: e.steps,
          loss: r.loss,
          lr: r.lr,
          grad_norm: r.gradNorm,
          images: e.tokens,
          images_per_s: e.tokensPerSec,
          elapsed_s: e.elapsedSec,
          eta_s: e.etaSec,
          ...r.metrics,
        });
      },
      onEval(e) {
        if (e.step !== run.steps) {
          log(`eval step ${e.step}: held-out PSNR ${e.psnr.toFixed(2)} dB (${e.images} images)`);
        }
        metrics.write({
          type: "eval",
          step: e.step,
          val_loss: e.loss,
          psnr: e.psnr,
          images: e.images,
        });
      },
      onSave(path, step) {
        metrics.write({ type: "save", step, path });
      },
    });
  } catch (e) {
    stop.dispose();
    trainer.release();
    throw e;
  }
  stop.dispose();
  if (result.interrupted) {
    trainer.release();
    console.error(
      `interrupted at step ${result.step}; checkpoint ${result.checkpoint}; continue with the ` +
        `same --out, --images and --resume`,
    );
    return stop.exitCode() || 130;
  }

  // Output.
  const e = result.eval;
  const final = await model.model.readWeights();
  const meta: Record<string, string> = { steps: String(trainer.step) };
  if (e) meta.eval_psnr = e.psnr.toFixed(3);
  await saveTokenizer(out, config, final, meta);
  const secs = (performance.now() - tStart) / 1000;
  if (e) {
    log(
      `held-out PSNR ${
        e.psnr.toFixed(2)
      } dB (mean over ${e.images} images from ${heldSources} sources never used in training; MSE ${
        e.mse.toExponential(3)
      })`,
    );
  } else log("no held-out images (--holdout 0 and no --eval-images): no PSNR to report");
  log(
    `wrote ${join(out, "config.json")} and ${
      join(out, "model.safetensors")
    } (${trainer.step} steps, ${fmtTime(secs)})`,
  );
  const last = result.last;
  if (json) {
    console.log(JSON.stringify({
      out,
      steps: trainer.step,
      loss: last?.loss ?? null,
      train_psnr: last?.metrics?.psnr ?? null,
      eval_psnr: e?.psnr ?? null,
      eval_images: e?.images ?? 0,
      codes_used: last?.metrics?.codes_used ?? null,
      seconds: +secs.toFixed(1),
    }));
  }
  trainer.release();
  return 0;
}
