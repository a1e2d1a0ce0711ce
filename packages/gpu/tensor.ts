/**
 * Tensors on the GPU: a storage buffer with a shape and a dtype.
 *
 * `f16` tensors are stored packed two halves per u32 (WGSL `pack2x16float` / `unpack2x16float`), so they
 * work on adapters without `shader-f16`; the buffer then holds `ceil(n/2)` u32 words.
 * @module
 */
import type { Gpu } from "./gpu.ts";

/** Element types a tensor can hold. */
export type DType = "f32" | "f16" | "i32" | "u32";

/** Typed array a dtype reads back as (f16 reads back widened to f32). */
export type HostArray = Float32Array | Int32Array | Uint32Array;

/** Number of elements of a shape (1 for a scalar `[]`). */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) {
      throw new RangeError(
        `Invalid shape [${shape}]: every dimension must be a non-negative integer`,
      );
    }
    n *= d;
  }
  return n;
}

/** Bytes a buffer needs for `n` elements of `dtype`, rounded up to a multiple of 4. */
export function byteSize(n: number, dtype: DType): number {
  return dtype === "f16" ? Math.ceil(n / 2) * 4 : n * 4;
}

/**
 * A GPU tensor. Owned by one {@link Gpu}; call {@link Tensor.release} to return its buffer to the pool.
 * A tensor and its {@link Tensor.view}s share one buffer and one ownership state: releasing any of
 * them releases the buffer, once.
 */
export class Tensor {
  /** Shared by a tensor and all its views. */
  #owner = { released: false };
  constructor(
    readonly gpu: Gpu,
    readonly buffer: GPUBuffer,
    readonly shape: readonly number[],
    readonly dtype: DType,
  ) {}

  /** Number of elements. */
  get size(): number {
    return numel(this.shape);
  }

  /** Bytes of data (the buffer itself may be larger: it comes from a size-bucketed pool). */
  get byteLength(): number {
    return byteSize(this.size, this.dtype);
  }

  /** Reads the tensor back to the host (f16 widens to f32). Waits for all recorded work. */
  read(): Promise<HostArray> {
    return this.gpu.read(this);
  }

  /** The same buffer seen with another shape of the same element count (no copy). */
  view(shape: readonly number[]): Tensor {
    if (numel(shape) !== this.size) {
      throw new RangeError(`Cannot view [${this.shape}] as [${shape}]: element counts differ`);
    }
    const v = new Tensor(this.gpu, this.buffer, [...shape], this.dtype);
    v.#owner = this.#owner;
    return v;
  }

  /**
   * Returns the buffer to the pool (the buffer of this tensor and of all its views: call it on any
   * one of them, once the others are no longer needed). Work already recorded that uses it stays
   * valid. Idempotent.
   */
  release(): void {
    if (this.#owner.released) return;
    this.#owner.released = true;
    this.gpu.pool.put(this.buffer);
  }

  /** Whether {@link release} was called on this tensor or on a view sharing its buffer. */
  get released(): boolean {
    return this.#owner.released;
  }
}
