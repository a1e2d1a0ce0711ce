/**
 * Hugging Face LLaMA checkpoints: `config.json` + `model.safetensors`, or shards behind
 * `model.safetensors.index.json`; F32, F16, BF16 or F64 tensors (converted to f32 on load); tied or
 * untied; GQA. This is how the
 * released LVM 7B is distributed, and how our own models are saved (so they load in other LLaMA
 * tooling too).
 *
 * Loading checks every tensor's presence and shape against config.json from the headers alone,
 * before any upload, then streams tensor by tensor (one tensor in host memory at a time). Saving
 * streams the other way: one tensor read back from the GPU and written at a time, atomically.
 * @module
 */
import { join } from "node:path";
import { writeFileAtomic } from "@lvm/util/fs";
import type { Gpu } from "@lvm/gpu";
import {
  openCheckpoint,
  SafetensorsWriter,
  shardFileName,
  type StDType,
  type TensorSource,
} from "@lvm/weights";
import {
  ConfigError,
  configFromHf,
  configToHf,
  type LlamaConfig,
  LM_HEAD,
  paramSpecs,
} from "./config.ts";
import { Llama, type ModelOptions } from "./model.ts";

/** A checkpoint whose tensors do not match its config: names the tensor and the file. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
}

/** Reads and checks `DIR/config.json`. */
export async function readConfig(dir: string): Promise<LlamaConfig> {
  const path = join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(
      `${path}: cannot read (${(e as Error).message}); a model directory needs config.json`,
    );
  }
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
 * the headers. Throws a {@link CheckpointError} naming the first problem's tensor and file.
 */
export function checkTensors(source: TensorSource, config: LlamaConfig): void {
  const specs = paramSpecs(config);
  for (const { name, shape } of specs) {
    if (!source.has(name)) {
      throw new CheckpointError(
        `${source.path}: missing tensor "${name}" (expected [${shape}] for this config.json)`,
      );
    }
    const info = source.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new CheckpointError(
        `${source.path}: tensor "${name}" has shape [${info.shape}], expected [${shape}] from config.json`,
      );
    }
    if (!FLOAT_DTYPES.includes(info.dtype)) {
      throw new CheckpointError(
        `${source.path}: tensor "${name}" is ${info.dtype}, expected ${FLOAT_NAMES}`,
      );
    }
  }
  const known = new Set(specs.map((s) => s.name));
  const extra = source.names().filter((n) => !known.has(n) && !ignorable(n, config));
  if (extra.length) {
    throw new CheckpointError(
      `${source.path}: unexpected tensor${extra.length > 1 ? "s" : ""} ${
        extra.slice(0, 3).map((n) => `"${n}"`).join(", ")
      }${
        extra.length > 3 ? ` (+${extra.length - 3} more)` : ""
      } not in a LLaMA of this config.json`,
    );
  }
}

/** Options of {@link loadLlama}. */
export interface LoadOptions extends ModelOptions {
  /** Called after each tensor is uploaded (progress output). */
  onTensor?: (name: string, index: number, total: number) => void;
}

/**
 * Loads a Hugging Face LLaMA directory (config.json + model.safetensors or sharded index) onto the
 * GPU, tensor by tensor. BF16/F16/F64 tensors are converted to f32 on load; `dtype: "f16"` keeps the matrices
 * at 16 bits on the GPU (the 7B then needs ~13 GB).
 */
export async function loadLlama(gpu: Gpu, dir: string, options: LoadOptions = {}): Promise<Llama> {
  const config = await readConfig(dir);
  const source = await openCheckpoint(dir);
  try {
    checkTensors(source, config);
    const model = Llama.empty(gpu, config, options);
    const specs = paramSpecs(config);
    for (let i = 0; i < specs.length; i++) {
      const name = specs[i].name;
      model.setParam(name, await source.readF32(name));
      await gpu.settle(); // one copy of the weights in host memory, not two
      options.onTensor?.(name, i, specs.length);
    }
    return model;
  } finally {
    source.close();
  }
}

/** Options of {@link saveLlama}. */
export interface SaveOptions {
  /** Stored dtype of every tensor (default F32). */
  dtype?: "F32" | "F16" | "BF16";
  /** Largest shard in bytes before splitting into model-0000k-of-0000n files (default 5e9, as HF). */
  maxShardBytes?: number;
  /** Extra `__metadata__` strings. */
  metadata?: Record<string, string>;
}

/**
 * Saves `model` as a Hugging Face directory: config.json and model.safetensors, or shards with
 * model.safetensors.index.json when over `maxShardBytes`. Every file is written atomically (temp file
 * + rename), the weights before config.json; files of an earlier save that the new one does not use
 * are removed. Returns the weight file names.
 */
export async function saveLlama(
  model: Llama,
  dir: string,
  options: SaveOptions = {},
): Promise<string[]> {
  const { dtype = "F32", maxShardBytes = 5e9 } = options;
  const metadata = { format: "pt", ...options.metadata };
  const specs = paramSpecs(model.config);
  const elem = dtype === "F32" ? 4 : 2;
  const groups: (typeof specs)[] = [];
  let cur: typeof specs = [], bytes = 0;
  for (const s of specs) {
    const b = s.shape.reduce((a, d) => a * d, 1) * elem;
    if (cur.length && bytes + b > maxShardBytes) {
      groups.push(cur);
      cur = [];
      bytes = 0;
    }
    cur.push(s);
    bytes += b;
  }
  groups.push(cur);
  await Deno.mkdir(dir, { recursive: true });
  const files = groups.length === 1
    ? ["model.safetensors"]
    : groups.map((_, k) => shardFileName(k + 1, groups.length));
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let k = 0; k < groups.length; k++) {
    const w = await SafetensorsWriter.create(
      join(dir, files[k]),
      groups[k].map((s) => ({ name: s.name, dtype, shape: s.shape })),
      metadata,
    );
    try {
      for (const s of groups[k]) {
        await w.write(s.name, await model.gpu.readF32(model.param(s.name)));
        weightMap[s.name] = files[k];
        total += s.shape.reduce((a, d) => a * d, 1) * elem;
      }
      await w.close();
    } catch (e) {
      await w.abort();
      throw e;
    }
  }
  if (groups.length > 1) {
    const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((n) => [n, weightMap[n]]));
    await writeFileAtomic(
      join(dir, "model.safetensors.index.json"),
      JSON.stringify({ metadata: { total_size: total }, weight_map: sorted }, null, 2) + "\n",
    );
  }
  const torchDtype = { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype];
  await writeFileAtomic(
    join(dir, "config.json"),
    JSON.stringify(configToHf(model.config, torchDtype), null, 2) + "\n",
  );
  // Remove weight files of an earlier save that this one replaced.
  const keep = new Set([...files, ...(groups.length > 1 ? ["model.safetensors.index.json"] : [])]);
  for await (const e of Deno.readDir(dir)) {
    const weights = e.name === "model.safetensors" || e.name === "model.safetensors.index.json" ||
      /^model-\d{5}-of-\d{5}\.safetensors$/.test(e.name);
    if (e.isFile && weights && !keep.has(e.name)) await Deno.remove(join(dir, e.name));
  }
  return files;
}
