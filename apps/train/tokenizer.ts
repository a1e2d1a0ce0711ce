/**
 * `deno task train tokenizer`: trains a VQGAN tokenizer (@lvm/tokenizer) from images, frame folders,
 * GIFs or videos with @lvm/train's Trainer (the loop `train model` uses too); progress on stderr;
 * resumable checkpoints; the output directory loads with `deno task infer encode/decode
 * --tokenizer DIR` and `loadTokenizer(DIR)`. The run's setup and loop are @lvm/train's
 * (`findVqganCheckpoint`, `resolveVqganConfig`, `loadVqganImages`, `trainVqganRun`).
 * @module
 */
import { join } from "node:path";
import { checkBatchFits, TRAIN_DEFAULTS, VQGAN_PRESETS, type VqganConfig } from "@lvm/tokenizer";
import { DEFAULT_MAX_FRAMES, type TokenizerFiles } from "@lvm/tokenizer/fs";
import { getGpu } from "@lvm/gpu";
import {
  checkSources,
  findVqganCheckpoint,
  loadVqganImages,
  makeVqganRunConfig,
  resolveVqganConfig,
  resumedVqganRun,
  trainVqganRun,
  vqganConfig,
  type VqganRunConfig,
} from "@lvm/train";
import {
  asUsage,
  type Command,
  enumFlag,
  flagOptions,
  intFlag,
  nonNegativeFloat,
  parseFlags,
  UsageError,
} from "@lvm/cli";

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
  --eval-images PATH... held-out evaluation sources (same forms); default: every --holdout-th source
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

const OPTIONS = flagOptions({
  string: `holdout max-side max-frames preset config init steps out batch lr warmup recon
    restart-every clip weight-decay seed save-every keep json-log eval-every log-every adv-start
    adv-weight adv-channels`,
  boolean: "resume json quiet",
  multiple: "images eval-images",
});

/** `deno task train tokenizer`. */
export const tokenizer: Command = {
  summary: "train a VQGAN image tokenizer from images, frame folders, GIFs or videos",
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const parsed = parseFlags({ args, options: OPTIONS, allowPositionals: true, tokens: true });
    const { values: v } = parsed;
    // `--images A B C` (as the issue spells it): a bare word is one more path of the last
    // --images or --eval-images before it (so `--eval-images A B` holds out both A and B).
    let last: "images" | "eval-images" | null = null;
    for (const tok of parsed.tokens) {
      if (tok.kind === "option" && (tok.name === "images" || tok.name === "eval-images")) {
        last = tok.name;
      } else if (tok.kind === "positional") {
        if (last === null) throw new UsageError(`unexpected argument ${tok.value}`);
        v[last] = [...(v[last] ?? []), tok.value];
      }
    }
    if (!v.out) throw new UsageError("--out DIR is required");
    if (v.steps === undefined) throw new UsageError("--steps N is required");
    const steps = intFlag("steps", v.steps, 0, { min: 1 });
    const out = v.out;
    const log = (s: string) => v.quiet || console.error(s);
    const cadence = {
      saveEvery: intFlag("save-every", v["save-every"], 100, { min: 1 }),
      evalEvery: intFlag("eval-every", v["eval-every"], 0, { min: 0 }),
      logEvery: intFlag("log-every", v["log-every"], 10, { min: 1 }),
      keep: intFlag("keep", v.keep, 1, { min: 1 }),
    };

    // Config: from the checkpoint when resuming, else from the flags.
    const ckptDir = join(out, "checkpoints");
    const resume = v.resume ? await findVqganCheckpoint(ckptDir) : null;
    if (v.resume && !resume) log(`no checkpoint in ${ckptDir}: starting a new run`);
    if (v.init && resume) log(`--init ${v.init} ignored: the checkpoint holds the weights`);
    let run: VqganRunConfig, config: VqganConfig, init: TokenizerFiles | null = null;
    if (resume) {
      if (steps <= resume.step) {
        throw new UsageError(`--steps ${steps}: the checkpoint is already at step ${resume.step}`);
      }
      run = resumedVqganRun(resume, {
        ...cadence,
        steps,
        lr: nonNegativeFloat("lr", v.lr, undefined),
        warmup: intFlag("warmup", v.warmup, undefined, { min: 0 }),
      });
      config = vqganConfig(run);
    } else {
      if (!v.images?.length) throw new UsageError("--images PATH is required");
      ({ config, init } = await resolveVqganConfig(v)); // --preset, --config or --init
      const recon = enumFlag("recon", v.recon, ["l1", "l2"], "l2");
      const seed = intFlag("seed", v.seed, 0, { min: 0 });
      if (v["adv-start"] === undefined && (v["adv-weight"] ?? v["adv-channels"]) !== undefined) {
        throw new UsageError("--adv-weight / --adv-channels need --adv-start N");
      }
      const adversarial = v["adv-start"] === undefined ? null : {
        start: intFlag("adv-start", v["adv-start"], 1, { min: 1 }),
        weight: nonNegativeFloat("adv-weight", v["adv-weight"], 0.1),
        channels: intFlag("adv-channels", v["adv-channels"], 64, { min: 1 }),
        seed,
      };
      const D = TRAIN_DEFAULTS;
      run = makeVqganRunConfig({
        config,
        steps,
        batch: intFlag("batch", v.batch, D.batchSize, { min: 1 }),
        lr: nonNegativeFloat("lr", v.lr, D.lr),
        warmup: intFlag("warmup", v.warmup, D.warmup, { min: 0 }),
        weightDecay: nonNegativeFloat("weight-decay", v["weight-decay"], D.weightDecay),
        clip: nonNegativeFloat("clip", v.clip, D.clip),
        recon,
        restartEvery: intFlag("restart-every", v["restart-every"], D.restartEvery, { min: 0 }),
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
    const images = {
      images: v.images,
      evalImages: v["eval-images"],
      maxSide: intFlag("max-side", v["max-side"], 4 * R, { min: R }),
      maxFrames: intFlag("max-frames", v["max-frames"], DEFAULT_MAX_FRAMES, { min: 0 }),
      holdout: intFlag("holdout", v.holdout, 8, { min: 0 }),
    };

    // The batch must fit the adapter: checked before the data is loaded.
    const gpu = await getGpu();
    const limit = gpu.limits.maxStorageBufferBindingSize;
    asUsage(() => checkBatchFits(config, run.batch, limit, "--batch"), Error);
    const { train, held } = await loadVqganImages(images, log);
    checkSources(run, resume, train);

    const setup = { run, train, held, resume, init };
    const warn = (s: string) => console.error(s);
    const end = await trainVqganRun(gpu, out, setup, { jsonLog: v["json-log"], log, warn });
    if (end.result.interrupted) {
      console.error(
        `interrupted at step ${end.result.step}; checkpoint ${end.result.checkpoint}; continue ` +
          `with the same --out, --images and --resume`,
      );
      return end.exitCode;
    }
    if (v.json) console.log(JSON.stringify(end.summary));
    return 0;
  },
};
