/**
 * VQGAN weights on disk: open-muse names (safetensors or the released `pytorch_model.bin`), diffusers
 * `VQModel` names (mapped as diffusers' `scripts/convert_amused.py` maps them), our own save format
 * (config.json + model.safetensors, f32, open-muse names), and the tokenizer identity hash.
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import {
  SafetensorsFile,
  type TensorSource,
  TorchBinFile,
  writeFileAtomic,
  writeSafetensors,
} from "./_deps.ts";
import { configToJson, paramSpecs, parseConfig, type VqganConfig } from "./config.ts";

/** Host weights: open-muse name -> f32 values (row-major, the shape of {@link paramSpecs}). */
export type VqganWeights = Map<string, Float32Array>;

/** Key naming of a weight file. */
export type WeightNaming = "open-muse" | "diffusers";

/** A weight file that does not fit the config, or a tokenizer directory without weights. */
export class VqganWeightsError extends Error {
  override name = "VqganWeightsError";
}

/**
 * open-muse key -> diffusers `VQModel` key: `down.{i}.block.{j}` -> `down_blocks.{i}.resnets.{j}`,
 * `downsample` -> `downsamplers.0`, `mid.block_{1,2}` -> `mid_block.resnets.{0,1}`, `norm_out` ->
 * `conv_norm_out`, `nin_shortcut` -> `conv_shortcut`, decoder `up.{i}` -> `up_blocks.{N-1-i}`,
 * `upsample` -> `upsamplers.0`; top-level keys (quant_conv, quantize, post_quant_conv) are the same.
 */
export function toDiffusersName(name: string, levels: number): string {
  let p = name.split(".");
  if (p[0] !== "encoder" && p[0] !== "decoder") return name;
  const rest = (r: string[]) =>
    r[0] === "block"
      ? ["resnets", ...r.slice(1)]
      : r[0] === "downsample"
      ? ["downsamplers", "0", ...r.slice(1)]
      : r[0] === "upsample"
      ? ["upsamplers", "0", ...r.slice(1)]
      : r;
  if (p[1] === "down") p = [p[0], "down_blocks", p[2], ...rest(p.slice(3))];
  else if (p[1] === "up") {
    p = [p[0], "up_blocks", String(levels - 1 - Number(p[2])), ...rest(p.slice(3))];
  } else if (p[1] === "mid") {
    p = [p[0], "mid_block", "resnets", String(Number(p[2].slice(6)) - 1), ...p.slice(3)];
  } else if (p[1] === "norm_out") p = [p[0], "conv_norm_out", ...p.slice(2)];
  return p.map((s) => (s === "nin_shortcut" ? "conv_shortcut" : s)).join(".");
}

/** Which naming a file's keys use (diffusers when any key has a diffusers-only part). */
export function detectNaming(names: readonly string[]): WeightNaming {
  const diff = /^(encoder|decoder)\.(down_blocks|up_blocks|mid_block|conv_norm_out)\b/;
  return names.some((n) => diff.test(n)) ? "diffusers" : "open-muse";
}

/**
 * Reads every parameter of `config` from `source` (either naming; any float dtype, converted to f32),
 * checking names and shapes. Throws {@link VqganWeightsError} listing missing, unexpected or
 * mis-shaped tensors.
 */
export async function readWeights(
  source: TensorSource,
  config: VqganConfig,
): Promise<VqganWeights> {
  const names = source.names();
  const naming = detectNaming(names);
  const levels = config.channelMult.length;
  const specs = paramSpecs(config);
  const fileName = (n: string) => (naming === "diffusers" ? toDiffusersName(n, levels) : n);
  const expected = new Set(specs.map((s) => fileName(s.name)));
  const missing = specs.filter((s) => !source.has(fileName(s.name))).map((s) => fileName(s.name));
  const extra = names.filter((n) => !expected.has(n));
  const problems: string[] = [];
  if (missing.length) {
    problems.push(
      `${missing.length} missing (${missing.slice(0, 5).join(", ")}${
        missing.length > 5 ? ", ..." : ""
      })`,
    );
  }
  if (extra.length) {
    problems.push(
      `${extra.length} unexpected (${extra.slice(0, 5).join(", ")}${
        extra.length > 5 ? ", ..." : ""
      })`,
    );
  }
  for (const s of specs) {
    const n = fileName(s.name);
    if (!source.has(n)) continue;
    const info = source.info(n);
    if (info.shape.join(",") !== s.shape.join(",")) {
      problems.push(`${n} has shape [${info.shape}], expected [${s.shape}]`);
    }
  }
  if (problems.length) {
    throw new VqganWeightsError(
      `${source.path}: the ${naming}-named tensors do not match the config (${levels} levels, hidden ${config.hiddenChannels}, ${config.numEmbeddings} codes): ${
        problems.slice(0, 6).join("; ")
      }`,
    );
  }
  const out: VqganWeights = new Map();
  for (const s of specs) out.set(s.name, await source.readF32(fileName(s.name)));
  return out;
}

