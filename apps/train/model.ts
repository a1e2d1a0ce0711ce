/**
 * `deno task train model`: trains an LVM transformer on a token-shard dataset with @lvm/train
 * (AdamW, warmup + cosine, gradient accumulation, global-norm clipping, all on the GPU), writing
 * checkpoints in Hugging Face layout and a loss chart; `--resume` continues a run exactly; Ctrl-C
 * or SIGTERM saves and exits; one run per --out at a time. The run's setup and loop are
 * @lvm/train's (`resolveModelConfig`, `checkResume`, `checkNewRun`, `trainLlamaRun`).
 * @module
 */
import { getGpu } from "@lvm/gpu";
import { PRESETS } from "@lvm/transformer";
import {
  checkNewRun,
  checkResume,
  clearRun,
  latestCheckpoint,
  makeTrainConfig,
  resolveModelConfig,
  type ResumeOverrides,
  Trainer,
  trainLlamaRun,
} from "@lvm/train";
import {
  asUsage,
  type Command,
  enumFlag,
  flagOptions,
  floatFlag,
  intFlag,
  parseFlags,
  UsageError,
} from "@lvm/cli";

const USAGE = `usage: deno task train model --data DIR --out DIR --steps N [options]
       deno task train model --out DIR --resume [--steps N] [--lr X]

Trains a LLaMA decoder on visual sentences (packed rows of --seq tokens, loss on every token,
positions restarting at 0 in every row) with the official recipe: AdamW (b1 0.9, b2 0.95, eps 1e-8,
weight decay 0.1), global-norm clip 1.0, linear warmup then cosine decay to --min-lr, gradient
accumulation. Checkpoints go to OUT/checkpoint-STEP/ (config.json + model.safetensors, loadable by
\`deno task infer\` and transformers, plus optimizer.safetensors and trainer_state.json) and
OUT/latest names the newest; OUT/loss.png charts the training and validation loss. Ctrl-C
(or SIGTERM) finishes the current step, saves a checkpoint and exits (130; 143 after SIGTERM).
A checkpoint is never written from a diverged state: before each save the losses, gradient norms
and weights must be finite, else the run stops (exit 1) naming the last good checkpoint. One run
at a time per --out: OUT/train.lock names the process holding it (a dead one's lock is taken over);
a second run is refused (exit 1).

model (one of; default --preset tiny):
  --preset NAME         ${Object.keys(PRESETS).join(", ")}; the vocabulary is the dataset's
                        (its codes + reserved ids: 8292 for LVM data, as the presets)
  --preset-vocab        keep the preset's own vocabulary (8292) even when the dataset's differs
  --config FILE         a Hugging Face LLaMA config.json
  --init DIR            start from a saved model (HF folder, checkpoint or run folder): its
                        config.json and weights

data and batch:
  --data DIR            token-shard dataset (\`deno task train dataset\`)
  --batch B             rows per micro-batch (default 1)
  --seq T               tokens per row (default min(4096, the model's positions))
  --grad-accum K        micro-batches per optimizer step (default 1); tokens/step = B*T*K
  --val-fraction F      sentences held out for validation (default 0.01)
  --split-seed S        seed of the train/validation split (default 0)

optimization:
  --steps N             optimizer steps (required for a new run)
  --lr X                peak learning rate (default 1.5e-4, official)
  --min-lr X            floor of the decay (default lr/5: official 1.5e-4 -> 3e-5)
  --warmup N            linear warmup steps from 0 (default min(8000, steps/10))
  --decay-steps N       step where the decay reaches --min-lr (default --steps)
  --schedule KIND       cosine (default) | linear | constant
  --weight-decay X      default 0.1          --decay all|matrices   which params decay (all)
  --beta1 X, --beta2 X  default 0.9, 0.95    --eps X                default 1e-8
  --clip X              global-norm clip (default 1.0; 0 = off)
  --seed N              weight init and data order (default 0)

cadence and files:
  --out DIR             run folder (required)
  --log-every N         steps per progress line (default 10); the loss is read back only then
  --eval-every N        steps between validation passes (default 500; 0 = never)
  --eval-batches N      batches per validation pass (default 8; 0 = the whole split)
  --save-every N        steps between checkpoints (default 500; 0 = only at the end)
  --keep N              checkpoints kept (default 3)
  --json-log FILE       also append one JSON object per progress/eval/save line to FILE
  --resume              continue the run in --out from its latest checkpoint (only --steps,
                        the cadence flags, --data, --json-log and the learning rate may change:
                        --lr X sets a new peak (the floor keeps its ratio unless --min-lr),
                        --warmup N a new warmup, e.g. after a divergence; --decay-steps N
                        moves the decay's end, e.g. to stretch it over added --steps)
  --overwrite           delete --out's checkpoints and start over
  --quiet               no progress lines`;

