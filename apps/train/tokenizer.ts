/**
 * `deno task train tokenizer`: trains a VQGAN tokenizer (@lvm/tokenizer) from images, frame folders,
 * GIFs or videos; progress on stderr; resumable checkpoints; the output directory loads with
 * `deno task infer encode/decode --tokenizer DIR` and `loadTokenizer(DIR)`.
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import {
  type AdversarialOptions,
  checkBatchFits,
  DEFAULT_MAX_FRAMES,
  evalImages,
  evaluateReconstruction,
  holdOut,
  HoldOutError,
  type ImageSource,
  initWeights,
  loadSources,
  parseConfig,
  PatchDiscriminator,
  presetConfig,
  PRESETS,
  readCheckpointState,
  readTokenizerDir,
  type ReconLoss,
  sampleBatch,
  saveTokenizer,
  type TokenizerFiles,
  TRAIN_DEFAULTS,
  type TrainOptions,
  Vqgan,
  type VqganConfig,
  VqganTokenizer,
  VqganTrainer,
} from "@lvm/tokenizer";
import { getGpu } from "@lvm/gpu";
import { type Command, intOption, UsageError } from "./_cli.ts";

const USAGE = `usage:
  deno task train tokenizer --images PATH... --preset NAME --steps N --out DIR [options]
  deno task train tokenizer --images PATH... --init DIR --steps N --out DIR [options]
  deno task train tokenizer --out DIR --steps N --resume [--images PATH...]

Trains the VQGAN (open-muse architecture) from images: reconstruction loss (L2 by default, no
perceptual loss) + codebook loss + 0.25 x commitment loss, straight-through gradients, AdamW,
dead-code restarts. Writes DIR/config.json + DIR/model.safetensors (loadable by
\`deno task infer encode/decode --tokenizer DIR\`) and resumable checkpoints in DIR/checkpoints/.
Progress (stderr): step, loss, batch PSNR, codebook usage, steps/s, ETA. At the end the PSNR of
held-out images (never trained on) is printed.

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
  --preset NAME         ${Object.keys(PRESETS).join(", ")} (default tiny)
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
  --eval-every N        evaluate on the held-out images every N steps (default 0: at the end)
  --log-every N         progress line interval (default 10)
  --resume              continue from DIR/checkpoints (exactly: same data order, RNG, optimizer)
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
  "eval-every": { type: "string" },
  "log-every": { type: "string" },
  resume: { type: "boolean" },
  "adv-start": { type: "string" },
  "adv-weight": { type: "string" },
  "adv-channels": { type: "string" },
  json: { type: "boolean" },
  quiet: { type: "boolean" },
} as const;

function num(flag: string, v: string | undefined, fallback: number, min = 0): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (v.trim() === "" || !Number.isFinite(n) || n < min) {
    throw new UsageError(`--${flag} ${v}: expected a number >= ${min}`);
  }
  return n;
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return "?";
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

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** `deno task train tokenizer`. */
export const tokenizer: Command = {
  summary: "train a VQGAN image tokenizer from images, frame folders, GIFs or videos",
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const { values: v, positionals } = parseArgs({
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
    const steps = intOption("steps", v.steps, 0, { min: 1 });
    const out = v.out, ckptDir = join(out, "checkpoints");
    const log = (s: string) => {
      if (!v.quiet) console.error(s);
    };

    // Config and options: from the checkpoint when resuming, else from the flags.
    let config: VqganConfig, options: TrainOptions;
    let savedSources: string[] | null = null;
    let adversarial: AdversarialOptions | null = null;
    let init: TokenizerFiles | null = null;
    const resuming = !!v.resume && (await exists(join(ckptDir, "latest.json")));
    if (v.resume && !resuming) log(`no checkpoint in ${ckptDir}: starting a new run`);
    if (v.init && resuming) log(`--init ${v.init} ignored: the checkpoint holds the weights`);
    if (resuming) {
      const st = await readCheckpointState(ckptDir);
      config = st.config;
      options = { ...st.options, steps };
      const extra = st.state.extra as
        | { sources?: string[]; adversarial?: AdversarialOptions }
        | undefined;
      savedSources = extra?.sources ?? null;
      adversarial = extra?.adversarial ?? null;
      if (steps <= st.state.step) {
        throw new UsageError(
          `--steps ${steps}: the checkpoint is already at step ${st.state.step}`,
        );
      }
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
      options = {
        batchSize: intOption("batch", v.batch, TRAIN_DEFAULTS.batchSize, { min: 1 }),
        lr: num("lr", v.lr, TRAIN_DEFAULTS.lr),
        warmup: intOption("warmup", v.warmup, TRAIN_DEFAULTS.warmup, { min: 0 }),
        steps,
        beta1: TRAIN_DEFAULTS.beta1,
        beta2: TRAIN_DEFAULTS.beta2,
        weightDecay: num("weight-decay", v["weight-decay"], TRAIN_DEFAULTS.weightDecay),
        clip: num("clip", v.clip, TRAIN_DEFAULTS.clip),
        recon,
        restartEvery: intOption("restart-every", v["restart-every"], TRAIN_DEFAULTS.restartEvery, {
          min: 0,
        }),
        seed: intOption("seed", v.seed, 0, { min: 0 }),
      };
      if (v["adv-start"] !== undefined) {
        adversarial = {
          start: intOption("adv-start", v["adv-start"], 1, { min: 1 }),
          weight: num("adv-weight", v["adv-weight"], 0.1),
          channels: intOption("adv-channels", v["adv-channels"], 64, { min: 1 }),
          seed: options.seed,
        };
      } else if (v["adv-weight"] !== undefined || v["adv-channels"] !== undefined) {
        throw new UsageError("--adv-weight / --adv-channels need --adv-start N");
      }
    }
    if (!v.images?.length) {
      throw new UsageError("--images PATH is required (the same inputs as the run being resumed)");
    }
    const R = config.resolution;
    const saveEvery = intOption("save-every", v["save-every"], 100, { min: 1 });
    const evalEvery = intOption("eval-every", v["eval-every"], 0, { min: 0 });
    const logEvery = intOption("log-every", v["log-every"], 10, { min: 1 });
    const maxSide = intOption("max-side", v["max-side"], 4 * R, { min: R });
    const maxFrames = intOption("max-frames", v["max-frames"], DEFAULT_MAX_FRAMES, { min: 0 });
    const holdout = intOption("holdout", v.holdout, 8, { min: 0 });

    // The batch must fit the adapter: checked before the data is loaded.
    const gpu = await getGpu();
    try {
      checkBatchFits(config, options.batchSize, gpu.limits.maxStorageBufferBindingSize, "--batch");
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
    if (savedSources && JSON.stringify(savedSources) !== JSON.stringify(sourceKey(train))) {
      throw new UsageError(
        "--resume: the training sources differ from the checkpoint's (give the same --images, --eval-images and --holdout)",
      );
    }

    // Model and trainer: the --init tokenizer's weights, else random ones (a resumed run's come
    // from the checkpoint below).
    const model = Vqgan.fromWeights(
      gpu,
      config,
      init?.weights ?? initWeights(config, options.seed),
    );
    init = null; // the host copy is no longer needed
    const trainer = new VqganTrainer(model, options, { fineTune: !!v.init && !resuming });
    if (adversarial) trainer.extension = new PatchDiscriminator(gpu, adversarial, options);
    if (resuming) {
      await trainer.load(ckptDir);
      log(`resumed from ${ckptDir} at step ${trainer.step}`);
    }
    const K = config.numEmbeddings;
    log(
      `model: ${config.resolution}x${config.resolution} -> ${model.geometry.grid}x${model.geometry.grid} tokens, ${K} codes; ${gpu.describe()}`,
    );
    const evalSet = evalImages(held);
    const evaluate = async () => {
      if (!evalSet.length) return null;
      const tok = new VqganTokenizer(model, "training", options.batchSize);
      return await evaluateReconstruction(tok, evalSet);
    };

    // Loop.
    const startStep = trainer.step;
    const tStart = performance.now();
    let last: Awaited<ReturnType<VqganTrainer["trainStep"]>> | null = null;
    while (trainer.step < steps) {
      const x = gpu.upload(sampleBatch(train, options.batchSize, R, trainer.rng), [
        options.batchSize,
        3,
        R,
        R,
      ]);
      last = await trainer.trainStep(x);
      x.release();
      const t = trainer.step;
      if (!Number.isFinite(last.loss)) {
        throw new Error(`step ${t}: the loss is ${last.loss}; lower --lr`);
      }
      if (t % logEvery === 0 || t === steps || t === startStep + 1) {
        const rate = (t - startStep) / ((performance.now() - tStart) / 1000);
        log(
          `step ${t}/${steps}  loss ${last.loss.toFixed(5)}  rec ${last.rec.toFixed(5)}  vq ${
            last.vq.toFixed(5)
          }  psnr ${last.psnr.toFixed(2)} dB  codes ${last.codesUsed}/${K}${
            last.restarted ? ` (${last.restarted} restarted)` : ""
          }${
            adversarial && t >= adversarial.start
              ? `  d ${last.d_loss.toFixed(4)} g_adv ${last.g_adv.toFixed(4)}`
              : ""
          }  lr ${last.lr.toExponential(2)}  ${rate.toFixed(2)} steps/s  eta ${
            fmtTime((steps - t) / rate)
          }`,
        );
      }
      if (evalEvery && t % evalEvery === 0 && t !== steps) {
        const e = await evaluate();
        if (e) log(`eval step ${t}: held-out PSNR ${e.psnr.toFixed(2)} dB (${e.images} images)`);
      }
      if (t % saveEvery === 0 || t === steps) {
        await trainer.save(ckptDir, { sources: sourceKey(train), adversarial });
      }
    }

    // Output.
    const e = await evaluate();
    const final = await model.readWeights();
    const meta: Record<string, string> = { steps: String(trainer.step) };
    if (e) meta.eval_psnr = e.psnr.toFixed(3);
    await saveTokenizer(out, config, final, meta);
    const secs = (performance.now() - tStart) / 1000;
    if (e) {
      log(
        `held-out PSNR ${
          e.psnr.toFixed(2)
        } dB (mean over ${e.images} images from ${held.length} sources never used in training; MSE ${
          e.mse.toExponential(3)
        })`,
      );
    } else log("no held-out images (--holdout 0 and no --eval-images): no PSNR to report");
    log(
      `wrote ${join(out, "config.json")} and ${
        join(out, "model.safetensors")
      } (${trainer.step} steps, ${fmtTime(secs)})`,
    );
    if (v.json) {
      console.log(JSON.stringify({
        out,
        steps: trainer.step,
        loss: last?.loss ?? null,
        train_psnr: last?.psnr ?? null,
        eval_psnr: e?.psnr ?? null,
        eval_images: e?.images ?? 0,
        codes_used: last?.codesUsed ?? null,
        seconds: +secs.toFixed(1),
      }));
    }
    (trainer.extension as PatchDiscriminator | null)?.release();
    trainer.release();
    model.release();
    return 0;
  },
};
