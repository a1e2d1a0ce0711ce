/**
 * llama.cpp's conventions for LLaMA GGUF files, both ways, without a GPU or a file system:
 *
 * - Names: Hugging Face `model.layers.N.self_attn.q_proj.weight` <-> llama.cpp
 *   `blk.N.attn_q.weight` and the rest of the table in {@link hfToGgufName} (as
 *   convert_hf_to_gguf.py's tensor map for arch "llama").
 * - Metadata: the `llama.*` keys llama.cpp reads, from a Hugging Face `config.json` object
 *   ({@link llamaGgufMetadata}), and back ({@link hfConfigFromGguf}: a plain config object that
 *   `@lvm/transformer`'s `configFromHf` accepts). Our vocabulary is image codes, not text; the
 *   file carries a token list llama.cpp loads as it loads LLaMA's own ({@link llamaVocabMetadata}).
 * - The q/k row permutation: HF rotates halves of each head (`rotate_half`: element i pairs with
 *   i + D/2), llama.cpp's NORM RoPE rotates adjacent pairs (2i, 2i+1). convert_hf_to_gguf.py makes
 *   the two agree by reordering the rows of q_proj (per attention head) and k_proj (per KV head):
 *   `w.reshape(n_head, 2, D/2, cols).swapaxes(1, 2).reshape(rows, cols)`, so GGUF row
 *   `h*D + 2i + s` is HF row `h*D + s*D/2 + i` ({@link llamaQkRowOrder}). Whole rows move, so
 *   the same reordering applies to quantized rows ({@link reorderRows}).
 *
 * {@link planLlamaGguf} + {@link encodeLlamaTensor} turn an HF checkpoint into GGUF tensors
 * (`@lvm/weights/fs`'s `convertLlamaToGguf` streams a folder into a file);
 * {@link GgufLlamaSource} presents a LLaMA GGUF as a `TensorSource` under HF names, in HF row order.
 * @module
 */
import { intoBuffer, MemorySource } from "./byte_source.ts";
import {
  encodeGgml,
  ggmlBytes,
  type GgmlType,
  GgufError,
  type GgufMetadata,
  GgufReader,
  type GgufValue,
  ggufValue,
  isGgmlType,
} from "./gguf.ts";
import { type StDType, type TensorInfo, type TensorSource, toF32 } from "./safetensors.ts";
import { dequantize, type QuantType } from "./quant.ts";

// ---------------------------------------------------------------------------------------------
// Names

/** Global tensors: HF name <-> llama.cpp name. */
const GLOBAL_NAMES: readonly [string, string][] = [
  ["model.embed_tokens.weight", "token_embd.weight"],
  ["model.norm.weight", "output_norm.weight"],
  ["lm_head.weight", "output.weight"],
];

/** Per-layer tensors: HF suffix after `model.layers.N.` <-> suffix after `blk.N.`, in layer order. */
const LAYER_NAMES: readonly [string, string][] = [
  ["input_layernorm.weight", "attn_norm.weight"],
  ["self_attn.q_proj.weight", "attn_q.weight"],
  ["self_attn.k_proj.weight", "attn_k.weight"],
  ["self_attn.v_proj.weight", "attn_v.weight"],
  ["self_attn.o_proj.weight", "attn_output.weight"],
  ["post_attention_layernorm.weight", "ffn_norm.weight"],
  ["mlp.gate_proj.weight", "ffn_gate.weight"],
  ["mlp.up_proj.weight", "ffn_up.weight"],
  ["mlp.down_proj.weight", "ffn_down.weight"],
];

const HF_LAYER = /^model\.layers\.(\d+)\.(.+)$/;
const GGUF_LAYER = /^blk\.(\d+)\.(.+)$/;

/**
 * The llama.cpp name of a Hugging Face LLaMA tensor, or undefined when it has none.
 *
 * @example
 * ```ts
 * import { ggufToHfName, hfToGgufName } from "@lvm/weights";
 * console.log(hfToGgufName("model.layers.3.self_attn.o_proj.weight")); // blk.3.attn_output.weight
 * console.log(ggufToHfName("token_embd.weight")); // model.embed_tokens.weight
 * ```
 */
