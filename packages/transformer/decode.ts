/**
 * Inference with a KV cache: prefill a prompt (in row chunks, so a 3840-token prompt of the 7B never
 * needs an activation over one storage binding), then one decode step per new token, and scoring
 * (log-probabilities of a sequence's tokens) through the same chunked path.
 *
 * A decode step records the whole forward of one token into one submit and reads back one row of
 * logits: no pipeline is compiled and no buffer created after the first step (every temporary goes
 * back to the pool and is handed out again at the same size; the token id is written into one
 * persistent (1) tensor; positions travel in uniform parameters).
 *
 * The next-token logits also stay on the GPU, so {@link DecodeSession.sampleOnGpu} can choose ids
 * there (@lvm/kernels' `sampleLogits`) and chain steps without a CPU round trip per token: each
 * step's sampler writes its id into the (1) token tensor the next step's embedding reads, steps are
 * submitted back to back without waiting, and only the chosen ids come back, a chunk at a time.
 * @module
 */
import {
  addRmsnorm,
  attentionDecode,
  DECODE_ATTENTION_MAX_HEAD_DIM,
  decodeAttention,
  decodeFfn,
  decodeLinearAdd,
  decodeNormLinear,
  decodeQkv,
  decodeQkvVariant,
  decodeTail,
  decodeTailShape,
  type DecodeWeight,
  embeddingAny,
  linearAny,
  logSoftmaxGather,
  PackedWeight,
  rmsnorm,
  rope,
  sampleLogits,
  swiglu,
  validateIds,
} from "@lvm/kernels";
import { type Gpu, Tensor } from "@lvm/gpu";
import type { GpuSampleOptions, GpuSampling } from "@lvm/sampler";
import { EMBED, FINAL_NORM, layerNames, LM_HEAD } from "./config.ts";
import { KvCache } from "./kv_cache.ts";
import { dims, type Llama, type Weight } from "./model.ts";

/** Whether the fused decode kernels read this weight (f32/f16, packed or not; not block-quantized). */
function isDecodeWeight(w: Weight | PackedWeight): w is DecodeWeight {
  return w instanceof PackedWeight || w instanceof Tensor;
}

/** Options of {@link DecodeSession}. */
export interface SessionOptions {
  /** Cache length in tokens (default: the config's maxPositions). */
  maxTokens?: number;
  /** Most tokens run through the model at once in prefill/scoring (default: up to 512). */
  chunk?: number;
  /**
   * Pack the weight matrices once into the texture layout the CPU-adapter matmul reads fastest
   * (matmul's {@link PackedWeight}); costs a second copy of the weights. Default: on CPU adapters
   * when the weights take at most 2 GiB; a real GPU reads the tensors directly. Block-quantized
   * matrices are never packed (their kernels read the blocks).
   */
  packWeights?: boolean;
  /**
   * Run one-token steps with @lvm/kernels' fused decode kernels (default true): per layer one
   * `decodeQkv` (norm + q/k/v + RoPE + cache append), `decodeAttention` over the cache, the o
   * projection added into the residual in place (`decodeLinearAdd`), one `decodeFfn` (norm +
   * gate/up + SwiGLU) and the down projection added in place: 5 dispatches instead of 16 (2 with
   * {@link SessionOptions.fuseTail} where it applies). Layers
   * with a block-quantized matrix, and on a CPU adapter layers whose weights are not packed, keep
   * the unfused path; prefill and scoring (several tokens) always do.
   */
  fuse?: boolean;
  /**
   * With `fuse`: where @lvm/kernels' `decodeTailShape` allows (a CPU adapter's packed weights and
   * texture cache, layers of at most `DECODE_TAIL_MAX_WEIGHTS` weights, e.g. the `tiny` preset's),
   * run everything after `decodeQkv` (attention, o projection, FFN) as one `decodeTail` dispatch:
   * 2 dispatches per layer instead of 5 (default true).
   */
  fuseTail?: boolean;
}

