/**
 * The LVM transformer as a {@link Trainable}: a LLaMA trained by next-token prediction on packed
 * rows (B, T) of a token-shard dataset (loss on every token, positions restarting in every row),
 * validated on the loader's stable hash split. Its checkpoint files are a Hugging Face model folder
 * (config.json + model.safetensors); its state is the loader position and the seeds.
 * @module
 */
import type { Gpu, Tensor } from "@lvm/gpu";
import { type LoaderState, TokenDataset, TokenLoader } from "@lvm/sentence";
import { Llama, type LlamaConfig } from "@lvm/transformer";
import { loadLlama, saveLlama } from "@lvm/transformer/fs";
import type { TrainConfig } from "./config.ts";
import { evaluateLoss, type LossEvalResult, maskedTargets } from "./evaluate.ts";
import type { MicroBatch, Trainable } from "./trainable.ts";

/** A LLaMA, its training loader and dataset, as the {@link Trainer} drives them. */
export class LlamaTrainable implements Trainable {
  readonly kind = "llama";
  readonly unit = "tokens";

  private constructor(
    readonly config: TrainConfig,
    readonly llama: Llama,
    readonly loader: TokenLoader,
    readonly dataset: TokenDataset,
  ) {}

  /**
   * Opens the run's dataset and model: weights from `weightsFrom` (a checkpoint being resumed),
   * else `config.init`, else a fresh init from `config.seed`; the loader at `loader` (else the
   * start).
   */
  static async open(
    gpu: Gpu,
    config: TrainConfig,
    from: { weights?: string; loader?: LoaderState } = {},
  ): Promise<LlamaTrainable> {
    const dataset = await openChecked(config);
    const dir = from.weights ?? config.init;
    let model: Llama;
    if (dir) {
      model = await loadLlama(gpu, dir);
      if (!sameConfig(model.config, config.model)) {
        model.release();
        throw new RangeError(
          from.weights
            ? `${dir}: config.json does not match the model in trainer_state.json`
            : `${dir}: its config.json does not match TrainConfig.model ` +
              `(${JSON.stringify(model.config)} vs ${JSON.stringify(config.model)})`,
        );
      }
    } else {
      model = Llama.init(gpu, config.model, { seed: config.seed });
    }
    const loader = await TokenLoader.open(dataset, {
      ...loaderOptions(config),
      state: from.loader,
    });
    return new LlamaTrainable(config, model, loader, dataset);
  }

  get params(): ReadonlyMap<string, Tensor> {
    return this.llama.params;
  }
  get grads(): ReadonlyMap<string, Tensor> {
    return this.llama.grads;
  }
  /** The parameter `name`. */
  param(name: string): Tensor {
    return this.llama.param(name);
  }

  async forwardBackward(micro: MicroBatch): Promise<{ loss: Tensor; items: number }> {
    const { batch: B, seq: T } = this.config;
    const b = await this.loader.next();
    if (!b) throw new RangeError(`${this.dataset.dir}: the training split ran out of tokens`);
    const { loss } = this.llama.forward(
      { B, T, inputs: b.inputs, targets: maskedTargets(b.targets, b.mask) },
      { train: true, gradScale: 1 / micro.count },
    );
    this.llama.backward({ accumulate: micro.index > 0 });
    return { loss: loss!, items: B * T };
  }

  /**
   * Validation: mean loss and perplexity over packed rows (B, T of the run) of the validation
   * split, at most `maxBatches` batches (default `config.evalBatches`; 0 = all). Null when the
   * split is empty.
   */
  async evaluate(maxBatches = this.config.evalBatches): Promise<LossEvalResult | null> {
    const c = this.config;
    return await evaluateLoss(this.llama, this.dataset, {
      seq: c.seq,
      batch: c.batch,
      split: "val",
      valFraction: c.valFraction,
      splitSeed: c.splitSeed,
      maxBatches: maxBatches || undefined,
    });
  }

  async saveModel(dir: string): Promise<void> {
    await saveLlama(this.llama, dir);
  }

  /** The loader position and the seeds (`loader`, `rng` of trainer_state.json). */
  state(): { loader: LoaderState; rng: { seed: number; splitSeed: number } } {
    return {
      loader: this.loader.state(),
      rng: { seed: this.config.seed, splitSeed: this.config.splitSeed },
    };
  }

  release(): void {
    this.llama.release();
  }
}

function loaderOptions(c: TrainConfig) {
  return {
    rowTokens: c.seq,
    batchRows: c.batch,
    packing: "packed" as const,
    split: "train" as const,
    valFraction: c.valFraction,
    splitSeed: c.splitSeed,
    seed: c.seed,
  };
}

/**
 * Opens the dataset and checks every shard (type, size, CRC-32, token ids; streamed in bounded
 * memory) before step 1, so a corrupt shard stops the run at once instead of hours in.
 */
async function openChecked(c: TrainConfig): Promise<TokenDataset> {
  const ds = await TokenDataset.open(c.data);
  await ds.verify();
  if (ds.layout.vocabSize > c.model.vocab) {
    throw new RangeError(
      `${c.data}: the dataset's vocabulary (${ds.layout.vocabSize} ids) does not fit the model's ` +
        `${c.model.vocab}; train a model with vocab >= ${ds.layout.vocabSize}`,
    );
  }
  return ds;
}

/** Field-by-field equality of two model configs (key order aside). */
function sameConfig(a: LlamaConfig, b: LlamaConfig): boolean {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]) as Set<keyof LlamaConfig>;
  return [...keys].every((k) => a[k] === b[k]);
}