export function hfToGgufName(name: string): string | undefined {
  const g = GLOBAL_NAMES.find(([hf]) => hf === name);
  if (g) return g[1];
  const m = name.match(HF_LAYER);
  const l = m && LAYER_NAMES.find(([hf]) => hf === m[2]);
  return l ? `blk.${m[1]}.${l[1]}` : undefined;
}

/** The Hugging Face name of a llama.cpp LLaMA tensor, or undefined when it has none. */
export function ggufToHfName(name: string): string | undefined {
  const g = GLOBAL_NAMES.find(([, gg]) => gg === name);
  if (g) return g[0];
  const m = name.match(GGUF_LAYER);
  const l = m && LAYER_NAMES.find(([, gg]) => gg === m[2]);
  return l ? `model.layers.${m[1]}.${l[0]}` : undefined;
}

// ---------------------------------------------------------------------------------------------
// The q/k permutation

/**
 * llama.cpp's row order of a q_proj (`heads` = attention heads) or k_proj (`heads` = KV heads)
 * weight of `rows` rows: GGUF row r holds HF row `order[r]` (convert_hf_to_gguf.py's `permute`).
 * Rows per head must be even. {@link invertOrder} gives the way back.
 *
 * @example
 * ```ts
 * import { llamaQkRowOrder } from "@lvm/weights";
 * // one head of 4 rows: HF halves [0 1 | 2 3] become adjacent pairs (0 2) (1 3)
 * console.log(llamaQkRowOrder(4, 1)); // Uint32Array(4) [ 0, 2, 1, 3 ]
 * ```
 */
export function llamaQkRowOrder(rows: number, heads: number): Uint32Array {
  const D = rows / heads;
  if (!Number.isInteger(heads) || heads < 1 || !Number.isInteger(D) || D % 2 !== 0) {
    throw new RangeError(
      `q/k permutation: ${rows} rows are not ${heads} heads of an even number of rows`,
    );
  }
  const order = new Uint32Array(rows);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < D / 2; i++) {
      order[h * D + 2 * i] = h * D + i;
      order[h * D + 2 * i + 1] = h * D + D / 2 + i;
    }
  }
  return order;
}

/** The inverse of a row order: `inv[order[r]] = r`. */
export function invertOrder(order: Uint32Array): Uint32Array {
  const inv = new Uint32Array(order.length);
  for (let r = 0; r < order.length; r++) inv[order[r]] = r;
  return inv;
}

/**
 * Rows of `rowBytes` bytes each, reordered: output row r is input row `order[r]`. Works on any
 * stored type, quantized blocks included (a Q8_0 row of `cols` values is `cols / 32 * 34` bytes:
 * `ggmlBytes(type, [1, cols])`).
 */
export function reorderRows(bytes: Uint8Array, rowBytes: number, order: Uint32Array): Uint8Array {
  if (bytes.byteLength !== rowBytes * order.length) {
    throw new RangeError(
      `reorderRows: ${bytes.byteLength} bytes are not ${order.length} rows of ${rowBytes} bytes`,
    );
  }
  const out = new Uint8Array(bytes.byteLength);
  for (let r = 0; r < order.length; r++) {
    const from = order[r] * rowBytes;
    out.set(bytes.subarray(from, from + rowBytes), r * rowBytes);
  }
  return out;
}

/** f32 rows in a new order (output row r = input row `order[r]`). */
function reorderF32(x: Float32Array, cols: number, order: Uint32Array): Float32Array {
  const out = new Float32Array(x.length);
  for (let r = 0; r < order.length; r++) {
    out.set(x.subarray(order[r] * cols, (order[r] + 1) * cols), r * cols);
  }
  return out;
}

/** HF -> GGUF: a q (or k) weight `[rows, cols]` in llama.cpp's row order. */
export function permuteQK(x: Float32Array, rows: number, heads: number): Float32Array {
  return reorderF32(x, x.length / rows, llamaQkRowOrder(rows, heads));
}

