/**
 * What the inference commands share: the sampling choice (`generate`, `complete`), the weight
 * dtype, the flags of the token-list commands (`generate`, `score`) and of the tokenizer commands
 * (`encode`, `decode`), and loading the transformer with progress lines. Everything else comes from
 * `@lvm/cli`.
 * @module
 */
import { enumFlag, floatFlag, loadProgress, nonNegativeInt, seedFlag } from "@lvm/cli";
import { getGpu } from "@lvm/gpu";
import { DEFAULT_TOP_K } from "@lvm/sampler";
import type { LvmPipeline, SamplingChoice } from "@lvm/pipeline";
import { WEIGHT_DTYPES, type WeightDType } from "@lvm/transformer";
import { loadPipeline } from "@lvm/pipeline/fs";

/** `parseArgs` options of the commands that run the transformer on a token list (`generate`, `score`). */
export const MODEL_TOKENS_OPTIONS = {
  model: { type: "string" },
  tokens: { type: "string" },
  json: { type: "boolean", default: false },
  dtype: { type: "string" },
} as const;

/** `parseArgs` options of the commands that load only the VQGAN (`encode`, `decode`). */
export const TOKENIZER_OPTIONS = {
  tokenizer: { type: "string" },
  resolution: { type: "string" },
} as const;

/**
 * The transformer at `model` with its weights in `dtype`, loaded after a line naming it and the
 * adapter, with a progress line per tensor, on `log`.
 */
export async function loadModel(
  model: string,
  dtype: WeightDType,
  log: (line: string) => unknown,
): Promise<LvmPipeline> {
  log(`loading ${model} (${dtype}) on ${(await getGpu()).describe()}`);
  return await loadPipeline({ model, dtype, onTensor: loadProgress(log) });
}

/** `parseArgs` options of the sampling flags. */
export const SAMPLING_OPTIONS = {
  greedy: { type: "boolean", default: false },
  temperature: { type: "string" },
  "top-k": { type: "string" },
  "top-p": { type: "string" },
  seed: { type: "string" },
  "cpu-sampling": { type: "boolean", default: false },
} as const;

/** Usage lines of {@link SAMPLING_OPTIONS}. */
export const SAMPLING_USAGE = `  --greedy              arg-max instead of sampling
  --temperature T       softmax temperature (default 1)
  --top-k K             keep the K most likely ids (default ${DEFAULT_TOP_K}; 0 = all)
  --top-p P             nucleus sampling threshold (default 1 = off)
  --seed S              sampling seed (default 0)
  --cpu-sampling        pick each id on the CPU (default: on the GPU, chained, when greedy or top-p 1)`;

/** The sampling choice of parsed {@link SAMPLING_OPTIONS}. */
export function samplingChoice(v: {
  greedy?: boolean;
  temperature?: string;
  "top-k"?: string;
  "top-p"?: string;
  seed?: string;
  "cpu-sampling"?: boolean;
}): SamplingChoice {
  return {
    greedy: v.greedy ?? false,
    temperature: floatFlag("temperature", v.temperature, 1, { min: 1e-6 }),
    topK: nonNegativeInt("top-k", v["top-k"], DEFAULT_TOP_K),
    topP: floatFlag("top-p", v["top-p"], 1, { min: 1e-9, max: 1 }),
    seed: seedFlag("seed", v.seed),
    cpuSampling: v["cpu-sampling"] ?? false,
  };
}

/**
 * `--dtype f32|f16|q8|q4` (default f32): the model's matrices on the GPU as f32, f16, or GGML
 * Q8_0 / Q4_0 blocks quantized while loading.
 */
export function dtypeFlag(value: string | undefined): WeightDType {
  return enumFlag("dtype", value, WEIGHT_DTYPES, "f32");
}
