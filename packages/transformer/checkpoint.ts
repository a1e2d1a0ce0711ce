/**
 * Hugging Face LLaMA checkpoints: `config.json` + `model.safetensors`, or shards behind
 * `model.safetensors.index.json`; F32, F16, BF16 or F64 tensors (converted to f32 on load); tied or
 * untied; GQA. This is how the
 * released LVM 7B is distributed, and how our own models are saved (so they load in other LLaMA
 * tooling too).
 *
 * Loading checks every tensor's presence and shape against config.json from the headers alone,
 * before any upload, then streams tensor by tensor (one tensor in host memory at a time). This
 * module works on bytes and `TensorSource`s (it runs in a browser); `@lvm/transformer/fs` reads
 * and writes model directories (`readConfig`, `loadLlama`, `saveLlama`).
 * @module
 */
import type { Gpu } from "@lvm/gpu";
import { GgufLlamaSource, type StDType, type TensorSource } from "@lvm/weights";
import { ConfigError, configFromHf, type LlamaConfig, LM_HEAD, paramSpecs } from "./config.ts";
import { Llama, type ModelOptions, quantTypeOf } from "./model.ts";

/** A checkpoint whose tensors do not match its config: names the tensor and the file. */
export class LlamaCheckpointError extends Error {
  override name = "LlamaCheckpointError";
}

/**
 * Parses the text of a Hugging Face `config.json` (`path` names it in errors) into a checked
 * {@link LlamaConfig}; `@lvm/transformer/fs`'s `readConfig(dir)` reads it from a model directory.
 */
export function parseHfConfig(text: string, path = "config.json"): LlamaConfig {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`${path}: not valid JSON: ${(e as Error).message}`);
  }
  if (!json || typeof json !== "object" || Array.isArray(json)) {
    throw new ConfigError(`${path}: expected a JSON object`);
  }
  return configFromHf(json as Record<string, unknown>, path);
}

/** Tensors a LLaMA checkpoint may hold that this model does not use (HF buffers, a tied copy). */
function ignorable(name: string, config: LlamaConfig): boolean {
  return name.endsWith(".rotary_emb.inv_freq") || (config.tieEmbeddings && name === LM_HEAD);
}

/** Tensor dtypes a checkpoint may store (all read as f32; F64 narrows, F16/BF16 widen exactly). */
const FLOAT_DTYPES: readonly StDType[] = ["F32", "F16", "BF16", "F64"];
const FLOAT_NAMES = `${FLOAT_DTYPES.slice(0, -1).join(", ")} or ${FLOAT_DTYPES.at(-1)}`;

/**
 * Checks that `source` holds exactly the tensors of `config` (names, shapes, float dtypes), from
 * the headers. Throws a {@link LlamaCheckpointError} naming the first problem's tensor and file.
 */
export function checkTensors(source: TensorSource, config: LlamaConfig): void {
  const specs = paramSpecs(config);
  for (const { name, shape } of specs) {
    if (!source.has(name)) {
      throw new LlamaCheckpointError(
        `${source.path}: missing tensor "${name}" (expected [${shape}] for this config.json)`,
      );
    }
    const info = source.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new LlamaCheckpointError(
        `${source.path}: tensor "${name}" has shape [${info.shape}], expected [${shape}] from config.json`,
      );
    }
    if (!FLOAT_DTYPES.includes(info.dtype)) {
      throw new LlamaCheckpointError(
        `${source.path}: tensor "${name}" is ${info.dtype}, expected ${FLOAT_NAMES}`,
      );
    }
  }
  const known = new Set(specs.map((s) => s.name));
  const extra = source.names().filter((n) => !known.has(n) && !ignorable(n, config));
  if (extra.length) {
    throw new LlamaCheckpointError(
      `${source.path}: unexpected tensor${extra.length > 1 ? "s" : ""} ${
        extra.slice(0, 3).map((n) => `"${n}"`).join(", ")
      }${
        extra.length > 3 ? ` (+${extra.length - 3} more)` : ""
      } not in a LLaMA of this config.json`,
    );
  }
}

/** Options of {@link loadLlamaFrom} (and `@lvm/transformer/fs`'s `loadLlama`). */
export interface LoadOptions extends ModelOptions {
  /** Called after each tensor is uploaded (progress output). */
  onTensor?: (name: string, index: number, total: number) => void;
}

/**
 * Builds a {@link Llama} of `config` on the GPU from `source` (any `TensorSource`: a safetensors
 * reader over bytes, a sharded checkpoint, a torch file), tensor by tensor, after checking every
 * tensor's presence and shape from the headers ({@link checkTensors}). BF16/F16/F64 tensors are
 * converted to f32 on load; `dtype: "f16"` keeps the matrices at 16 bits on the GPU, `"q8"`/`"q4"`
 * block-quantizes each one on the host before the next tensor is read (host memory holds one f32
 * tensor beyond the packed model). From a LLaMA GGUF (@lvm/weights' `GgufLlamaSource`), a matrix
 * stored in the very block type the dtype asks for (Q8_0 for q8, Q4_0 for q4) is uploaded as its
 * stored blocks, bit for bit (rows already in HF order); any other is dequantized and converted as
 * above. `source` is left open. `@lvm/transformer/fs`'s `loadLlama(gpu, dir)` does this for a model directory.
 */
export async function loadLlamaFrom(
  gpu: Gpu,
  config: LlamaConfig,
  source: TensorSource,
  options: LoadOptions = {},
): Promise<Llama> {
  checkTensors(source, config);
  const model = Llama.empty(gpu, config, options);
  const specs = paramSpecs(config);
  const want = quantTypeOf(model.dtype);
  // One f32 buffer for every tensor, sized for the largest: the 7B's 291 tensors would otherwise
  // leave ~27 GB of f32 arrays for the garbage collector, of which it keeps some resident.
  const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
  const scratch = new Float32Array(Math.max(...specs.map((s) => size(s.shape))));
  for (let i = 0; i < specs.length; i++) {
    const { name, shape } = specs[i];
    if (want && source instanceof GgufLlamaSource && source.ggmlType(name) === want) {
      const raw = await source.rawTensor(name);
      model.setQuantParam(name, want, shape, raw.bytes);
    } else model.setParam(name, await source.readF32(name, scratch.subarray(0, size(shape))));
    await gpu.settle(); // one copy of the weights in host memory, not two
    options.onTensor?.(name, i, specs.length);
  }
  return model;
}
