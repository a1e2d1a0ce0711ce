/**
 * The LLaMA decoder (HF `LlamaForCausalLM` semantics) on WebGPU: parameters and gradients as named
 * tensors in Hugging Face key names, the training forward (loss and logits) and a hand-written
 * backward for every parameter, in the llm.c style: each layer's activations are kept from the forward
 * and each op's backward kernel is called in reverse order.
 *
 * Per layer (N = B*T rows, D hidden, H heads of hd, KVH key/value heads, F FFN):
 *   h1 = rmsnorm(x, ln1)                       (N,D)     rstd1 (N) kept
 *   q = rope(h1 Wq^T), k = rope(h1 Wk^T)       (B,T,H,hd), (B,T,KVH,hd)
 *   v = h1 Wv^T                                (B,T,KVH,hd)
 *   a, lse = attention(q, k, v)                (B,T,H,hd), (B,H,T)   causal, flash-style
 *   xm = x + a Wo^T ; h2 = rmsnorm(xm, ln2)    (N,D)     one fused addRmsnorm
 *   g = h2 Wg^T, u = h2 Wu^T ; s = silu(g)*u   (N,F)
 *   x' = xm + s Wd^T                           (N,D)     added by the next layer's addRmsnorm
 * then xf = rmsnorm(x_L, norm), logits = xf Whead^T (Whead = lm_head, or the embedding when tied),
 * loss = mean cross-entropy. The classifier runs over row chunks so that logits never exceed one
 * storage binding (4096 x 8292 f32 does); in training the cross-entropy kernel turns each logits chunk
 * into dlogits in place, so the backward starts from them without a second pass over the vocabulary.
 *
 * Norms, softmax, logits and all activations are f32. For inference the matrices may be stored f16
 * (`dtype: "f16"`) or block-quantized (`"q8"`: GGML Q8_0, `"q4"`: Q4_0; @lvm/kernels' QuantWeight,
 * dequantized inside the matrix kernels), the embedding included (rows gathered by `embeddingQ`,
 * and the classifier when tied). A matrix whose rows are not a multiple of 32 values cannot be
 * block-quantized and is kept f16 instead. Training needs f32 parameters.
 * @module
 */
import {
  addRmsnorm,
  attention,
  attentionBackward,
  buildEmbeddingIndex,
  crossEntropy,
  crossEntropyLoss,
  embeddingAny,
  embeddingBackward,
  type EmbeddingIndex,
  linearAny,
  matmul,
  QuantWeight,
  rmsnorm,
  rmsnormBackward,
  rope,
  ropeBackward,
  swiglu,
  swigluBackward,
  validateIds,
} from "@lvm/kernels";
import type { Gpu, Tensor } from "@lvm/gpu";
import { QK, type QuantType } from "@lvm/weights";
import {
  EMBED,
  FINAL_NORM,
  layerNames,
  type LlamaConfig,
  LM_HEAD,
  paramSpecs,
  validateConfig,
} from "./config.ts";
import { type HostWeights, type InitOptions, initWeights } from "./init.ts";

/**
 * Storage type of the weight matrices (norm weights are always f32): f32, f16, or GGML's block
 * quantization `q8` (Q8_0, 8.5 bits per weight) / `q4` (Q4_0, 4.5 bits per weight).
 */
export type WeightDType = "f32" | "f16" | "q8" | "q4";

/** The weight dtypes, for flags and checks. */
export const WEIGHT_DTYPES: readonly WeightDType[] = ["f32", "f16", "q8", "q4"];

/** The GGML block type of a quantized {@link WeightDType}, or null for f32/f16. */
export function quantTypeOf(dtype: WeightDType): QuantType | null {
  return dtype === "q8" ? "Q8_0" : dtype === "q4" ? "Q4_0" : null;
}

/** A parameter as the kernels read it: a tensor (f32/f16) or a block-quantized matrix. */
export type Weight = Tensor | QuantWeight;

/** A (B,T) batch of token ids on the host (row-major, B*T values). */
export interface LlamaBatch {
  B: number;
  T: number;
  /** (B*T) input ids. */
  inputs: ArrayLike<number>;
  /** (B*T) target ids (the next tokens); negative = ignored. Omit for logits only. */
  targets?: ArrayLike<number>;
}

