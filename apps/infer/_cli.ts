/**
 * Flags the inference commands share: the sampling choice (`generate`, `complete`) and the weight
 * dtype. Everything else comes from `@lvm/cli`.
 * @module
 */
import { enumFlag, floatFlag, nonNegativeInt, seedFlag } from "@lvm/cli";
import { DEFAULT_TOP_K } from "@lvm/sampler";
import type { SamplingChoice } from "@lvm/pipeline";

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

/** `--dtype f32|f16` (default f32). */
export function dtypeFlag(value: string | undefined): "f32" | "f16" {
  return enumFlag("dtype", value, ["f32", "f16"], "f32");
}