/** GGUF -> HF: the inverse of {@link permuteQK}. */
export function unpermuteQK(x: Float32Array, rows: number, heads: number): Float32Array {
  return reorderF32(x, x.length / rows, invertOrder(llamaQkRowOrder(rows, heads)));
}

// ---------------------------------------------------------------------------------------------
// Hyperparameters

/** The hyperparameters of a LLaMA that both formats record. */
export interface LlamaShape {
  hidden: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ffn: number;
  vocab: number;
  maxPositions: number;
  rmsEps: number;
  ropeTheta: number;
  tieEmbeddings: boolean;
  /** Our `image_codes` (ids below it are image codes), when the config has it. */
  imageCodes?: number;
}

/**
 * Reads the hyperparameters of a Hugging Face LLaMA `config.json` object (`source` names it in
 * errors). What llama.cpp's "llama" architecture cannot express is refused: another architecture,
 * an activation other than SiLU, RoPE scaling, biases.
 */
export function llamaShapeFromHf(
  json: Record<string, unknown>,
  source = "config.json",
): LlamaShape {
  const fail = (detail: string): never => {
    throw new RangeError(`${source}: ${detail}`);
  };
  const archs = json.architectures;
  if (
    archs !== undefined
      ? !Array.isArray(archs) || !archs.includes("LlamaForCausalLM")
      : json.model_type !== "llama"
  ) {
    fail(
      `not a LLaMA config (architectures ${JSON.stringify(archs)}, model_type ${
        JSON.stringify(json.model_type)
      }); expected ["LlamaForCausalLM"]`,
    );
  }
  if ((json.hidden_act ?? "silu") !== "silu") {
    fail(`hidden_act ${JSON.stringify(json.hidden_act)} is not supported (silu)`);
  }
  if (json.rope_scaling !== undefined && json.rope_scaling !== null) {
    fail(`rope_scaling ${JSON.stringify(json.rope_scaling)} is not supported (expected null)`);
  }
  for (const key of ["attention_bias", "mlp_bias"]) {
    if (json[key] === true) fail(`${key}=true is not supported`);
  }
  const int = (key: string, fallback?: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      fail(`"${key}" must be a positive integer, found ${JSON.stringify(v)}`);
    }
    return v as number;
  };
  const num = (key: string, fallback: number): number => {
    const v = json[key] ?? fallback;
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) {
      fail(`"${key}" must be a positive number, found ${JSON.stringify(v)}`);
    }
    return v as number;
  };
  const hidden = int("hidden_size");
  const heads = int("num_attention_heads");
  const shape: LlamaShape = {
    hidden,
    layers: int("num_hidden_layers"),
    heads,
    kvHeads: int("num_key_value_heads", heads),
    headDim: int("head_dim", hidden / heads),
    ffn: int("intermediate_size"),
    vocab: int("vocab_size"),
    maxPositions: int("max_position_embeddings", 4096),
    rmsEps: num("rms_norm_eps", 1e-6),
    ropeTheta: num("rope_theta", 10000),
    tieEmbeddings: json.tie_word_embeddings === true,
  };
  if (json.image_codes !== undefined) shape.imageCodes = int("image_codes");
  if (shape.heads % shape.kvHeads !== 0) {
    fail(`num_attention_heads ${heads} is not a multiple of num_key_value_heads ${shape.kvHeads}`);
  }
  if (shape.headDim % 2 !== 0) fail(`head_dim ${shape.headDim} must be even for RoPE`);
  return shape;
}

/** Every tensor of a LLaMA of `s`, HF names and shapes, in checkpoint order. */
export function llamaTensorShapes(s: LlamaShape): { name: string; shape: number[] }[] {
  const D = s.hidden, q = s.heads * s.headDim, kv = s.kvHeads * s.headDim;
  const layer: Record<string, number[]> = {
    "input_layernorm.weight": [D],
    "self_attn.q_proj.weight": [q, D],
    "self_attn.k_proj.weight": [kv, D],
    "self_attn.v_proj.weight": [kv, D],
    "self_attn.o_proj.weight": [D, q],
    "post_attention_layernorm.weight": [D],
    "mlp.gate_proj.weight": [s.ffn, D],
    "mlp.up_proj.weight": [s.ffn, D],
    "mlp.down_proj.weight": [D, s.ffn],
  };
  const out = [{ name: "model.embed_tokens.weight", shape: [s.vocab, D] }];
  for (let i = 0; i < s.layers; i++) {
    for (const [hf] of LAYER_NAMES) out.push({ name: `model.layers.${i}.${hf}`, shape: layer[hf] });
  }
  out.push({ name: "model.norm.weight", shape: [D] });
  if (!s.tieEmbeddings) out.push({ name: "lm_head.weight", shape: [s.vocab, D] });
  return out;
}

