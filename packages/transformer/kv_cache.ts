/**
 * The KV cache of one attention layer: storage for the keys and values of positions 0..maxT-1 of
 * B sequences, in the layout @lvm/kernels' decode reads fastest on this adapter (textures on CPU
 * adapters, tensors on GPUs). The ops (`kvWrite`, `attentionDecode`) take its plain `KvBuffers`
 * (tensors or textures + sizes and layout); the cache owns allocation and release. {@link DecodeSession} keeps one per layer
 * and the position reached.
 * @module
 */
import {
  type AttentionVariant,
  type KvBuffers,
  kvLayout,
  kvWrite,
  makeKvTexture,
} from "@lvm/kernels";
import type { Gpu, Tensor } from "@lvm/gpu";

/** Options of {@link KvCache}. */
export interface KvCacheOptions {
  /** Batch rows B. */
  batch: number;
  /** Positions the cache holds (LVM: up to 4096). */
  maxT: number;
  /** KV heads. */
  kvHeads: number;
  /** Head dimension D. */
  headDim: number;
  /** Storage: "tex" (rgba32float textures, default on CPU adapters) or "buffer" tensors. */
  layout?: AttentionVariant;
}

/**
 * The keys and values of one attention layer for positions 0..maxT-1 of B sequences. Written with
 * {@link KvCache.write}, read by `attentionDecode(gpu, q, cache.buffers, lenPrev)`. Free it with
 * {@link KvCache.release}.
 */
export class KvCache {
  /** The storage, as the decode ops take it. */
  readonly buffers: KvBuffers;

  constructor(gpu: Gpu, o: KvCacheOptions) {
    const dims = { B: o.batch, maxT: o.maxT, KVH: o.kvHeads, D: o.headDim };
    for (const name of ["batch", "maxT", "kvHeads", "headDim"] as const) {
      const x = o[name];
      if (!Number.isInteger(x) || x < 1) {
        throw new RangeError(`KvCache: ${name} must be a positive integer, got ${x}`);
      }
    }
    const { B, maxT, KVH, D } = dims;
    if (kvLayout(gpu, dims, o.layout) === "tex") {
      const k = makeKvTexture(gpu, dims, "kv cache k"), v = makeKvTexture(gpu, dims, "kv cache v");
      this.buffers = { ...dims, layout: "tex", k, v };
    } else {
      const k = gpu.zeros([B, maxT, KVH, D]), v = gpu.zeros([B, maxT, KVH, D]);
      this.buffers = { ...dims, layout: "buffer", k, v };
    }
  }

  /** Positions the cache holds. */
  get maxT(): number {
    return this.buffers.maxT;
  }

  /** Storage layout: "tex" or "buffer". */
  get layout(): AttentionVariant {
    return this.buffers.layout;
  }

  /** Writes k and v (B,n,KVH,D) of n new tokens at positions pos..pos+n-1 (recorded). */
  write(gpu: Gpu, k: Tensor, v: Tensor, pos: number): void {
    kvWrite(gpu, this.buffers, k, v, pos);
  }

  /** Frees the storage (work already recorded may still use it: call after a sync or submit). */
  release(): void {
    const s = this.buffers;
    if (s.layout === "tex") [s.k, s.v].forEach((t) => t.texture.destroy());
    else [s.k, s.v].forEach((t) => t.release());
  }
}
