/**
 * Inference with a KV cache: prefill a prompt (in row chunks, so a 3840-token prompt of the 7B never
 * needs an activation over one storage binding), then one decode step per new token, and scoring
 * (log-probabilities of a sequence's tokens) through the same chunked path.
 *
 * A decode step records the whole forward of one token into one submit and reads back one row of
 * logits: no pipeline is compiled and no buffer created after the first step (every temporary goes
 * back to the pool and is handed out again at the same size; the token id is written into one
 * persistent (1) tensor; positions travel in uniform parameters).
 * @module
 */
import {
  addRmsnorm,
  attentionDecode,
  embedding,
  type Gpu,
  KvCache,
  kvCacheWrite,
  linear,
  logSoftmaxGather,
  PackedWeight,
  rmsnorm,
  rope,
  swiglu,
  type Tensor,
  validateIds,
} from "@lvm/kernels";
import { EMBED, FINAL_NORM, layerNames, LM_HEAD } from "./config.ts";
import { dims, type Llama } from "./model.ts";

/** Options of {@link DecodeSession}. */
export interface SessionOptions {
  /** Cache length in tokens (default: the config's maxPositions). */
  maxTokens?: number;
  /** Most tokens run through the model at once in prefill/scoring (default: up to 512). */
  chunk?: number;
  /**
   * Pack the weight matrices once into the texture layout the CPU-adapter matmul reads fastest
   * (matmul's {@link PackedWeight}); costs a second copy of the weights. Default: on CPU adapters
   * when the weights take at most 2 GiB; a real GPU reads the tensors directly.
   */
  packWeights?: boolean;
}

/**
 * One sequence being generated (batch 1): the KV cache of every layer, and the position reached.
 * Implements @lvm/sampler's `TokenDecoder` (`prefill`, `step`). On CPU adapters the session packs
 * the weights once at creation (see {@link SessionOptions.packWeights}); call
 * {@link DecodeSession.refreshWeights} if the model's parameters change while it is in use.
 */
export class DecodeSession {
  readonly maxTokens: number;
  readonly chunk: number;
  #length = 0;
  readonly #cache: KvCache[] = []; // per layer: keys and values of positions 0..maxTokens-1
  readonly #id: Tensor; // (1) i32, the token of a decode step
  readonly #gpu: Gpu;
  readonly #packed = new Map<string, PackedWeight>();