/** llama.cpp's `general.file_type` (`enum llama_ftype`) of a file whose matrices are `type`. */
export const LLAMA_FILE_TYPE: Readonly<Record<GgmlType, number>> = Object.freeze({
  F32: 0,
  F16: 1,
  Q4_0: 2,
  Q8_0: 7,
  BF16: 32,
});

/** Options of {@link llamaGgufMetadata}. */
export interface LlamaGgufOptions {
  /** The type of the matrices (`general.file_type`). */
  type: GgmlType;
  /** `general.name` (default "LVM"). */
  name?: string;
}

/**
 * The GGUF metadata llama.cpp needs to load a LLaMA of `shape` (arch "llama"): hyperparameters,
 * `general.*`, and the image-code vocabulary ({@link llamaVocabMetadata}). `lvm.image_codes`
 * keeps our image-code boundary when the config has one.
 */
export function llamaGgufMetadata(shape: LlamaShape, options: LlamaGgufOptions): GgufMetadata {
  const { u32, f32, str } = ggufValue;
  const md: [string, GgufValue][] = [
    ["general.architecture", str("llama")],
    ["general.type", str("model")],
    ["general.name", str(options.name ?? "LVM")],
    ["general.file_type", u32(LLAMA_FILE_TYPE[options.type])],
    ["general.alignment", u32(32)],
    ["llama.vocab_size", u32(shape.vocab)],
    ["llama.context_length", u32(shape.maxPositions)],
    ["llama.embedding_length", u32(shape.hidden)],
    ["llama.block_count", u32(shape.layers)],
    ["llama.feed_forward_length", u32(shape.ffn)],
    ["llama.rope.dimension_count", u32(shape.headDim)],
    ["llama.attention.head_count", u32(shape.heads)],
    ["llama.attention.head_count_kv", u32(shape.kvHeads)],
    ["llama.attention.layer_norm_rms_epsilon", f32(shape.rmsEps)],
    ["llama.rope.freq_base", f32(shape.ropeTheta)],
  ];
  if (shape.headDim !== shape.hidden / shape.heads) {
    md.push(
      ["llama.attention.key_length", u32(shape.headDim)],
      ["llama.attention.value_length", u32(shape.headDim)],
    );
  }
  if (options.type === "Q8_0" || options.type === "Q4_0") {
    md.push(["general.quantization_version", u32(2)]);
  }
  if (shape.imageCodes !== undefined) md.push(["lvm.image_codes", u32(shape.imageCodes)]);
  md.push(...llamaVocabMetadata(shape.vocab, shape.imageCodes ?? shape.vocab));
  return new Map(md);
}

/** llama.cpp's token types (`enum llama_token_type`) used here. */
const TOKEN_CONTROL = 3, TOKEN_USER_DEFINED = 4;

/**
 * The vocabulary metadata of an image-code model, as llama.cpp (llama-vocab.cpp) loads it: a
 * byte-pair-encoding list (`tokenizer.ggml.model = "gpt2"`, no merges, the default
 * pre-tokenizer) of `vocab` tokens: `<img_N>` for the image codes (USER_DEFINED: text such as
 * `<img_5><img_17>` tokenizes to exactly [5, 17], and each prints as its name) and `<unused_K>`
 * for the reserved ids at and above `imageCodes` (CONTROL); no BOS/EOS added to prompts;
 * BOS = EOS = the first reserved id (the last id when none is reserved: llama.cpp always has an
 * end-of-generation id, and defaults it to 11, an image code).
 *
 * Measured with node-llama-cpp 3.21.1 (it tokenizes text while loading a model): with
 * `tokenizer.ggml.model = "none"` (placeholders for `llama.vocab_size` ids) the process aborts
 * ("Tokenizer not initialized"); with a SentencePiece list ("llama") without the 256 byte tokens
 * it dies on text it cannot encode (std::out_of_range); BPE drops bytes it has no token for, so
 * this list loads and text without image-code names tokenizes to nothing.
 */
