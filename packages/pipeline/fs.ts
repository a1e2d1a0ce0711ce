/**
 * @lvm/pipeline/fs: the pipeline from folders on disk (Deno/Node file access), the adapter beside
 * the file-free main module.
 *
 * @example
 * ```ts ignore
 * import { loadPipeline } from "@lvm/pipeline/fs";
 * import { loadImage, savePng } from "@lvm/image/fs";
 * const lvm = await loadPipeline({ model: "models/lvm-7b", tokenizer: "models/vqgan", dtype: "f16" });
 * const frames = await Promise.all(["f1.png", "f2.png", "f3.png"].map((p) => loadImage(p)));
 * const { images } = await lvm.complete(frames, { count: 1, seed: 0 });
 * await savePng("next.png", images[0]);
 * lvm.release();
 * ```
 * @module
 */
import "@lvm/gpu/pin"; // lavapipe: its compute threads one per core
import { getGpu, type Gpu } from "@lvm/gpu";
import type { LoadOptions } from "@lvm/transformer";
import { loadLlama, readConfig } from "@lvm/transformer/fs";
import type { VqganTokenizer } from "@lvm/tokenizer";
import { loadTokenizer } from "@lvm/tokenizer/fs";
import { LvmPipeline } from "./pipeline.ts";

/** Options of {@link loadPipeline}. */
export interface LoadPipelineOptions {
  /** Hugging Face LLaMA folder (config.json + model.safetensors or shards). */
  model?: string;
  /** VQGAN tokenizer folder (config.json + safetensors or pytorch_model.bin). */
  tokenizer?: string;
  /**
   * Weight storage of the model's matrices on the GPU (default f32): f16, or block-quantized
   * q8 (Q8_0) / q4 (Q4_0), quantized tensor by tensor while loading.
   */
  dtype?: LoadOptions["dtype"];
  /** Called after each model tensor is uploaded (progress output). */
  onTensor?: LoadOptions["onTensor"];
  /** Tokenizer images per GPU batch. */
  batchSize?: number;
  /** Tokenizer input resolution (diffusers configs do not record it). */
  resolution?: number;
  /** The device context (default: the process's). */
  gpu?: Gpu;
}

/**
 * Loads a pipeline from folders: the tokenizer first, then (after checking from config.json that
 * the model generates every code the tokenizer has) the model. Either may be left out.
 */
export async function loadPipeline(options: LoadPipelineOptions): Promise<LvmPipeline> {
  const gpu = options.gpu ?? (await getGpu());
  let tokenizer: VqganTokenizer | null = null;
  try {
    if (options.tokenizer !== undefined) {
      tokenizer = await loadTokenizer(options.tokenizer, {
        gpu,
        batchSize: options.batchSize,
        resolution: options.resolution,
      });
    }
    if (options.model !== undefined && tokenizer) {
      const config = await readConfig(options.model); // before minutes of loading
      if (tokenizer.codebookSize > config.imageCodes) {
        throw new RangeError(
          `tokenizer ${options.tokenizer} has ${tokenizer.codebookSize} codes but model ` +
            `${options.model} generates only ${config.imageCodes} image codes`,
        );
      }
    }
    const model = options.model === undefined
      ? null
      : await loadLlama(gpu, options.model, { dtype: options.dtype, onTensor: options.onTensor });
    return new LvmPipeline({
      tokenizer,
      model,
      modelName: options.model,
      tokenizerName: options.tokenizer,
    });
  } catch (e) {
    tokenizer?.release();
    throw e;
  }
}
export * from "./evaluate.ts";
