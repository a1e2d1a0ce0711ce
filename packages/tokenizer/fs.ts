/**
 * The file-system side of @lvm/tokenizer (Deno): tokenizer directories. `loadTokenizer(dir)` reads
 * `config.json` and the weights (through @lvm/weights' one `openWeights`) and makes the GPU
 * tokenizer; `readTokenizerDir` reads them into host memory; `saveTokenizer` writes our own format
 * (open-muse `config.json` + `model.safetensors`, f32), atomically.
 * @module
 */
import { createHash } from "node:crypto";
import { join } from "node:path";
import { writeFileAtomic } from "@lvm/util/fs";
import { NoWeightsError, openWeights, writeSafetensors } from "@lvm/weights/fs";
import type { TensorSource } from "@lvm/weights";
import { configToJson, parseConfig, type VqganConfig, vqganParamSpecs } from "./config.ts";
import { createTokenizer, type CreateTokenizerOptions, type VqganTokenizer } from "./tokenizer.ts";
import {
  readWeights,
  type Sha256Hasher,
  tokenizerId,
  type VqganWeights,
  VqganWeightsError,
} from "./weights.ts";

/** The runtime's native SHA-256 (the same digest as the default, ~10x faster on big weights). */
function nativeSha256(): Sha256Hasher {
  const h = createHash("sha256");
  return { update: (d) => h.update(d), digestHex: () => h.digest("hex") };
}

/** Weight files a tokenizer directory may hold, in order of preference. */
export const WEIGHT_FILES: readonly string[] = [
  "model.safetensors",
  "diffusion_pytorch_model.safetensors",
  "pytorch_model.bin",
  "diffusion_pytorch_model.bin",
];

/** Opens the first of {@link WEIGHT_FILES} present in `dir` (@lvm/weights' `openWeights`). */
async function openTokenizerWeights(dir: string): Promise<TensorSource> {
  try {
    return await openWeights(dir, { files: WEIGHT_FILES });
  } catch (e) {
    if (!(e instanceof NoWeightsError)) throw e;
    throw new VqganWeightsError(
      `${dir}: no weight file found; expected one of ${WEIGHT_FILES.join(", ")}`,
    );
  }
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

/** Reads `dir/config.json` and the weights (the first of {@link WEIGHT_FILES} found). */
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
  const source = await openTokenizerWeights(dir);
  try {
    return { config, weights: await readWeights(source, config), weightsPath: source.path };
  } finally {
    source.close();
  }
}

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
  for (const s of vqganParamSpecs(config)) {
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

/** Options of {@link loadTokenizer}: where the device and batch come from, the resolution. */
export interface LoadTokenizerOptions extends ReadTokenizerOptions, CreateTokenizerOptions {}

/**
 * Loads a tokenizer directory: `config.json` (open-muse `VQGANModel` fields, or a diffusers `VQModel`
 * config) and the first weight file found of `model.safetensors`, `diffusion_pytorch_model.safetensors`,
 * `pytorch_model.bin`, `diffusion_pytorch_model.bin`; open-muse or diffusers key names (detected).
 *
 * @example
 * Runs as a doc test (`deno test --doc -A --unstable-webgpu packages/tokenizer/fs.ts`) on this
 * repository's 16x16 PyTorch fixture; the LVM tokenizer's directory (config.json +
 * pytorch_model.bin) loads the same way and gives 256 ids (16x16) per 256x256 image.
 * ```ts
 * import { loadTokenizer } from "@lvm/tokenizer/fs";
 * import { loadImage } from "@lvm/image/fs";
 * const dir = new URL("../../tests/fixtures/tokenizer/", import.meta.url).pathname;
 * const tok = await loadTokenizer(`${dir}bin`);
 * const [ids] = await tok.encode([await loadImage(`${dir}image.png`)]); // Int32Array(64): 8x8 grid
 * const [img] = await tok.decode([ids]); // RgbImage, 16x16
 * if (ids.length !== tok.tokensPerImage || img.width !== tok.resolution) throw new Error("shape");
 * tok.release();
 * ```
 */
export async function loadTokenizer(
  dir: string,
  options: LoadTokenizerOptions = {},
): Promise<VqganTokenizer> {
  const { config, weights } = await readTokenizerDir(dir, options);
  const id = tokenizerId(config, weights, nativeSha256());
  return createTokenizer(config, weights, { ...options, id });
}
export * from "./sources.ts";
