/**
 * Loading from already-opened sources, with no file system: a config (the parsed JSON of
 * `config.json`) and a {@link TensorSource} (a safetensors or `torch.save` reader over bytes, a
 * sharded checkpoint...). A browser fetches the bytes and opens them; `@lvm/pipeline/fs` opens
 * folders. The model's counterpart is `@lvm/transformer`'s `loadLlamaFrom(gpu, config, source)`
 * (with `parseHfConfig(text)` for the config).
 * @module
 */
import type { Gpu } from "@lvm/gpu";
import type { TensorSource } from "@lvm/weights";
import { createTokenizer, parseConfig, readWeights, type VqganTokenizer } from "@lvm/tokenizer";

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
