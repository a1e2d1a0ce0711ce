/**
 * The LLaMA configuration: sizes, presets (the paper's 100m..7b and small ones that train on a CPU),
 * parameter names/shapes in Hugging Face `LlamaForCausalLM` naming, parameter counts, and the
 * `config.json` mapping.
 *
 * Facts from the LVM paper and its released code (../shared/reference/LVM.md): vocab 8292 of which
 * ids 0..8191 are VQGAN codes and 8192..8291 are reserved, 4096 positions, RMSNorm eps 1e-6, RoPE theta
 * 10000 (rotate-half), SwiGLU, no biases, untied embeddings, multi-head attention.
 * @module
 */

/** Sizes and constants of a LLaMA decoder. */
export interface LlamaConfig {
  /** Model width D. */
  hidden: number;
  /** Number of decoder layers. */
  layers: number;
  /** Query heads H. */
  heads: number;
  /** Key/value heads (H for multi-head attention; fewer for grouped-query attention). */
  kvHeads: number;
  /** Per-head width (default hidden / heads). */
  headDim: number;
  /** SwiGLU inner width F. */
  ffn: number;
  /** Vocabulary size V. */
  vocab: number;
  /** Longest sequence (positions) the model is meant for. */
  maxPositions: number;
  /** RMSNorm epsilon. */
  rmsEps: number;
  /** RoPE base. */
  ropeTheta: number;
  /** Whether lm_head shares the embedding matrix. */
  tieEmbeddings: boolean;
  /**
   * Ids at or above this are reserved (never generated). LVM: 8192 of 8292. Default
   * {@link defaultImageCodes}: 8192 for LVM's vocab of 8292, otherwise the whole vocab.
   */
  imageCodes: number;
}

/** The fields a caller must give to {@link makeConfig}; the rest default to LVM's values. */
export type ConfigInput =
  & Pick<LlamaConfig, "hidden" | "layers" | "heads" | "ffn">
  & Partial<LlamaConfig>;

/** LVM's shared constants. */
export const LVM_VOCAB = 8292;
/** Number of VQGAN codes (ids below it are image tokens). */
export const LVM_IMAGE_CODES = 8192;

/**
 * The default reserved-id boundary for a vocabulary: LVM's 8192 codes when the vocab is LVM's 8292
 * (ids 8192..8291 reserved), otherwise the whole vocab (nothing reserved). The same rule for
 * {@link makeConfig} and {@link configFromHf}: a LLaMA checkpoint with another vocabulary (a text
 * model's 32000, a VQGAN with another codebook) generates from all of its ids unless its
 * config.json says `image_codes`, rather than being cut at an LVM-specific 8192.
 */
export function defaultImageCodes(vocab: number): number {
  return vocab === LVM_VOCAB ? LVM_IMAGE_CODES : vocab;
}

/** A config with defaults filled in (imageCodes: {@link defaultImageCodes}) and every field checked. */
export function makeConfig(c: ConfigInput): LlamaConfig {
  const cfg: LlamaConfig = {
    vocab: LVM_VOCAB,
    maxPositions: 4096,
    rmsEps: 1e-6,
    ropeTheta: 10000,
    tieEmbeddings: false,
    kvHeads: c.heads,
    headDim: c.hidden / c.heads,
    imageCodes: defaultImageCodes(c.vocab ?? LVM_VOCAB),
    ...stripUndefined(c),
  } as LlamaConfig;
  validateConfig(cfg);
  return cfg;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** Throws a RangeError naming the first field that is not a valid size. */
export function validateConfig(c: LlamaConfig): void {
  const ints: (keyof LlamaConfig)[] = [
    "hidden",
    "layers",
    "heads",
    "kvHeads",
    "headDim",
    "ffn",
    "vocab",
    "maxPositions",
    "imageCodes",
  ];
  for (const k of ints) {
    const v = c[k];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      throw new RangeError(`LlamaConfig.${k} must be a positive integer, found ${v}`);
    }
  }
  if (c.heads % c.kvHeads !== 0) {
    throw new RangeError(
      `LlamaConfig: heads (${c.heads}) must be a multiple of kvHeads (${c.kvHeads})`,
    );
  }
  if (c.headDim % 2 !== 0) {
    throw new RangeError(`LlamaConfig.headDim must be even for RoPE, found ${c.headDim}`);
  }
  if (c.imageCodes > c.vocab) {
    throw new RangeError(
      `LlamaConfig.imageCodes (${c.imageCodes}) must be at most vocab (${c.vocab})`,
    );
  }
  if (!(c.rmsEps > 0) || !(c.ropeTheta > 0)) {
    throw new RangeError(
      `LlamaConfig: rmsEps and ropeTheta must be positive, found ${c.rmsEps}, ${c.ropeTheta}`,
    );
  }
}

