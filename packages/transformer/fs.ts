/**
 * The file-system side of @lvm/transformer (Deno): Hugging Face model directories. `readConfig`
 * reads `DIR/config.json`, `loadLlama` opens the weights with @lvm/weights' one `openWeights(dir)`
 * (model.safetensors, its sharded index, or a PyTorch file) and loads them, and `saveLlama` writes
 * a directory atomically, streaming one tensor at a time (so the model saved loads in other LLaMA
 * tooling too).
 * @module
 */
import { join } from "node:path";
import { writeFileAtomic } from "@lvm/util/fs";
import type { Gpu } from "@lvm/gpu";
import { GgufLlamaSource, shardFileName, type TensorSource } from "@lvm/weights";
import { openWeights, SafetensorsWriter } from "@lvm/weights/fs";
import { loadLlamaFrom, type LoadOptions, parseHfConfig } from "./checkpoint.ts";
import { ConfigError, configFromHf, configToHf, type LlamaConfig, paramSpecs } from "./config.ts";
import type { Llama } from "./model.ts";

/**
 * Reads and checks `DIR/config.json` (or, for a LLaMA `FILE.gguf`, the config its metadata holds).
 */
export async function readConfig(dir: string): Promise<LlamaConfig> {
  if (dir.endsWith(".gguf")) {
    const source = await openWeights(dir);
    try {
      return ggufConfig(dir, source);
    } finally {
      source.close();
    }
  }
  const path = join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new ConfigError(
      `${path}: cannot read (${(e as Error).message}); a model directory needs config.json`,
    );
  }
  return parseHfConfig(text, path);
}

/**
 * Loads a Hugging Face LLaMA directory (config.json + model.safetensors or sharded index) onto the
 * GPU, tensor by tensor (see {@link loadLlamaFrom}). BF16/F16/F64 tensors are converted to f32 on
 * load; `dtype: "f16"` keeps the matrices at 16 bits on the GPU (the 7B then needs ~13 GB), `"q8"` /
 * `"q4"` quantizes each matrix on the host as it is read, before the next one (GGML Q8_0 / Q4_0: the
 * 7B then needs ~7.2 / ~3.8 GB). `dir` may also be a LLaMA `.gguf` file (its metadata is the config);
 * matrices stored as the blocks the dtype asks for are then uploaded as they are.
 */
export async function loadLlama(gpu: Gpu, dir: string, options: LoadOptions = {}): Promise<Llama> {
  const gguf = dir.endsWith(".gguf");
  const config = gguf ? null : await readConfig(dir);
  const source = await openWeights(dir);
  try {
    return await loadLlamaFrom(gpu, config ?? ggufConfig(dir, source), source, options);
  } finally {
    source.close();
  }
}

/** The config of an opened LLaMA GGUF (`path` names it in errors). */
function ggufConfig(path: string, source: TensorSource): LlamaConfig {
  if (!(source instanceof GgufLlamaSource)) {
    throw new ConfigError(`${path}: not a LLaMA GGUF (no config in its metadata)`);
  }
  return configFromHf(source.config(), `${path} (GGUF metadata)`);
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
 * are removed. Returns the weight file names. Block-quantized matrices are saved dequantized (the
 * values the model computes with), in `dtype`.
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
        await w.write(s.name, await model.readParam(s.name));
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