export function llamaVocabMetadata(vocab: number, imageCodes = vocab): [string, GgufValue][] {
  if (!Number.isInteger(imageCodes) || imageCodes < 1 || imageCodes > vocab) {
    throw new RangeError(`image codes ${imageCodes} must be between 1 and the vocab ${vocab}`);
  }
  const tokens: string[] = [];
  const types = new Int32Array(vocab);
  for (let i = 0; i < vocab; i++) {
    tokens.push(i < imageCodes ? `<img_${i}>` : `<unused_${i - imageCodes}>`);
    types[i] = i < imageCodes ? TOKEN_USER_DEFINED : TOKEN_CONTROL;
  }
  const special = imageCodes < vocab ? imageCodes : vocab - 1;
  const { u32, str, bool, array } = ggufValue;
  return [
    ["tokenizer.ggml.model", str("gpt2")],
    ["tokenizer.ggml.pre", str("default")],
    ["tokenizer.ggml.tokens", array("STRING", tokens)],
    ["tokenizer.ggml.token_type", array("INT32", types)],
    ["tokenizer.ggml.merges", array("STRING", [])],
    ["tokenizer.ggml.bos_token_id", u32(special)],
    ["tokenizer.ggml.eos_token_id", u32(special)],
    ["tokenizer.ggml.add_bos_token", bool(false)],
    ["tokenizer.ggml.add_eos_token", bool(false)],
  ];
}

/** The shortest decimal that is the same f32 (1e-6 stored as f32 reads back as 1e-6). */
function shortestF32(x: number): number {
  for (let p = 1; p <= 9; p++) {
    const v = Number(x.toPrecision(p));
    if (Math.fround(v) === x) return v;
  }
  return x;
}

/**
 * A Hugging Face `config.json` object for the LLaMA in a GGUF file (arch "llama"): what
 * `@lvm/transformer`'s `configFromHf` reads. The vocabulary size comes from `llama.vocab_size`,
 * else the token list, else `token_embd.weight`; embeddings are tied when `output.weight` is
 * absent (as llama.cpp does); f32 values read back as their shortest decimal (1e-6, not
 * 9.99999997e-7). A missing or malformed key is a {@link GgufError} naming it.
 */
export function hfConfigFromGguf(g: GgufReader): Record<string, unknown> {
  const fail = (detail: string): never => {
    throw new GgufError(g.path, detail);
  };
  const arch = g.get("general.architecture");
  if (arch !== "llama") {
    fail(
      `general.architecture is ${JSON.stringify(arch)}; only "llama" files map to a LLaMA config`,
    );
  }
  const num = (key: string, fallback?: number): number => {
    const v = g.metadata.get(key);
    if (v === undefined && fallback !== undefined) return fallback;
    if (v === undefined) return fail(`metadata ${key} is missing`);
    if (typeof v.value === "number") return v.type === "FLOAT32" ? shortestF32(v.value) : v.value;
    if (typeof v.value === "bigint" && v.value <= BigInt(Number.MAX_SAFE_INTEGER)) {
      return Number(v.value);
    }
    return fail(`metadata ${key} is ${v.type}, expected a number`);
  };
  const hidden = num("llama.embedding_length");
  const heads = num("llama.attention.head_count");
  const tokens = g.get("tokenizer.ggml.tokens");
  const vocab = g.metadata.has("llama.vocab_size")
    ? num("llama.vocab_size")
    : Array.isArray(tokens)
    ? tokens.length
    : g.has("token_embd.weight")
    ? g.info("token_embd.weight").shape[0]
    : fail(
      "no llama.vocab_size, tokenizer.ggml.tokens or token_embd.weight to size the vocabulary",
    );
  const headDim = num(
    "llama.attention.key_length",
    num("llama.rope.dimension_count", hidden / heads),
  );
  const out: Record<string, unknown> = {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    hidden_size: hidden,
    intermediate_size: num("llama.feed_forward_length"),
    num_hidden_layers: num("llama.block_count"),
    num_attention_heads: heads,
    num_key_value_heads: num("llama.attention.head_count_kv", heads),
    vocab_size: vocab,
    max_position_embeddings: num("llama.context_length", 4096),
    rms_norm_eps: num("llama.attention.layer_norm_rms_epsilon", 1e-5),
    rope_theta: num("llama.rope.freq_base", 10000),
    rope_scaling: null,
    tie_word_embeddings: !g.has("output.weight"),
    hidden_act: "silu",
    attention_bias: false,
    torch_dtype: "float32",
  };
  if (headDim !== hidden / heads) out.head_dim = headDim;
  if (g.metadata.has("lvm.image_codes")) out.image_codes = num("lvm.image_codes");
  return out;
}