const OPTIONS = flagOptions({
  string: `data out preset config init batch seq grad-accum val-fraction split-seed steps lr
    min-lr warmup decay-steps schedule weight-decay decay beta1 beta2 eps clip seed log-every eval-every
    eval-batches save-every keep json-log`,
  boolean: "preset-vocab resume overwrite quiet",
});

const SCHEDULES = ["cosine", "linear", "constant"] as const;

/** The `model` subcommand. */
export const model: Command = {
  summary: "train the transformer on a token dataset (AdamW, warmup+cosine, resumable)",
  usage: USAGE,
  async run(args: string[]): Promise<number> {
    const parsed = parseFlags({ args, options: OPTIONS, allowPositionals: false });
    const v = parsed.values as Record<string, string | boolean | undefined>;
    const str = (k: string) => v[k] as string | undefined;
    const out = str("out");
    if (!out) throw new UsageError("--out DIR is required (the run folder)");
    const int = (flag: string, min: number) =>
      str(flag) === undefined ? undefined : intFlag(flag, str(flag), 0, { min });
    // A number flag >= 0 (learning rates, betas, decay, clip), or undefined when not given.
    const num = (flag: string) => floatFlag(flag, str(flag), undefined, { min: 0 });
    const cadence: ResumeOverrides = {
      steps: int("steps", 1),
      logEvery: int("log-every", 1),
      evalEvery: int("eval-every", 0),
      evalBatches: int("eval-batches", 0),
      saveEvery: int("save-every", 0),
      keep: int("keep", 1),
    };
    const existing = await latestCheckpoint(out);
    const gpu = await getGpu();
    const say = (s: string) => v.quiet || console.error(s);
    const warn = (s: string) => console.error(`[train] ${s}`);

    let open: () => Promise<Trainer>;
    if (v.resume) {
      const given = Object.keys(v).filter((k) => v[k] !== undefined);
      const from = await checkResume(out, existing, cadence.steps, given);
      open = async () => {
        const trainer = await Trainer.resume(gpu, from, {
          ...cadence,
          data: str("data"),
          lr: num("lr"),
          minLr: num("min-lr"),
          warmup: int("warmup", 0),
          decaySteps: int("decay-steps", 0),
        });
        say(`[train] resumed ${from} at step ${trainer.step} (${trainer.tokens} tokens trained)`);
        return trainer;
      };
    } else {
      await checkNewRun(out, existing, !!v.overwrite);
      const data = str("data");
      if (!data) throw new UsageError("--data DIR is required (a token-shard dataset)");
      if (cadence.steps === undefined) throw new UsageError("--steps N is required");
      const arch = await resolveModelConfig({
        preset: str("preset"),
        presetVocab: !!v["preset-vocab"],
        config: str("config"),
        init: str("init"),
      }, data);
      const lr = num("lr");
      const config = asUsage(() =>
        makeTrainConfig({
          data,
          ...arch,
          seed: int("seed", -(2 ** 31)),
          batch: int("batch", 1),
          seq: int("seq", 1),
          gradAccum: int("grad-accum", 1),
          lr,
          minLr: num("min-lr"),
          warmup: int("warmup", 0),
          decaySteps: int("decay-steps", 0),
          scheduleKind: enumFlag("schedule", str("schedule"), SCHEDULES, undefined),
          optimizer: {
            weightDecay: num("weight-decay"),
            decay: enumFlag("decay", str("decay"), ["all", "matrices"], undefined),
            beta1: num("beta1"),
            beta2: num("beta2"),
            eps: num("eps"),
            clip: num("clip"),
          },
          valFraction: num("val-fraction"),
          splitSeed: int("split-seed", -(2 ** 31)),
          ...cadence,
          steps: cadence.steps!,
        })
      );
      open = async () => {
        if (existing) await clearRun(out);
        return await Trainer.create(gpu, config);
      };
    }
    const label = v.resume ? "train model --resume" : "train model";
    const jsonLog = str("json-log");
    const end = await trainLlamaRun(out, label, open, { jsonLog, say, warn });
    const { result, tokens, exitCode } = end;
    if (result.interrupted) {
      console.error(
        `[train] interrupted at step ${result.step}; checkpoint ${result.checkpoint}; continue ` +
          `with the same --out and --resume`,
      );
      return exitCode;
    }
    console.log(
      `trained ${result.step} steps (${tokens} tokens), last loss ${
        result.loss.toFixed(4)
      }; model: ${result.checkpoint}`,
    );
    return 0;
  },
};
