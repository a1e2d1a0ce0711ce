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
import {
  GgufLlamaSource,
  QK,
  quantize,
  quantizedBytes,
  type QuantType,
  type StDType,
  type TensorSource,
  toF32,
} from "@lvm/weights";
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

/**
 * Quantizes matrix `name` of `source` as `type` into `out`, converting its stored values to f32
 * a few rows at a time (~4 MB), so no f32 copy of the whole tensor is made: the same blocks as
 * quantizing all of its f32 values at once (blocks never straddle rows).
 */
async function quantizeRows(
  source: TensorSource,
  name: string,
  type: QuantType,
  shape: readonly number[],
  out: Uint8Array,
  scratch: LoadScratch,
): Promise<Uint8Array> {
  const [N, K] = shape;
  const raw = await source.readRaw(name, scratch.raw(source.info(name).byteLength));
  const { dtype } = source.info(name);
  const eb = raw.length / (N * K); // stored bytes per value
  const rows = Math.max(1, Math.floor(2 ** 20 / K));
  const chunk = scratch.f32(Math.min(rows, N) * K);
  for (let r0 = 0; r0 < N; r0 += rows) {
    const n = Math.min(rows, N - r0);
    const x = toF32(
      dtype,
      raw.subarray(r0 * K * eb, (r0 + n) * K * eb),
      `${source.path}: tensor "${name}"`,
      chunk.subarray(0, n * K),
    );
    quantize(type, x, out.subarray(quantizedBytes(type, r0 * K)));
  }
  return out;
}

/**
 * Host buffers a loader reuses from tensor to tensor, each grown to the largest request: the
 * stored bytes of a tensor (`raw`), f32 values (`f32`) and quantized blocks (`blocks`). Without
 * them every tensor's arrays wait for the garbage collector (~0.5 GB of the 7B's peak at q4, ~27
 * GB of f32 arrays over its 291 tensors at f16).
 */
export class LoadScratch {
  #raw = new Uint8Array(0);
  #f32 = new Float32Array(0);
  #blocks = new Uint8Array(0);
  /** Bytes held now. */
  get bytes(): number {
    return this.#raw.byteLength + this.#f32.byteLength + this.#blocks.byteLength;
  }
  /** `n` bytes for a tensor's stored bytes. */
  raw(n: number): Uint8Array {
    if (this.#raw.length < n) this.#raw = new Uint8Array(n);
    return this.#raw.subarray(0, n);
  }
  /** `n` floats. */
  f32(n: number): Float32Array {
    if (this.#f32.length < n) this.#f32 = new Float32Array(n);
    return this.#f32.subarray(0, n);
  }
  /** `n` bytes for quantized blocks. */
  blocks(n: number): Uint8Array {
    if (this.#blocks.length < n) this.#blocks = new Uint8Array(n);
    return this.#blocks.subarray(0, n);
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
 * block-quantizes each one on the host, a few rows at a time, before the next tensor is read
 * (host memory holds one tensor's stored bytes and blocks beyond the packed model). From a LLaMA GGUF (@lvm/weights' `GgufLlamaSource`), a matrix
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
  // Host buffers reused from tensor to tensor (sized for the largest one that needs each), so host
  // memory holds at most one tensor (its stored bytes, and its blocks or f32 values) beyond the
  // model: nothing is left to the garbage collector.
  const size = (shape: readonly number[]) => shape.reduce((a, b) => a * b, 1);
  const scratch = new LoadScratch();
  for (let i = 0; i < specs.length; i++) {
    const { name, shape } = specs[i];
    const { dtype, byteLength } = source.info(name);
    if (want && shape.length === 2 && shape[1] % QK === 0) {
      if (source instanceof GgufLlamaSource && source.ggmlType(name) === want) {
        const raw = await source.rawTensor(name, scratch.raw(byteLength));
        model.setQuantParam(name, want, shape, raw.bytes);
      } else {
        const out = scratch.blocks(quantizedBytes(want, size(shape)));
        const blocks = await quantizeRows(source, name, want, shape, out, scratch);
        model.setQuantParam(name, want, shape, blocks);
      }
    } else {
      const raw = await source.readRaw(name, scratch.raw(byteLength));
      const label = `${source.path}: tensor "${name}"`;
      model.setParam(name, toF32(dtype, raw, label, scratch.f32(size(shape))));
    }
    await gpu.settle(); // one copy of the weights in host memory, not two
    options.onTensor?.(name, i, specs.length);
  }
  return model;
}