// ---------------------------------------------------------------------------------------------
// HF checkpoint -> GGUF tensors

/** One tensor of a planned LLaMA GGUF. */
export interface LlamaGgufTensor {
  /** The Hugging Face name it comes from. */
  hfName: string;
  /** Its llama.cpp name. */
  name: string;
  type: GgmlType;
  /** Row-major shape (as in the HF checkpoint). */
  shape: number[];
  /** Set for q_proj (attention heads) and k_proj (KV heads): rows are permuted by these heads. */
  heads?: number;
  /** Why its type differs from the one asked for, if it does. */
  note?: string;
}

/** What {@link planLlamaGguf} decided. */
export interface LlamaGgufPlan {
  metadata: GgufMetadata;
  tensors: LlamaGgufTensor[];
  /** Tensors of the checkpoint left out, with why (HF buffers, a tied lm_head copy). */
  skipped: { name: string; why: string }[];
}

/**
 * Plans the GGUF of a Hugging Face LLaMA: its metadata ({@link llamaGgufMetadata}), and for each
 * tensor its llama.cpp name, type and q/k permutation. Matrices get `type`; 1-D tensors (the
 * RMSNorm weights) stay F32, as llama.cpp keeps them; a matrix whose rows are not a multiple of 32
 * values cannot be block-quantized and falls back to F16 (with a `note`). Every tensor the config
 * implies must be in `tensors` with its shape; a tensor that is not part of a LLaMA is an error
 * naming it. Tensors are ordered as llama.cpp writes them: token_embd, each block, output_norm,
 * output.
 */
export function planLlamaGguf(
  shape: LlamaShape,
  tensors: readonly { name: string; shape: readonly number[] }[],
  type: GgmlType,
  options: { name?: string; source?: string } = {},
): LlamaGgufPlan {
  const source = options.source ?? "checkpoint";
  if (!isGgmlType(type)) {
    throw new TypeError(
      `unknown GGUF type ${JSON.stringify(type)}; expected F32, F16, BF16, Q8_0 or Q4_0`,
    );
  }
  const have = new Map(tensors.map((t) => [t.name, t.shape]));
  const expected = llamaTensorShapes(shape);
  const want = new Set(expected.map((e) => e.name));
  const skipped: { name: string; why: string }[] = [];
  for (const name of have.keys()) {
    if (want.has(name)) continue;
    if (name.endsWith(".rotary_emb.inv_freq")) {
      skipped.push({ name, why: "a RoPE buffer, recomputed by llama.cpp" });
    } else if (name === "lm_head.weight" && shape.tieEmbeddings) {
      skipped.push({ name, why: "tie_word_embeddings: llama.cpp uses token_embd" });
    } else {
      throw new RangeError(
        `${source}: tensor "${name}" is not part of a LLaMA of this config.json`,
      );
    }
  }
  const out: LlamaGgufTensor[] = expected.map(({ name: hfName, shape: s }) => {
    const got = have.get(hfName);
    if (!got) {
      throw new RangeError(
        `${source}: missing tensor "${hfName}" (expected [${s}] from config.json)`,
      );
    }
    if (got.length !== s.length || got.some((d, i) => d !== s[i])) {
      throw new RangeError(
        `${source}: tensor "${hfName}" has shape [${got}], expected [${s}] from config.json`,
      );
    }
    const t: LlamaGgufTensor = { hfName, name: hfToGgufName(hfName)!, type, shape: [...s] };
    if (s.length === 1) t.type = "F32";
    else if ((type === "Q8_0" || type === "Q4_0") && s[1] % 32 !== 0) {
      t.type = "F16";
      t.note = `rows of ${s[1]} values are not a multiple of 32: stored as F16, not ${type}`;
    }
    if (hfName.endsWith(".self_attn.q_proj.weight")) t.heads = shape.heads;
    if (hfName.endsWith(".self_attn.k_proj.weight")) t.heads = shape.kvHeads;
    return t;
  });
  return {
    metadata: llamaGgufMetadata(shape, { type, name: options.name }),
    tensors: out,
    skipped,
  };
}