/** A layer's matrices as the fused decode kernels read them. */
type FusedWeights = Record<"q" | "k" | "v" | "o" | "gate" | "up" | "down", DecodeWeight>;

/**
 * One sequence being generated (batch 1): the KV cache of every layer, and the position reached.
 * Implements @lvm/sampler's `TokenDecoder` (`prefill`, `step`) and its GPU-sampling extension
 * `GpuTokenDecoder` (`append`, `sampleOnGpu`). On CPU adapters the session packs the weights once
 * at creation (see {@link SessionOptions.packWeights}); call {@link DecodeSession.refreshWeights}
 * if the model's parameters change while it is in use.
 */
export class DecodeSession {
  readonly maxTokens: number;
  readonly chunk: number;
  #length = 0;
  readonly #cache: KvCache[] = []; // per layer: keys and values of positions 0..maxTokens-1
  readonly #id: Tensor; // (1) i32, the token of a decode step
  #pending: Tensor | null = null; // (1,V) logits of the token after the cached ones, if known
  readonly #gpu: Gpu;
  readonly #packed = new Map<string, PackedWeight>();
  readonly #fuse: boolean;
  readonly #fuseTail: boolean;

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
    this.#fuse = options.fuse ?? true;
    this.#fuseTail = options.fuseTail ?? true;
    const pack = options.packWeights ?? (this.#gpu.kind === "cpu" && model.weightBytes <= 2 ** 31);
    if (pack) {
      // Every matrix a matmul reads; an untied embedding is only gathered from, never packed.
      const gatherOnly = model.config.tieEmbeddings ? null : EMBED;
      for (const [name, t] of model.params) {
        if (t.shape.length !== 2 || name === gatherOnly) continue;
        this.#packed.set(name, new PackedWeight(this.#gpu, t, true));
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
  #w(name: string): Weight | PackedWeight {
    return this.#packed.get(name) ?? this.model.weight(name);
  }

  /**
   * GPU bytes this session holds itself (the model's parameters are not counted): `textures`, the
   * KV-cache and packed-weight textures (not from `gpu.pool`), and `buffers`, its pooled tensors
   * (a buffer-layout KV cache, the token id, the pending next-token logits; also counted in
   * `gpu.pool.allocatedBytes`).
   */
  get memoryBytes(): { textures: number; buffers: number } {
    const tex = (t: GPUTexture) => t.width * t.height * t.depthOrArrayLayers * 16; // rgba32*: 16 B
    let textures = 0, buffers = this.#id.byteLength + (this.#pending?.byteLength ?? 0);
    for (const c of this.#cache) {
      const s = c.buffers;
      if (s.layout === "tex") [s.k, s.v].forEach((t) => (textures += tex(t.texture)));
      else [s.k, s.v].forEach((t) => (buffers += t.byteLength));
    }
    for (const p of this.#packed.values()) if (p.texture) textures += tex(p.texture.texture);
    return { textures, buffers };
  }

  /** Tokens in the cache. */
  get length(): number {
    return this.#length;
  }

  /** Forgets the cached tokens (the buffers are kept). */
  reset(): void {
    this.#length = 0;
    this.#setPending(null);
  }

  #setPending(logits: Tensor | null) {
    this.#pending?.release();
    this.#pending = logits;
  }

  /**
   * Appends `ids` to the sequence (the prompt, or more of it) without reading anything back: the
   * logits of the token after the last one stay on the GPU for {@link sampleOnGpu}.
   */
  append(ids: readonly number[]): void {
    this.#check(ids, "append");
    this.#setPending(null);
    for (let i = 0; i < ids.length; i += this.chunk) {
      this.#setPending(this.#run(ids.slice(i, i + this.chunk), "last"));
    }
    this.#gpu.submit();
  }

  /**
   * Appends `ids` to the sequence (the prompt, or more of it) and returns the logits (V) of the
   * token after the last one.
   */
  async prefill(ids: readonly number[]): Promise<Float32Array> {
    this.#check(ids, "prefill");
    this.append(ids);
    return await this.#gpu.readF32(this.#pending!);
  }

  /** Appends one id and returns the logits (V) of the token after it (one GPU->CPU read). */
  async step(id: number): Promise<Float32Array> {
    this.#check([id], "step");
    this.#setPending(null);
    this.#setPending(this.#run([id], "last"));
    return await this.#gpu.readF32(this.#pending!);
  }

  /**
   * Chooses `count` ids on the GPU, starting from the pending logits (after {@link prefill},
   * {@link append} or {@link step}): id i is sampled into the token tensor and, unless it is the
   * last (see `feedLast`), run through the model, whose logits are sampled next. Steps are
   * submitted back to back; the CPU waits only for the ids, read back every `readEvery` tokens
   * (reported to `onIds`) and at the end. Same ids as sampling each step's logits with @lvm/sampler
   * (greedy exactly; sampling up to f32 rounding at cumulative-probability boundaries), with no
   * pipeline compiled or buffer created after the first call.
   */
  async sampleOnGpu(
    count: number,
    sampling: GpuSampling = {},
    options: GpuSampleOptions = {},
  ): Promise<Int32Array> {
    const op = "sampleOnGpu";
    if (!Number.isInteger(count) || count < 0) {
      throw new RangeError(`${op}: count must be a non-negative integer, found ${count}`);
    }
    const { feedLast = false, onIds, readEvery = 32, uniforms } = options;
    if (!Number.isInteger(readEvery) || readEvery < 1) {
      throw new RangeError(`${op}: readEvery must be a positive integer, found ${readEvery}`);
    }
    if (count === 0) return new Int32Array(0);
    if (!this.#pending) {
      throw new RangeError(`${op}: no next-token logits yet; call prefill(), append() or step()`);
    }
    const feeds = count - 1 + (feedLast ? 1 : 0);
    if (this.#length + feeds > this.maxTokens) {
      throw new RangeError(
        `${op}: ${this.#length} cached + ${feeds} new tokens exceed the cache of ${this.maxTokens}`,
      );
    }
    const greedy = sampling.greedy ?? false;
    if (!greedy) {
      if (!uniforms || uniforms.length < count) {
        throw new RangeError(
          `${op}: sampling ${count} ids needs ${count} uniforms, got ${uniforms?.length ?? 0}`,
        );
      }
      for (let i = 0; i < count; i++) {
        if (!(uniforms[i] >= 0 && uniforms[i] < 1)) {
          throw new RangeError(`${op}: uniforms[${i}] is ${uniforms[i]}, expected [0, 1)`);
        }
      }
    }
    const gpu = this.#gpu;
    const opts = {
      n: sampling.suppressFrom ?? this.model.config.vocab,
      greedy,
      temperature: sampling.temperature,
      topK: sampling.topK,
    };
    const ids = gpu.empty([count], "i32"); // (count) the chosen ids
    const result = new Int32Array(count);
    let done = 0; // ids already copied into result
    const readUpTo = (upTo: number) => {
      const p = gpu.readMany([ids]);
      p.catch(() => {}); // awaited later; a failure surfaces there
      return { p, upTo };
    };
    const collect = async ({ p, upTo }: ReturnType<typeof readUpTo>) => {
      const [all] = await p;
      result.set(all.subarray(done, upTo), done);
      onIds?.(result.slice(done, upTo), done);
      done = upTo;
    };
    try {
      let inflight: ReturnType<typeof readUpTo> | null = null;
      for (let i = 0; i < count; i++) {
        // The first call checks the options before anything is recorded.
        const u = greedy ? undefined : uniforms![i];
        sampleLogits(gpu, this.#pending!, { ...opts, u }, { out: ids, index: i, token: this.#id });
        if (i + 1 < count || feedLast) this.#setPending(this.#run(null, "last"));
        gpu.submit();
        if ((i + 1) % readEvery === 0 && i + 1 < count) {
          // Read this chunk without waiting; wait for the previous one (long done by now).
          const next = readUpTo(i + 1);
          if (inflight) await collect(inflight);
          inflight = next;
        }
      }
      const last = readUpTo(count);
      if (inflight) await collect(inflight);
      await collect(last);
    } finally {
      ids.release();
    }
    return result;
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

  get #head(): Weight | PackedWeight {
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
   * Runs `ids` at positions length.. through the model, filling the caches (`null`: the one token
   * already in the token tensor, written there by the GPU sampler). "last": returns the logits (1,V)
   * of the last row; "gather": returns log p(targets[r]) (n) for every row.
   */
  #run(ids: readonly number[] | null, mode: "last" | "gather", targets?: Tensor): Tensor {
    const { gpu, model } = { gpu: this.#gpu, model: this.model };
    const c = model.config;
    const { D, H, KVH, hd } = dims(c);
    const n = ids ? ids.length : 1, pos = this.#length;
    let idT: Tensor;
    if (n === 1) {
      if (ids) gpu.write(this.#id, ids);
      idT = this.#id;
    } else idT = gpu.upload(ids!, [n], "i32");
    let x = embeddingAny(gpu, idT, model.weight(EMBED)); // (n,D)
    if (idT !== this.#id) idT.release();
    let branch: Tensor | null = null;
    let first = 0; // layers before this one ran fused
    if (n === 1 && this.#fuse) {
      for (; first < c.layers; first++) {
        const w = this.#fusable(first);
        if (!w) break;
        this.#fusedLayer(first, w, x, pos);
      }
    }
    const ropeOpts = { headDim: hd, theta: c.ropeTheta, posOffset: pos };
    for (let i = first; i < c.layers; i++) {
      const nm = layerNames(i);
      let h1: Tensor, rstd1: Tensor;
      if (branch) {
        const r = addRmsnorm(gpu, branch, x, model.param(nm.ln1), c.rmsEps);
        branch.release();
        x.release();
        [x, h1, rstd1] = [r.sum, r.y, r.rstd];
      } else ({ y: h1, rstd: rstd1 } = rmsnorm(gpu, x, model.param(nm.ln1), c.rmsEps));
      rstd1.release();
      const q = linearAny(gpu, h1, this.#w(nm.q)).view([1, n, H, hd]);
      rope(gpu, q, { ...ropeOpts, heads: H, out: q });
      const k = linearAny(gpu, h1, this.#w(nm.k)).view([1, n, KVH, hd]);
      rope(gpu, k, { ...ropeOpts, heads: KVH, out: k });
      const v = linearAny(gpu, h1, this.#w(nm.v)).view([1, n, KVH, hd]);
      h1.release();
      this.#cache[i].write(gpu, k, v, pos);
      k.release();
      v.release();
      const att = attentionDecode(gpu, q, this.#cache[i].buffers, pos); // (1,n,H,hd)
      q.release();
      const ao = linearAny(gpu, att.view([n, H * hd]), this.#w(nm.o)); // (n,D)
      att.release();
      const r2 = addRmsnorm(gpu, ao, x, model.param(nm.ln2), c.rmsEps);
      ao.release();
      x.release();
      r2.rstd.release();
      const gate = linearAny(gpu, r2.y, this.#w(nm.gate));
      const up = linearAny(gpu, r2.y, this.#w(nm.up));
      r2.y.release();
      const act = swiglu(gpu, gate, up);
      gate.release();
      up.release();
      branch = linearAny(gpu, act, this.#w(nm.down));
      act.release();
      x = r2.sum;
    }
    const head = this.#head;
    if (n === 1 && this.#fuse && mode === "last" && !branch && isDecodeWeight(head)) {
      // Every layer ran fused: the final norm and the head in one dispatch.
      const logits = decodeNormLinear(gpu, x, model.param(FINAL_NORM), head, { eps: c.rmsEps });
      x.release();
      this.#length += n;
      return logits; // (1,V)
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
      const logits = linearAny(gpu, row.view([1, D]), this.#head); // (1,V)
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
      chunks.push(linearAny(gpu, part, this.#head));
      if (part !== xf) part.release();
    }
    xf.release();
    const lp = logSoftmaxGather(gpu, chunks, targets!);
    chunks.forEach((t) => t.release());
    return lp;
  }

  /** A layer's matrices as the fused kernels read them, or null if one is block-quantized. */
  #fusedWeights(i: number): FusedWeights | null {
    const nm = layerNames(i);
    const out: Partial<FusedWeights> = {};
    for (const key of ["q", "k", "v", "o", "gate", "up", "down"] as const) {
      const w = this.#w(nm[key]);
      if (!isDecodeWeight(w)) return null;
      out[key] = w;
    }
    return out as FusedWeights;
  }

  /** Layer `i`'s matrices if its one-token step runs fused, else null. */
  #fusable(i: number): FusedWeights | null {
    const w = this.#fusedWeights(i);
    if (!w || this.#gpu.kind !== "cpu") return w;
    // On a CPU adapter the fused kernels pay off only in their texture variant (packed weights, a
    // texture cache); their buffer variant (a workgroup per output) ran 4-20x slower than the
    // unfused path on unpacked 100m f16 weights through lavapipe, so such layers (models over
    // the packing limit, packWeights: false) keep the unfused path.
    const tex = Object.values(w).every((t) => t instanceof PackedWeight) &&
      decodeQkvVariant(this.#gpu, w, this.#cache[i].buffers) === "tex";
    return tex ? w : null;
  }

  /**
   * One layer of a one-token step, fused (see {@link SessionOptions.fuse}): x (1,D) is the residual
   * stream, updated in place.
   */
  #fusedLayer(i: number, w: FusedWeights, x: Tensor, pos: number): void {
    const { gpu, model } = { gpu: this.#gpu, model: this.model };
    const c = model.config;
    const { H, hd } = dims(c);
    const nm = layerNames(i), kv = this.#cache[i].buffers;
    const q = decodeQkv(gpu, x, model.param(nm.ln1), w, kv, pos, {
      heads: H,
      eps: c.rmsEps,
      theta: c.ropeTheta,
    }); // (1,1,H,hd)
    const tail = { o: w.o, gate: w.gate, up: w.up, down: w.down };
    if (this.#fuseTail && decodeTailShape(gpu, q, kv, x, tail)) {
      decodeTail(gpu, q, kv, pos, x, model.param(nm.ln2), tail, { eps: c.rmsEps }); // x updated
      q.release();
      return;
    }
    // One dispatch per head group; a real GPU with a long cache fills more cores with split-K.
    const one = hd <= DECODE_ATTENTION_MAX_HEAD_DIM && (gpu.kind === "cpu" || pos < 512);
    const att = one ? decodeAttention(gpu, q, kv, pos) : attentionDecode(gpu, q, kv, pos); // (1,1,H,hd)
    q.release();
    decodeLinearAdd(gpu, att.view([1, H * hd]), w.o, x); // x += att Wo^T
    att.release();
    const act = decodeFfn(gpu, x, model.param(nm.ln2), w, { eps: c.rmsEps }); // (1,F)
    decodeLinearAdd(gpu, act, w.down, x); // x += act Wdown^T
    act.release();
  }

  /** Frees the caches. */
  release(): void {
    this.#gpu.submit(); // recorded work may still read the caches (textures are destroyed)
    this.#setPending(null);
    for (const c of this.#cache) c.release();
    for (const p of this.#packed.values()) p.release();
    this.#packed.clear();
    this.#id.release();
  }
}