/** Options of {@link Llama.forward}. */
export interface ForwardOptions {
  /** Keep activations and produce dlogits for {@link Llama.backward} (needs targets, f32 weights). */
  train?: boolean;
  /**
   * Return the logits (the caller releases them). Default: only when no targets are given (with
   * targets the loss is usually all that is wanted; in training the logits become dlogits in place).
   */
  keepLogits?: boolean;
  /** Multiplier of the loss gradient (e.g. 1/accumulation steps). Default 1. */
  gradScale?: number;
}

/** What {@link Llama.forward} returns; all tensors stay on the GPU. */
export interface ForwardResult {
  /** (1) mean cross-entropy over rows with target >= 0 (when targets were given). */
  loss?: Tensor;
  /** Row chunks of the (B*T, V) logits, in row order (when kept). One chunk unless over a binding. */
  logits?: Tensor[];
}

/** One layer's saved activations. */
interface LayerActs {
  x: Tensor; // (N,D) residual stream entering the layer
  rstd1: Tensor; // (N)
  h1: Tensor; // (N,D)
  q: Tensor; // (B,T,H,hd) after RoPE
  k: Tensor; // (B,T,KVH,hd) after RoPE
  v: Tensor; // (B,T,KVH,hd)
  att: Tensor; // (B,T,H,hd)
  lse: Tensor; // (B,H,T)
  xm: Tensor; // (N,D) residual after attention
  rstd2: Tensor; // (N)
  h2: Tensor; // (N,D)
  gate: Tensor; // (N,F)
  up: Tensor; // (N,F)
  act: Tensor; // (N,F) silu(gate)*up
}

/** Everything the backward needs from one training forward. */
interface Saved {
  B: number;
  T: number;
  index: EmbeddingIndex;
  layers: LayerActs[];
  xL: Tensor; // (N,D) final residual stream
  rstdF: Tensor; // (N)
  xf: Tensor; // (N,D) final-norm output
  dlogits: Tensor[]; // row chunks (R_i,V)
  gradScale: number;
}

/** Options to build a model's tensors. */
export interface ModelOptions {
  /** Storage of the weight matrices (default f32). */
  dtype?: WeightDType;
  /**
   * Most rows per classifier chunk (default: as many as fit one storage binding, (rows, V) f32).
   * Smaller values bound the logits' memory; tests use them to exercise the chunked path.
   */
  headChunkRows?: number;
  /**
   * Q4_0 matrices (dtype q4, or Q4_0 blocks from a GGUF): one-row products (decode steps, the
   * prefill's last-row logits) quantize x to 8 bits per 32-block and multiply integers, as llama.cpp
   * does for its Q4_0 dot products (@lvm/kernels' `gemvInt`: faster on a CPU adapter; off the exact
   * dequantized product by x's rounding). Default true; false keeps the exact product everywhere.
   */
  quantizeActivations?: boolean;
}

/**
 * A LLaMA model on one {@link Gpu}: `params` maps every HF tensor name to its GPU tensor; after
 * {@link backward}, `grads` maps the same names to f32 gradients.
 */
export class Llama {
  /**
   * Parameters held as tensors, by Hugging Face name (matrices in `dtype`, norm weights f32; with a
   * quantized dtype, only the norms and the matrices that fell back to f16).
   */
  readonly params: Map<string, Tensor> = new Map();
  /** Block-quantized matrices by Hugging Face name (dtype q8/q4, or {@link setQuantParam}). */
  readonly quantized: Map<string, QuantWeight> = new Map();
  /** Gradients by Hugging Face name (f32), after the first {@link backward}. */
  readonly grads: Map<string, Tensor> = new Map();
  #saved: Saved | null = null;

  /** Storage of the weight matrices. */
  readonly dtype: WeightDType;
  readonly #headRows?: number;
  /** See {@link ModelOptions.quantizeActivations}. */
  readonly quantizeActivations: boolean;

  private constructor(readonly gpu: Gpu, readonly config: LlamaConfig, options: ModelOptions) {
    this.dtype = options.dtype ?? "f32";
    if (!WEIGHT_DTYPES.includes(this.dtype)) {
      throw new TypeError(
        `Llama: dtype must be one of ${WEIGHT_DTYPES.map((d) => `"${d}"`).join(", ")}, found ${
          JSON.stringify(this.dtype)
        }`,
      );
    }
    const r = options.headChunkRows;
    if (r !== undefined && (!Number.isInteger(r) || r < 1)) {
      throw new RangeError(`Llama: headChunkRows must be a positive integer, found ${r}`);
    }
    this.#headRows = r;
    this.quantizeActivations = options.quantizeActivations ?? true;
  }