/** The stored bytes of a planned tensor from its HF values: q/k rows permuted, then encoded. */
export function encodeLlamaTensor(t: LlamaGgufTensor, values: Float32Array): Uint8Array {
  const x = t.heads !== undefined ? permuteQK(values, t.shape[0], t.heads) : values;
  return encodeGgml(t.type, t.shape, x, `tensor ${JSON.stringify(t.hfName)}`);
}

// ---------------------------------------------------------------------------------------------
// GGUF -> a TensorSource under HF names

/** A tensor's stored blocks: its ggml type, row-major shape and bytes. */
export interface RawTensor {
  type: GgmlType;
  shape: number[];
  bytes: Uint8Array;
}

/**
 * A LLaMA GGUF file (arch "llama") as a `TensorSource` under Hugging Face names, so every loader
 * that takes one (the transformer's `loadLlamaFrom`) reads it unchanged:
 *
 * - `names()`, `info()`: HF names and row-major shapes; `dtype` is the stored type for F32, F16
 *   and BF16 tensors and F32 for Q8_0/Q4_0 ones (what `readRaw` returns for them).
 * - `readF32()`: f32 values in HF row order (q/k rows unpermuted, quantized tensors dequantized).
 * - {@link GgufLlamaSource.rawTensor}: the stored blocks (quantized ones as they are) for a GPU
 *   that takes them as they are, rows in HF order too: the file holds q/k rows in llama.cpp's
 *   permuted order ({@link llamaQkRowOrder}), and whole rows are moved back here.
 * - {@link GgufLlamaSource.config}: the config.json object ({@link hfConfigFromGguf}).
 *
 * Tensors without an HF name (none in a file written here) keep their llama.cpp names.
 */
export class GgufLlamaSource implements TensorSource {
  readonly #hfToGguf = new Map<string, string>();
  readonly #heads = new Map<string, number>();
  /** Scalar metadata as strings (arrays are left out). */
  readonly metadata: Record<string, string>;

  /** Wraps `gguf` (left open; {@link GgufLlamaSource.close} closes it). */
  constructor(readonly gguf: GgufReader) {
    const config = hfConfigFromGguf(gguf); // checks the architecture and head counts
    const heads = config.num_attention_heads as number;
    const kvHeads = config.num_key_value_heads as number;
    for (const name of gguf.names()) {
      const hf = ggufToHfName(name) ?? name;
      this.#hfToGguf.set(hf, name);
      if (hf.endsWith(".self_attn.q_proj.weight")) this.#heads.set(hf, heads);
      if (hf.endsWith(".self_attn.k_proj.weight")) this.#heads.set(hf, kvHeads);
    }
    this.metadata = {};
    for (const [k, v] of gguf.metadata) if (v.type !== "ARRAY") this.metadata[k] = String(v.value);
  }

