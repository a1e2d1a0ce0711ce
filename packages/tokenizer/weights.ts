/**
 * VQGAN weights from any `TensorSource`: open-muse names (safetensors or the released
 * `pytorch_model.bin`), diffusers `VQModel` names (mapped as diffusers' `scripts/convert_amused.py`
 * maps them), and the tokenizer identity hash. Tokenizer directories on disk (reading, our own save
 * format) are `@lvm/tokenizer/fs`.
 * @module
 */
import type { TensorSource } from "@lvm/weights";
import { Sha256 } from "./_sha256.ts";
import { configToJson, type VqganConfig, vqganParamSpecs } from "./config.ts";

/** Host weights: open-muse name -> f32 values (row-major, the shape of {@link vqganParamSpecs}). */
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
  const specs = vqganParamSpecs(config);
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

/** What {@link tokenizerId} needs of a SHA-256 implementation. */
export interface Sha256Hasher {
  update(data: Uint8Array | string): unknown;
  /** The digest as 64 hex digits. */
  digestHex(): string;
}

/**
 * The identity of a tokenizer: `vqgan-` + the SHA-256 (hex, first 32 digits) of its canonical
 * config JSON and every parameter's f32 bytes in open-muse order. The same weights give the same id
 * whichever file format they came from. `hasher` computes the SHA-256 (default: a plain
 * TypeScript one, which runs anywhere; `@lvm/tokenizer/fs` passes the runtime's native one).
 */
export function tokenizerId(
  config: VqganConfig,
  weights: VqganWeights,
  hasher: Sha256Hasher = new Sha256(),
): string {
  const h = hasher;
  h.update(JSON.stringify(configToJson(config)));
  for (const s of vqganParamSpecs(config)) {
    const w = weights.get(s.name)!;
    h.update(s.name);
    h.update(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
  }
  return `vqgan-${h.digestHex().slice(0, 32)}`;
}