/**
 * Named configurations. `100m`..`7b` are the paper's (parameter counts in LVM.md's table); `tiny` and
 * `small` share LVM's vocabulary and train on a 2-core CPU in minutes.
 */
export const PRESETS: Readonly<Record<string, LlamaConfig>> = Object.freeze({
  // ~2.9M parameters (2.1M of them embeddings): smoke tests and CPU training runs.
  tiny: makeConfig({ hidden: 128, layers: 4, heads: 4, ffn: 344 }),
  // ~9.0M parameters.
  small: makeConfig({ hidden: 256, layers: 6, heads: 4, ffn: 688 }),
  "100m": makeConfig({ hidden: 640, layers: 22, heads: 10, ffn: 1664 }),
  "300m": makeConfig({ hidden: 1024, layers: 22, heads: 8, ffn: 2688 }),
  "600m": makeConfig({ hidden: 1536, layers: 22, heads: 16, ffn: 4096 }),
  "1b": makeConfig({ hidden: 2048, layers: 22, heads: 16, ffn: 5504 }),
  "3b": makeConfig({ hidden: 3200, layers: 26, heads: 32, ffn: 8640 }),
  "7b": makeConfig({ hidden: 4096, layers: 32, heads: 32, ffn: 11008 }),
});

/** A preset by name (a copy), or a RangeError listing the names. */
export function preset(name: string): LlamaConfig {
  const c = PRESETS[name];
  if (!c) {
    throw new RangeError(
      `Unknown model preset "${name}"; expected one of ${Object.keys(PRESETS).join(", ")}`,
    );
  }
  return { ...c };
}

/** One parameter: its Hugging Face name and shape. */
export interface ParamSpec {
  name: string;
  shape: number[];
}

/** Hugging Face names of one layer's tensors. */
export interface LayerNames {
  ln1: string;
  q: string;
  k: string;
  v: string;
  o: string;
  ln2: string;
  gate: string;
  up: string;
  down: string;
}

/** Hugging Face names of layer `i`'s tensors. */
export function layerNames(i: number): LayerNames {
  const p = `model.layers.${i}.`;
  return {
    ln1: `${p}input_layernorm.weight`,
    q: `${p}self_attn.q_proj.weight`,
    k: `${p}self_attn.k_proj.weight`,
    v: `${p}self_attn.v_proj.weight`,
    o: `${p}self_attn.o_proj.weight`,
    ln2: `${p}post_attention_layernorm.weight`,
    gate: `${p}mlp.gate_proj.weight`,
    up: `${p}mlp.up_proj.weight`,
    down: `${p}mlp.down_proj.weight`,
  };
}

/** Names of the non-layer tensors. */
export const EMBED = "model.embed_tokens.weight";
/** Final norm weight. */
export const FINAL_NORM = "model.norm.weight";
/** Output projection (absent when embeddings are tied). */
export const LM_HEAD = "lm_head.weight";

/** Every parameter in checkpoint order (Linear weights are [out, in]). */
export function paramSpecs(c: LlamaConfig): ParamSpec[] {
  const D = c.hidden, F = c.ffn, V = c.vocab;
  const qd = c.heads * c.headDim, kvd = c.kvHeads * c.headDim;
  const specs: ParamSpec[] = [{ name: EMBED, shape: [V, D] }];
  for (let i = 0; i < c.layers; i++) {
    const n = layerNames(i);
    specs.push(
      { name: n.ln1, shape: [D] },
      { name: n.q, shape: [qd, D] },
      { name: n.k, shape: [kvd, D] },
      { name: n.v, shape: [kvd, D] },
      { name: n.o, shape: [D, qd] },
      { name: n.ln2, shape: [D] },
      { name: n.gate, shape: [F, D] },
      { name: n.up, shape: [F, D] },
      { name: n.down, shape: [D, F] },
    );
  }
  specs.push({ name: FINAL_NORM, shape: [D] });
  if (!c.tieEmbeddings) specs.push({ name: LM_HEAD, shape: [V, D] });
  return specs;
}

