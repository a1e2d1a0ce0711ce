/**
 * Loading from already-opened sources, with no file system: a config (the parsed JSON of
 * `config.json`) and a {@link TensorSource} (a safetensors or `torch.save` reader over bytes, a
 * sharded checkpoint...). A browser fetches the bytes and opens them; `@lvm/pipeline/fs` opens
 * folders.
 * @module
 */
import type { Gpu } from "@lvm/gpu";
import type { TensorSource } from "@lvm/weights";
import {
  checkTensors,
  configFromHf,
  type LlamaConfig,
  Llama,
  type LoadOptions,
  paramSpecs,
} from "@lvm/transformer";
import { createTokenizer, parseConfig, readWeights, type VqganTokenizer } from "@lvm/tokenizer";

/**
 * A LLaMA from a config (a {@link LlamaConfig} or Hugging Face `config.json` fields) and a tensor
 * source, checked against each other from the headers before any upload, then uploaded tensor by
 * tensor (as `loadLlama` does for a folder). The source stays open: close it when done.
 */
export async function llamaFromSource(
  gpu: Gpu,
  config: LlamaConfig | Record<string, unknown>,
  source: TensorSource,
  options: LoadOptions = {},
): Promise<Llama> {
  const c = "hidden" in config && "imageCodes" in config
    ? config as LlamaConfig
    : configFromHf(config as Record<string, unknown>, `${source.path} config`);
  checkTensors(source, c);
  const model = Llama.empty(gpu, c, options);
  const specs = paramSpecs(c);
  for (let i = 0; i < specs.length; i++) {
    model.setParam(specs[i].name, await source.readF32(specs[i].name));
    await gpu.settle(); // one copy of the weights in host memory, not two
    options.onTensor?.(specs[i].name, i, specs.length);
  }
  return model;
}

/** Options of {@link tokenizerFromSource}. */
export interface TokenizerSourceOptions {
  /** The device context (default: the process's). */
  gpu?: Gpu;
  /** Images per GPU batch (default: as many as fit, at most 16). */
  batchSize?: number;
  /** Input resolution (diffusers configs do not record it). */
  resolution?: number;
}

/**
 * A VQGAN tokenizer from its `config.json` fields (open-muse or diffusers) and a tensor source
 * (open-muse or diffusers key names). The source stays open: close it when done.
 */
export async function tokenizerFromSource(
  config: unknown,
  source: TensorSource,
  options: TokenizerSourceOptions = {},
): Promise<VqganTokenizer> {
  const c = parseConfig(config, `${source.path} config`, options.resolution);
  return createTokenizer(c, await readWeights(source, c), options);
}