  constructor(readonly model: Llama, options: SessionOptions = {}) {
    const c = model.config;
    const { KVH, hd, F, H } = dims(c);
    this.#gpu = model.gpu;
    this.maxTokens = options.maxTokens ?? c.maxPositions;
    if (!Number.isInteger(this.maxTokens) || this.maxTokens < 1) {
      throw new RangeError(
        `DecodeSession: maxTokens must be a positive integer, found ${this.maxTokens}`,
      );
    }
    const binding = this.#gpu.limits.maxStorageBufferBindingSize;
    const widest = Math.max(F, H * hd, c.hidden) * 4;
    this.chunk = Math.max(1, Math.min(options.chunk ?? 512, Math.floor(binding / widest)));
    for (let i = 0; i < c.layers; i++) {
      this.#cache.push(
        new KvCache(this.#gpu, { batch: 1, maxT: this.maxTokens, kvHeads: KVH, headDim: hd }),
      );
    }
    this.#id = this.#gpu.zeros([1], "i32");
    const weightBytes = [...model.params.values()].reduce((s, t) => s + t.byteLength, 0);
    const pack = options.packWeights ?? (this.#gpu.kind === "cpu" && weightBytes <= 2 ** 31);
    if (pack) {
      for (const [name, t] of model.params) {
        if (t.shape.length === 2) this.#packed.set(name, new PackedWeight(this.#gpu, t, true));
      }
    }
  }

  /**
   * Re-packs the session's copies of the weights after the model's parameters changed (e.g. an
   * optimizer step); without packing (GPU adapters) the session reads the live tensors anyway.
   */
  refreshWeights(): void {
    for (const p of this.#packed.values()) p.refresh();
  }

  /** The weight `name` as matmul should read it: packed when this session packed it. */
  #w(name: string): Tensor | PackedWeight {
    return this.#packed.get(name) ?? this.model.param(name);
  }

  /** Tokens in the cache. */
  get length(): number {
    return this.#length;
  }

  /** Forgets the cached tokens (the buffers are kept). */
  reset(): void {
    this.#length = 0;
  }

  /**
   * Appends `ids` to the sequence (the prompt, or more of it) and returns the logits (V) of the
   * token after the last one.
   */
  async prefill(ids: readonly number[]): Promise<Float32Array> {
    this.#check(ids, "prefill");
    let last: Tensor | null = null;
    for (let i = 0; i < ids.length; i += this.chunk) {
      last?.release();
      last = this.#run(ids.slice(i, i + this.chunk), "last");
    }
    const out = await this.#gpu.readF32(last!);
    last!.release();
    return out;
  }

  /** Appends one id and returns the logits (V) of the token after it (one GPU->CPU read). */
  async step(id: number): Promise<Float32Array> {
    this.#check([id], "step");
    const logits = this.#run([id], "last");
    const out = await this.#gpu.readF32(logits);
    logits.release();
    return out;
  }

  /**
   * Scores a whole sequence from an empty cache: log p(ids[i] | ids[0..i)) for i >= 1 (natural log,
   * softmax over the full vocabulary), (ids.length - 1) values, read back in one GPU->CPU read.
   * The sequence is run in chunks; each chunk's last row is scored against the next chunk's first id.
   */
  async logprobs(ids: readonly number[]): Promise<Float32Array> {
    if (this.#length !== 0) {
      throw new RangeError(`logprobs: the cache holds ${this.#length} tokens; call reset() first`);
    }
    this.#check(ids, "logprobs");
    const gpu = this.#gpu;
    const parts: Tensor[] = [];
    for (let i = 0; i < ids.length; i += this.chunk) {
      const chunk = ids.slice(i, i + this.chunk);
      const next = i + this.chunk < ids.length ? ids[i + this.chunk] : -1; // -1: not scored
      const targets = gpu.upload([...chunk.slice(1), next], [chunk.length], "i32");
      parts.push(this.#run(chunk, "gather", targets));
      targets.release();
    }
    const values = await gpu.readMany(parts);
    parts.forEach((p) => p.release());
    const flat = new Float32Array(ids.length - 1);
    let o = 0;
    for (const v of values) {
      const n = Math.min(v.length, flat.length - o); // drops the final row's ignored target
      flat.set(v.subarray(0, n), o);
      o += n;
    }
    return flat;
  }

  get #head(): Tensor | PackedWeight {
    return this.#w(this.model.config.tieEmbeddings ? EMBED : LM_HEAD);
  }

  #check(ids: readonly number[], op: string) {
    if (ids.length === 0) throw new RangeError(`${op}: needs at least one token id`);
    validateIds(ids, this.model.config.vocab, `${op} ids`);
    if (this.#length + ids.length > this.maxTokens) {
      throw new RangeError(
        `${op}: ${this.#length} cached + ${ids.length} new tokens exceed the cache of ${this.maxTokens}`,
      );
    }
  }