  /** A LLaMA GGUF in memory (`name` for messages). */
  static async fromBytes(bytes: Uint8Array, name = "memory"): Promise<GgufLlamaSource> {
    const g = await GgufReader.fromSource(new MemorySource(bytes, name));
    try {
      return new GgufLlamaSource(g);
    } catch (e) {
      g.close();
      throw e;
    }
  }

  get path(): string {
    return this.gguf.path;
  }

  /** HF names, in file order. */
  names(): string[] {
    return [...this.#hfToGguf.keys()];
  }

  has(name: string): boolean {
    return this.#hfToGguf.has(name);
  }

  /** The llama.cpp name of `name` (an HF name); a missing tensor is a {@link GgufError}. */
  ggufName(name: string): string {
    const g = this.#hfToGguf.get(name);
    if (g === undefined) {
      throw new GgufError(
        this.path,
        `no such tensor (HF name; llama.cpp name ${hfToGgufName(name) ?? "unknown"})`,
        name,
      );
    }
    return g;
  }

  info(name: string): TensorInfo {
    const t = this.gguf.info(this.ggufName(name));
    const dtype: StDType = t.type === "F16" || t.type === "BF16" ? t.type : "F32";
    const n = t.shape.reduce((a, b) => a * b, 1);
    return { name, dtype, shape: t.shape, byteLength: n * (dtype === "F32" ? 4 : 2) };
  }

  /** The GGUF type of `name` (an HF name). */
  ggmlType(name: string): GgmlType {
    return this.gguf.info(this.ggufName(name)).type;
  }

  /**
   * The stored blocks of `name` (an HF name), rows in HF order: for q/k the file's llama.cpp row
   * order is undone by moving whole rows ({@link reorderRows}), which leaves each row's blocks
   * bit for bit as stored. Read into the start of `out` when given (at least the tensor's stored
   * size; q/k rows are then reordered into a new array).
   */
  async rawTensor(name: string, out?: Uint8Array): Promise<RawTensor> {
    const t = this.gguf.info(this.ggufName(name));
    let bytes = await this.gguf.readRaw(t.name, out);
    const heads = this.#heads.get(name);
    if (heads !== undefined && t.shape.length === 2) {
      const order = invertOrder(llamaQkRowOrder(t.shape[0], heads));
      bytes = reorderRows(bytes, ggmlBytes(t.type, [1, t.shape[1]]), order);
    }
    return { type: t.type, shape: t.shape, bytes };
  }

  /**
   * HF-order bytes in `info(name).dtype` (quantized tensors dequantized to f32), into the start of
   * `out` when given (at least `info(name).byteLength` bytes).
   */
  async readRaw(name: string, out?: Uint8Array): Promise<Uint8Array> {
    const quant = (t: string) => t === "Q8_0" || t === "Q4_0";
    // Stored as it is returned: read straight into `out`.
    const direct = out && !quant(this.ggmlType(name));
    const { type, shape, bytes } = await this.rawTensor(name, direct ? out : undefined);
    let raw = bytes;
    if (quant(type)) {
      raw = new Uint8Array(
        dequantize(type as QuantType, bytes, shape.reduce((a, b) => a * b, 1)).buffer,
      );
    }
    if (!out || raw.buffer === out.buffer && raw.byteOffset === out.byteOffset) return raw;
    const dst = intoBuffer(out, raw.length, `${this.path}: tensor "${name}"`);
    dst.set(raw);
    return dst;
  }

  async readF32(name: string, out?: Float32Array): Promise<Float32Array> {
    const { type, shape, bytes } = await this.rawTensor(name);
    const n = shape.reduce((a, b) => a * b, 1);
    const label = `${this.path}: tensor "${name}"`;
    if (out && out.length !== n) {
      throw new RangeError(`${label}: output holds ${out.length} floats, the tensor has ${n}`);
    }
    return type === "Q8_0" || type === "Q4_0"
      ? dequantize(type, bytes, n, out)
      : toF32(type, bytes, label, out);
  }

  /** The Hugging Face config.json object of the file ({@link hfConfigFromGguf}). */
  config(): Record<string, unknown> {
    return hfConfigFromGguf(this.gguf);
  }

  close(): void {
    this.gguf.close();
  }
}