/** Total number of parameters (tied embeddings counted once). */
export function paramCount(c: LlamaConfig): number {
  return paramSpecs(c).reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
}

/** A malformed or unsupported `config.json`. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Architectures whose math this package implements. */
const SUPPORTED = ["LlamaForCausalLM"];

/**
 * Reads a Hugging Face `config.json` object. `source` names the file in error messages.
 * Unknown architectures, non-SiLU activations and RoPE scaling are errors (not silently wrong).
 * Our extra key `image_codes` gives the reserved-id boundary; without it, {@link defaultImageCodes}:
 * a vocab of 8292 means LVM's 8192 codes and any other vocab reserves nothing (as in makeConfig).
 */
export function configFromHf(json: Record<string, unknown>, source = "config.json"): LlamaConfig {
  const archs = json.architectures;
  if (archs !== undefined) {
    if (!Array.isArray(archs) || !archs.some((a) => SUPPORTED.includes(String(a)))) {
      throw new ConfigError(
        `${source}: unsupported architecture ${JSON.stringify(archs)}; expected ${
          SUPPORTED.join(" or ")
        }`,
      );
    }
  } else if (json.model_type !== "llama") {
    throw new ConfigError(
      `${source}: no "architectures" and model_type ${
        JSON.stringify(json.model_type)
      }; expected a LLaMA config (architectures ["LlamaForCausalLM"])`,
    );
  }
  const num = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw new ConfigError(`${source}: "${key}" must be a number, found ${JSON.stringify(v)}`);
    }
    return v;
  };
  const act = json.hidden_act ?? "silu";
  if (act !== "silu") {
    throw new ConfigError(`${source}: hidden_act ${JSON.stringify(act)} is not supported (silu)`);
  }
  if (json.rope_scaling !== undefined && json.rope_scaling !== null) {
    throw new ConfigError(
      `${source}: rope_scaling ${
        JSON.stringify(json.rope_scaling)
      } is not supported (expected null)`,
    );
  }
  for (const key of ["attention_bias", "mlp_bias"]) {
    if (json[key] === true) throw new ConfigError(`${source}: ${key}=true is not supported`);
  }
  const hidden = num("hidden_size");
  const heads = num("num_attention_heads");
  // Checked here, before head_dim's default (hidden / heads) is computed from it: 0 heads would
  // otherwise surface as a head_dim of Infinity ("found null").
  if (!Number.isInteger(heads) || heads < 1) {
    throw new ConfigError(
      `${source}: "num_attention_heads" must be a positive integer, found ${heads}`,
    );
  }
  const vocab = num("vocab_size");
  try {
    return makeConfig({
      hidden,
      layers: num("num_hidden_layers"),
      heads,
      kvHeads: num("num_key_value_heads", heads),
      headDim: num("head_dim", hidden / heads),
      ffn: num("intermediate_size"),
      vocab,
      maxPositions: num("max_position_embeddings", 4096),
      rmsEps: num("rms_norm_eps", 1e-6),
      ropeTheta: num("rope_theta", 10000),
      tieEmbeddings: json.tie_word_embeddings === true,
      imageCodes: num("image_codes", defaultImageCodes(vocab)),
    });
  } catch (e) {
    if (e instanceof RangeError) throw new ConfigError(`${source}: ${e.message}`);
    throw e;
  }
}

/** The Hugging Face `config.json` object for a config (loads in `transformers` as LlamaForCausalLM). */
export function configToHf(c: LlamaConfig, torchDtype = "float32"): Record<string, unknown> {
  const out: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: c.hidden,
    intermediate_size: c.ffn,
    num_hidden_layers: c.layers,
    num_attention_heads: c.heads,
    num_key_value_heads: c.kvHeads,
    vocab_size: c.vocab,
    max_position_embeddings: c.maxPositions,
    rms_norm_eps: c.rmsEps,
    rope_theta: c.ropeTheta,
    rope_scaling: null,
    tie_word_embeddings: c.tieEmbeddings,
    hidden_act: "silu",
    attention_bias: false,
    initializer_range: 0.02,
    torch_dtype: torchDtype,
    image_codes: c.imageCodes,
  };
  if (c.headDim !== c.hidden / c.heads) out.head_dim = c.headDim;
  return out;
}