  /**
   * Runs `ids` at positions length.. through the model, filling the caches. "last": returns the
   * logits (1,V) of the last row; "gather": returns log p(targets[r]) (n) for every row.
   */
  #run(ids: readonly number[], mode: "last" | "gather", targets?: Tensor): Tensor {
    const { gpu, model } = { gpu: this.#gpu, model: this.model };
    const c = model.config;
    const { D, H, KVH, hd } = dims(c);
    const n = ids.length, pos = this.#length;
    let idT: Tensor;
    if (n === 1) {
      gpu.write(this.#id, ids);
      idT = this.#id;
    } else idT = gpu.upload(ids, [n], "i32");
    let x = embedding(gpu, idT, model.param(EMBED)); // (n,D)
    if (idT !== this.#id) idT.release();
    let branch: Tensor | null = null;
    const ropeOpts = { headDim: hd, theta: c.ropeTheta, posOffset: pos };
    for (let i = 0; i < c.layers; i++) {
      const nm = layerNames(i);
      let h1: Tensor, rstd1: Tensor;
      if (branch) {
        const r = addRmsnorm(gpu, branch, x, model.param(nm.ln1), c.rmsEps);
        branch.release();
        x.release();
        [x, h1, rstd1] = [r.sum, r.y, r.rstd];
      } else ({ y: h1, rstd: rstd1 } = rmsnorm(gpu, x, model.param(nm.ln1), c.rmsEps));
      rstd1.release();
      const q = linear(gpu, h1, this.#w(nm.q)).view([1, n, H, hd]);
      rope(gpu, q, { ...ropeOpts, heads: H, out: q });
      const k = linear(gpu, h1, this.#w(nm.k)).view([1, n, KVH, hd]);
      rope(gpu, k, { ...ropeOpts, heads: KVH, out: k });
      const v = linear(gpu, h1, this.#w(nm.v)).view([1, n, KVH, hd]);
      h1.release();
      kvCacheWrite(gpu, this.#cache[i], k, v, pos);
      k.release();
      v.release();
      const att = attentionDecode(gpu, q, this.#cache[i], pos); // (1,n,H,hd)
      q.release();
      const ao = linear(gpu, att.view([n, H * hd]), this.#w(nm.o)); // (n,D)
      att.release();
      const r2 = addRmsnorm(gpu, ao, x, model.param(nm.ln2), c.rmsEps);
      ao.release();
      x.release();
      r2.rstd.release();
      const gate = linear(gpu, r2.y, this.#w(nm.gate));
      const up = linear(gpu, r2.y, this.#w(nm.up));
      r2.y.release();
      const act = swiglu(gpu, gate, up);
      gate.release();
      up.release();
      branch = linear(gpu, act, this.#w(nm.down));
      act.release();
      x = r2.sum;
    }
    let xf: Tensor;
    if (branch) {
      const r = addRmsnorm(gpu, branch, x, model.param(FINAL_NORM), c.rmsEps);
      branch.release();
      r.sum.release();
      r.rstd.release();
      xf = r.y;
    } else {
      const r = rmsnorm(gpu, x, model.param(FINAL_NORM), c.rmsEps);
      r.rstd.release();
      xf = r.y;
    }
    x.release();
    this.#length += n;
    if (mode === "last") {
      let row = xf;
      if (n > 1) {
        row = gpu.empty([1, D]);
        gpu.copy(xf, row, D * 4, (n - 1) * D * 4, 0);
        xf.release();
      }
      const logits = linear(gpu, row.view([1, D]), this.#head); // (1,V)
      row.release();
      return logits;
    }
    // Scoring: logits of every row in binding-sized chunks, then log p(target) per row.
    const R = model.headChunkRows();
    const chunks: Tensor[] = [];
    for (let r0 = 0; r0 < n; r0 += R) {
      const m = Math.min(R, n - r0);
      let part = xf;
      if (m < n) {
        part = gpu.empty([m, D]);
        gpu.copy(xf, part, m * D * 4, r0 * D * 4, 0);
      }
      chunks.push(linear(gpu, part, this.#head));
      if (part !== xf) part.release();
    }
    xf.release();
    const lp = logSoftmaxGather(gpu, chunks, targets!);
    chunks.forEach((t) => t.release());
    return lp;
  }

  /** Frees the caches. */
  release(): void {
    this.#gpu.submit(); // recorded work may still read the caches (textures are destroyed)
    for (const c of this.#cache) c.release();
    for (const p of this.#packed.values()) p.release();
    this.#packed.clear();
    this.#id.release();
  }
}