  /** QuantWeight options for a matrix of block type `type` (see quantizeActivations). */
  #quantOptions(type: QuantType): { quantizeX: boolean } {
    return { quantizeX: type === "Q4_0" && this.quantizeActivations };
  }

  /** A model from host weights (every parameter of {@link paramSpecs}, f32, checked for shape). */
  static fromWeights(
    gpu: Gpu,
    config: LlamaConfig,
    weights: HostWeights,
    options: ModelOptions = {},
  ): Llama {
    validateConfig(config);
    const m = new Llama(gpu, config, options);
    for (const { name, shape } of paramSpecs(config)) {
      const w = weights.get(name);
      const n = shape.reduce((a, b) => a * b, 1);
      if (!w) throw new RangeError(`Llama.fromWeights: missing weight "${name}" [${shape}]`);
      if (w.length !== n) {
        throw new RangeError(
          `Llama.fromWeights: weight "${name}" has ${w.length} values, expected [${shape}] = ${n}`,
        );
      }
      m.setParam(name, w);
    }
    return m;
  }

  /** A freshly initialised model (HF init: N(0, 0.02^2) matrices, unit norms; seeded). */
  static init(gpu: Gpu, config: LlamaConfig, options: ModelOptions & InitOptions = {}): Llama {
    return Llama.fromWeights(gpu, config, initWeights(config, options), options);
  }

  /**
   * An empty model to be filled by {@link setParam} (used by streaming loaders). Every parameter must
   * be set before use.
   */
  static empty(gpu: Gpu, config: LlamaConfig, options: ModelOptions = {}): Llama {
    validateConfig(config);
    return new Llama(gpu, config, options);
  }

  /**
   * Uploads one parameter (f32 host values; stored as the model's dtype when it is a matrix). With
   * dtype q8/q4 a matrix is quantized here, on the host, before upload (so a loader holds one f32
   * tensor at a time); rows of a length that is not a multiple of 32 are stored f16 instead.
   */
  setParam(name: string, values: ArrayLike<number>): void {
    const spec = this.#spec(name);
    const n = spec.shape.reduce((a, b) => a * b, 1);
    if (values.length !== n) {
      throw new RangeError(
        `setParam: "${name}" has ${values.length} values, expected [${spec.shape}] = ${n}`,
      );
    }
    const matrix = spec.shape.length === 2;
    const qt = matrix ? quantTypeOf(this.dtype) : null;
    if (qt && spec.shape[1] % QK === 0) {
      this.#dropParam(name);
      this.quantized.set(
        name,
        QuantWeight.fromF32(this.gpu, qt, spec.shape, values, this.#quantOptions(qt)),
      );
      return;
    }
    const dtype = !matrix ? "f32" : qt ? "f16" : this.dtype as "f32" | "f16";
    const old = this.params.get(name);
    if (old && old.dtype === dtype) this.gpu.write(old, values);
    else {
      this.#dropParam(name);
      this.params.set(name, this.gpu.upload(values, spec.shape, dtype));
    }
  }

  /**
   * Sets matrix `name` from GGUF blocks of `type` (Q8_0/Q4_0, row after row; @lvm/weights'
   * quant.ts layout), kept quantized whatever the model's dtype. `shape` must be the parameter's
   * [out, in]. For GGUF's q/k projections (llama.cpp permutes their rows for its RoPE), the caller
   * restores Hugging Face's row order before calling.
   */
  setQuantParam(name: string, type: QuantType, shape: readonly number[], bytes: Uint8Array): void {
    const spec = this.#spec(name);
    if (
      spec.shape.length !== 2 || shape.length !== 2 || shape.some((d, i) => d !== spec.shape[i])
    ) {
      throw new RangeError(
        `setQuantParam: "${name}" is [${spec.shape}], got ${type} blocks of shape [${shape}]` +
          (spec.shape.length === 2 ? "" : " (only matrices can be quantized)"),
      );
    }
    const w = QuantWeight.fromBlocks(this.gpu, type, shape, bytes, this.#quantOptions(type));
    this.#dropParam(name);
    this.quantized.set(name, w);
  }

  /** Frees `name` wherever it is held (before it is set again in another form). */
  #dropParam(name: string): void {
    this.params.get(name)?.release();
    this.params.delete(name);
    this.quantized.get(name)?.release();
    this.quantized.delete(name);
  }

  #specs: Map<string, { name: string; shape: number[] }> | null = null;
  #spec(name: string) {
    this.#specs ??= new Map(paramSpecs(this.config).map((s) => [s.name, s]));
    const s = this.#specs.get(name);
    if (!s) {
      throw new RangeError(
        `"${name}" is not a parameter of this model (${this.config.layers} layers, ${
          this.config.tieEmbeddings ? "tied" : "untied"
        } embeddings)`,
      );
    }
    return s;
  }

  /**
   * Parameter `name` as a tensor (throws naming it when absent, or when it is block-quantized:
   * read those with {@link weight} or {@link readParam}).
   */
  param(name: string): Tensor {
    const t = this.params.get(name);
    if (t) return t;
    const q = this.quantized.get(name);
    if (q) {
      throw new TypeError(
        `parameter "${name}" is block-quantized (${q.type}); use weight() or readParam()`,
      );
    }
    throw new RangeError(`parameter "${name}" has not been set`);
  }

  /** Parameter `name` as the kernels read it: a tensor or a {@link QuantWeight}. */
  weight(name: string): Weight {
    return this.quantized.get(name) ?? this.param(name);
  }

  /** Names of every parameter set so far (tensors and quantized matrices). */
  paramNames(): string[] {
    return [...this.params.keys(), ...this.quantized.keys()];
  }

  /** GPU bytes of the parameters (tensors and quantized matrices). */
  get weightBytes(): number {
    let n = 0;
    for (const t of this.params.values()) n += t.byteLength;
    for (const q of this.quantized.values()) n += q.bytes;
    return n;
  }

  /** The classifier weight: lm_head, or the embedding when tied. */
  get head(): Weight {
    return this.weight(this.config.tieEmbeddings ? EMBED : LM_HEAD);
  }

  /** Rows per classifier chunk: the most whose (rows, V) f32 logits fit one binding. */
  headChunkRows(): number {
    const max = this.gpu.limits.maxStorageBufferBindingSize;
    const fit = Math.max(1, Math.floor(max / (this.config.vocab * 4)));
    return Math.min(fit, this.#headRows ?? fit);
  }

  /**
   * Reads every parameter back as f32, by name (for saving and tests): tensors in one GPU->CPU
   * read, quantized matrices dequantized (the values the kernels compute with).
   */
  async readParams(): Promise<HostWeights> {
    const names = [...this.params.keys()];
    const values = await this.gpu.readMany(names.map((n) => this.params.get(n)!));
    const f32 = (v: ArrayLike<number>) => v instanceof Float32Array ? v : Float32Array.from(v);
    const out: HostWeights = new Map(names.map((n, i) => [n, f32(values[i])]));
    for (const [n, q] of this.quantized) out.set(n, await q.readF32());
    return out;
  }

  /** Reads parameter `name` back as f32 (dequantized when quantized). */
  async readParam(name: string): Promise<Float32Array> {
    const q = this.quantized.get(name);
    return q ? await q.readF32() : await this.gpu.readF32(this.param(name));
  }

  // -------------------------------------------------------------------------------------------
  // Forward

  /**
   * Runs the model on a (B,T) batch. With `targets` the mean cross-entropy is returned as a (1)
   * tensor; with `train` the activations are kept and dlogits computed for {@link backward}.
   * Records GPU work only: read the results with `gpu.read`.
   */
  forward(batch: LlamaBatch, options: ForwardOptions = {}): ForwardResult {
    const { gpu, config: c } = this;
    const { B, T } = batch;
    const N = B * T;
    const train = options.train ?? false;
    const keepLogits = options.keepLogits ?? !batch.targets;
    if (!Number.isInteger(B) || !Number.isInteger(T) || B < 1 || T < 1) {
      throw new RangeError(`forward: B and T must be positive integers, found B=${B}, T=${T}`);
    }
    if (T > c.maxPositions) {
      throw new RangeError(
        `forward: T=${T} exceeds the model's maxPositions (${c.maxPositions}); ` +
          `use sequences of at most ${c.maxPositions} tokens`,
      );
    }
    if (batch.inputs.length !== N) {
      throw new RangeError(`forward: inputs has ${batch.inputs.length} ids, expected B*T = ${N}`);
    }
    if (batch.targets && batch.targets.length !== N) {
      throw new RangeError(`forward: targets has ${batch.targets.length} ids, expected ${N}`);
    }
    if (train && !batch.targets) throw new RangeError("forward: train needs targets");
    if (train && (this.dtype !== "f32" || this.quantized.size > 0)) {
      const q = [...this.quantized.values()][0];
      throw new TypeError(
        `forward: training needs f32 weights, this model stores ${
          this.dtype === "f32" ? `block-quantized ${q.type} matrices` : this.dtype
        } (load it with dtype "f32" to train)`,
      );
    }
    validateIds(batch.inputs, c.vocab, "inputs");
    if (batch.targets) {
      for (let i = 0; i < N; i++) {
        const t = batch.targets[i];
        if (!Number.isInteger(t) || t >= c.vocab) {
          throw new RangeError(`targets[${i}] is ${t}, expected an integer below ${c.vocab}`);
        }
      }
    }
    if (train) this.releaseActivations(); // a pending, never differentiated training forward

    const { D, H, KVH, hd } = dims(c);
    const ids = gpu.upload(batch.inputs, [B, T], "i32");
    let x = embeddingAny(gpu, ids, this.weight(EMBED)).view([N, D]); // (N,D)
    ids.release();
    const layers: LayerActs[] = [];
    let branch: Tensor | null = null; // (N,D) output of the last sublayer, not yet added to x

    for (let i = 0; i < c.layers; i++) {
      const n = layerNames(i);
      let h1: Tensor, rstd1: Tensor;
      if (branch) {
        const r = addRmsnorm(gpu, branch, x, this.param(n.ln1), c.rmsEps);
        if (!train) x.release(); // in training, x is the previous layer's saved xm
        branch.release();
        [x, h1, rstd1] = [r.sum, r.y, r.rstd];
      } else {
        ({ y: h1, rstd: rstd1 } = rmsnorm(gpu, x, this.param(n.ln1), c.rmsEps));
      }
      const ropeOpts = { headDim: hd, theta: c.ropeTheta };
      const q = linearAny(gpu, h1, this.weight(n.q)).view([B, T, H, hd]);
      rope(gpu, q, { ...ropeOpts, heads: H, out: q });
      const k = linearAny(gpu, h1, this.weight(n.k)).view([B, T, KVH, hd]);
      rope(gpu, k, { ...ropeOpts, heads: KVH, out: k });
      const v = linearAny(gpu, h1, this.weight(n.v)).view([B, T, KVH, hd]);
      const { out: att, lse } = attention(gpu, q, k, v);
      const ao = linearAny(gpu, att.view([N, H * hd]), this.weight(n.o)); // (N,D)
      const r2 = addRmsnorm(gpu, ao, x, this.param(n.ln2), c.rmsEps);
      ao.release();
      const gate = linearAny(gpu, r2.y, this.weight(n.gate)); // (N,F)
      const up = linearAny(gpu, r2.y, this.weight(n.up)); // (N,F)
      const act = swiglu(gpu, gate, up); // (N,F)
      branch = linearAny(gpu, act, this.weight(n.down)); // (N,D)
      if (train) {
        layers.push({
          x,
          rstd1,
          h1,
          q,
          k,
          v,
          att,
          lse,
          xm: r2.sum,
          rstd2: r2.rstd,
          h2: r2.y,
          gate,
          up,
          act,
        });
      } else {
        for (const t of [x, rstd1, h1, q, k, v, att, lse, r2.rstd, r2.y, gate, up, act]) {
          t.release();
        }
      }
      x = r2.sum;
    }
    let xL: Tensor, xf: Tensor, rstdF: Tensor;
    if (branch) {
      const r = addRmsnorm(gpu, branch, x, this.param(FINAL_NORM), c.rmsEps);
      branch.release();
      if (!train) x.release();
      [xL, xf, rstdF] = [r.sum, r.y, r.rstd];
    } else {
      ({ y: xf, rstd: rstdF } = rmsnorm(gpu, x, this.param(FINAL_NORM), c.rmsEps));
      xL = x;
    }

    // Classifier over row chunks.
    const logits = this.#head(xf);
    const result: ForwardResult = {};
    let dlogits: Tensor[] = [];
    if (batch.targets) {
      const targets = gpu.upload(batch.targets, [N], "i32");
      if (train) {
        const ce = crossEntropy(gpu, logits, targets, {
          gradScale: options.gradScale ?? 1,
          inPlace: !keepLogits,
        });
        dlogits = ce.dlogits;
        result.loss = ce.loss;
        ce.losses.release();
        ce.count.release();
      } else {
        const ce = crossEntropyLoss(gpu, logits, targets);
        result.loss = ce.loss;
        ce.losses.release();
        ce.count.release();
      }
      targets.release();
    }
    if (keepLogits) result.logits = logits;
    else if (!train) logits.forEach((t) => t.release());

    if (train) {
      this.#saved = {
        B,
        T,
        index: buildEmbeddingIndex(batch.inputs, c.vocab),
        layers,
        xL,
        rstdF,
        xf,
        dlogits,
        gradScale: options.gradScale ?? 1,
      };
    } else {
      for (const t of [xL, rstdF, xf]) t.release();
    }
    return result;
  }

  /** logits chunks (R_i, V) of xf (N, D) rows. */
  #head(xf: Tensor): Tensor[] {
    const [N, D] = xf.shape;
    const R = this.headChunkRows();
    if (N <= R) return [linearAny(this.gpu, xf, this.head)];
    const chunks: Tensor[] = [];
    for (let r0 = 0; r0 < N; r0 += R) {
      const n = Math.min(R, N - r0);
      const part = this.gpu.empty([n, D]);
      this.gpu.copy(xf, part, n * D * 4, r0 * D * 4, 0);
      chunks.push(linearAny(this.gpu, part, this.head));
      part.release();
    }
    return chunks;
  }

  // -------------------------------------------------------------------------------------------
  // Backward

  /** Zeroed f32 gradients for every parameter (reusing the pool's buffers). */
  zeroGrads(): void {
    for (const { name, shape } of paramSpecs(this.config)) {
      this.grads.get(name)?.release();
      this.grads.set(name, this.gpu.zeros(shape));
    }
  }

  /**
   * Backward of the last training {@link forward}: gradients of the (scaled) mean loss for every
   * parameter, into {@link grads}. With `accumulate` they are added to the existing gradients
   * (gradient accumulation); otherwise the gradients are zeroed first. Frees the activations.
   */
  backward(options: { accumulate?: boolean } = {}): Map<string, Tensor> {
    const s = this.#saved;
    if (!s) {
      throw new Error("backward: no training forward to differentiate (call forward with train)");
    }
    const { gpu, config: c } = this;
    if (!options.accumulate || this.grads.size === 0) this.zeroGrads();
    const g = (name: string) => this.grads.get(name)!;
    const { D, H, KVH, hd } = dims(c);
    const { B, T } = s;
    const N = B * T;
    const acc = { accumulate: true };

    // Classifier: dxf = dlogits Whead, dWhead += dlogits^T xf (per row chunk).
    const headName = c.tieEmbeddings ? EMBED : LM_HEAD;
    const head = this.param(headName); // training forwards need f32 tensors
    let dxf: Tensor;
    if (s.dlogits.length === 1) {
      dxf = matmul(gpu, s.dlogits[0], head); // (N,D)
      matmul(gpu, s.dlogits[0], s.xf, { transA: true, out: g(headName), ...acc });
    } else {
      dxf = gpu.empty([N, D]);
      let r0 = 0;
      for (const dl of s.dlogits) {
        const n = dl.shape[0];
        const part = gpu.empty([n, D]);
        gpu.copy(s.xf, part, n * D * 4, r0 * D * 4, 0);
        matmul(gpu, dl, part, { transA: true, out: g(headName), ...acc });
        const dpart = matmul(gpu, dl, head); // (n,D)
        gpu.copy(dpart, dxf, n * D * 4, 0, r0 * D * 4);
        part.release();
        dpart.release();
        r0 += n;
      }
    }
    s.dlogits.forEach((t) => t.release());
    // Final norm: dres is the gradient of the residual stream from here down.
    const rf = rmsnormBackward(gpu, s.xL, this.param(FINAL_NORM), s.rstdF, dxf, {
      dwAccumulate: g(FINAL_NORM),
    });
    const dres = rf.dx; // (N,D)
    dxf.release();
    s.xL.release();
    s.rstdF.release();
    s.xf.release();

    for (let i = c.layers - 1; i >= 0; i--) {
      const n = layerNames(i);
      const a = s.layers[i];
      // MLP: x' = xm + down(act)
      const dact = matmul(gpu, dres, this.param(n.down)); // (N,F)
      matmul(gpu, dres, a.act, { transA: true, out: g(n.down), ...acc });
      const { dgate, dup } = swigluBackward(gpu, a.gate, a.up, dact);
      dact.release();
      const dh2 = matmul(gpu, dgate, this.param(n.gate)); // (N,D)
      matmul(gpu, dup, this.param(n.up), { out: dh2, ...acc });
      matmul(gpu, dgate, a.h2, { transA: true, out: g(n.gate), ...acc });
      matmul(gpu, dup, a.h2, { transA: true, out: g(n.up), ...acc });
      dgate.release();
      dup.release();
      rmsnormBackward(gpu, a.xm, this.param(n.ln2), a.rstd2, dh2, {
        dxAccumulate: dres,
        dwAccumulate: g(n.ln2),
      });
      dh2.release();
      // Attention: xm = x + o(att)
      const datt = matmul(gpu, dres, this.param(n.o)).view([B, T, H, hd]); // (B,T,H,hd)
      matmul(gpu, dres, a.att.view([N, H * hd]), { transA: true, out: g(n.o), ...acc });
      const { dq, dk, dv } = attentionBackward(gpu, a.q, a.k, a.v, a.att, a.lse, datt);
      datt.release();
      const ropeOpts = { headDim: hd, theta: c.ropeTheta };
      ropeBackward(gpu, dq, { ...ropeOpts, heads: H, out: dq });
      ropeBackward(gpu, dk, { ...ropeOpts, heads: KVH, out: dk });
      const dq2 = dq.view([N, H * hd]), dk2 = dk.view([N, KVH * hd]), dv2 = dv.view([N, KVH * hd]);
      const dh1 = matmul(gpu, dq2, this.param(n.q)); // (N,D)
      matmul(gpu, dk2, this.param(n.k), { out: dh1, ...acc });
      matmul(gpu, dv2, this.param(n.v), { out: dh1, ...acc });
      matmul(gpu, dq2, a.h1, { transA: true, out: g(n.q), ...acc });
      matmul(gpu, dk2, a.h1, { transA: true, out: g(n.k), ...acc });
      matmul(gpu, dv2, a.h1, { transA: true, out: g(n.v), ...acc });
      dq.release();
      dk.release();
      dv.release();
      rmsnormBackward(gpu, a.x, this.param(n.ln1), a.rstd1, dh1, {
        dxAccumulate: dres,
        dwAccumulate: g(n.ln1),
      });
      dh1.release();
      for (const t of Object.values(a)) (t as Tensor).release();
    }
    embeddingBackward(gpu, s.index, dres, c.vocab, { accumulate: g(EMBED) });
    dres.release();
    this.#saved = null;
    return this.grads;
  }

  /** Frees the activations of a training forward that will not be differentiated. */
  releaseActivations(): void {
    const s = this.#saved;
    if (!s) return;
    for (const a of s.layers) for (const t of Object.values(a)) (t as Tensor).release();
    for (const t of [s.xL, s.rstdF, s.xf, ...s.dlogits]) t.release();
    this.#saved = null;
  }

  /** Frees every tensor of the model (parameters, gradients, activations). */
  release(): void {
    this.releaseActivations();
    for (const t of this.params.values()) t.release();
    for (const q of this.quantized.values()) q.release();
    for (const t of this.grads.values()) t.release();
    this.params.clear();
    this.quantized.clear();
    this.grads.clear();
  }
}

/** Sizes derived from a config, in the letters the code uses. */
export interface Dims {
  D: number;
  H: number;
  KVH: number;
  hd: number;
  F: number;
  V: number;
}

/** Derived sizes: D hidden, H heads, KVH kv heads, hd head dim, F FFN, V vocab. */
export function dims(c: LlamaConfig): Dims {
  return { D: c.hidden, H: c.heads, KVH: c.kvHeads, hd: c.headDim, F: c.ffn, V: c.vocab };
}