/** Weight files a tokenizer directory may hold, in order of preference. */
export const WEIGHT_FILES: readonly string[] = [
  "model.safetensors",
  "diffusion_pytorch_model.safetensors",
  "pytorch_model.bin",
  "diffusion_pytorch_model.bin",
];

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

/** Opens the first of {@link WEIGHT_FILES} present in `dir` (safetensors or a torch pickle). */
export async function openWeights(dir: string): Promise<TensorSource> {
  for (const f of WEIGHT_FILES) {
    const path = join(dir, f);
    if (!(await isFile(path))) continue;
    return f.endsWith(".bin") ? await TorchBinFile.open(path) : await SafetensorsFile.open(path);
  }
  throw new VqganWeightsError(
    `${dir}: no weight file found; expected one of ${WEIGHT_FILES.join(", ")}`,
  );
}

/** Options of {@link readTokenizerDir}. */
export interface ReadTokenizerOptions {
  /** Input resolution override (needed for diffusers configs, which do not record it). */
  resolution?: number;
}

/** A tokenizer directory read into host memory. */
export interface TokenizerFiles {
  config: VqganConfig;
  weights: VqganWeights;
  /** The weight file read. */
  weightsPath: string;
}

/** Reads `dir/config.json` and the weights (whichever file {@link openWeights} finds). */
export async function readTokenizerDir(
  dir: string,
  options: ReadTokenizerOptions = {},
): Promise<TokenizerFiles> {
  const cfgPath = join(dir, "config.json");
  let text: string;
  try {
    text = await Deno.readTextFile(cfgPath);
  } catch (e) {
    throw new VqganWeightsError(
      `${cfgPath}: cannot read the tokenizer config (${(e as Error).message})`,
      {
        cause: e,
      },
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new VqganWeightsError(`${cfgPath}: not valid JSON (${(e as Error).message})`);
  }
  const config = parseConfig(json, cfgPath, options.resolution);
  const source = await openWeights(dir);
  try {
    return { config, weights: await readWeights(source, config), weightsPath: source.path };
  } finally {
    source.close();
  }
}

/** Writes `path` atomically (temp file, fsync, rename); the shared `@lvm/kernels/fs` helper. */
export { writeFileAtomic };

/**
 * Saves a tokenizer as open-muse `config.json` + `model.safetensors` (f32, open-muse names), each
 * written atomically; `dir` is created if needed.
 */
export async function saveTokenizer(
  dir: string,
  config: VqganConfig,
  weights: VqganWeights,
  metadata: Record<string, string> = {},
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  for (const s of paramSpecs(config)) {
    const w = weights.get(s.name);
    const n = s.shape.reduce((a, b) => a * b, 1);
    if (!w || w.length !== n) {
      throw new VqganWeightsError(
        `saveTokenizer: ${s.name} needs ${n} values for shape [${s.shape}], found ${
          w ? w.length : "none"
        }`,
      );
    }
    tensors[s.name] = { dtype: "F32", shape: s.shape, data: w };
  }
  await writeSafetensors(join(dir, "model.safetensors"), tensors, { format: "pt", ...metadata });
  await writeFileAtomic(
    join(dir, "config.json"),
    JSON.stringify(configToJson(config), null, 2) + "\n",
  );
}

/**
 * The identity of a tokenizer: `vqgan-` + the SHA-256 (hex, first 32 digits) of its canonical
 * config JSON and every parameter's f32 bytes in open-muse order. The same weights give the same id
 * whichever file format they came from.
 */
export function tokenizerId(config: VqganConfig, weights: VqganWeights): string {
  const h = createHash("sha256");
  h.update(JSON.stringify(configToJson(config)));
  for (const s of paramSpecs(config)) {
    const w = weights.get(s.name)!;
    h.update(s.name);
    h.update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
  }
  return `vqgan-${h.digest("hex").slice(0, 32)}`;
}
