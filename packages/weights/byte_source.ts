/**
 * Where weight bytes come from: {@link ByteSource}, bytes read by (offset, length). The readers of
 * this package (safetensors, PyTorch `.bin`) parse through it and never see a file system, so they
 * run in a browser over an `ArrayBuffer` ({@link MemorySource}) or a `fetch` with Range requests;
 * `@lvm/weights/fs` implements it over a file (`FileSource`).
 * @module
 */

/** Bytes read by (offset, length): a file, an `ArrayBuffer`, an HTTP resource read by ranges. */
export interface ByteSource {
  /** A name for messages: the path or URL. */
  readonly path: string;
  /** Size in bytes. */
  readonly size: number;
  /**
   * Up to `length` bytes at `offset`, in a new buffer or, given `out` (at least `length` bytes),
   * into its start (a view of `out` is returned: a loader reuses one buffer from tensor to
   * tensor); fewer only at the end (the caller decides whether that is truncation). Concurrent
   * calls must be safe.
   */
  read(offset: number, length: number, out?: Uint8Array): Promise<Uint8Array>;
  /** Releases the handle (idempotent); reads after it fail. */
  close(): void;
  /** Whether {@link ByteSource.close} was called. */
  readonly closed: boolean;
}

/**
 * The first `length` bytes of a caller's buffer `out` (for `read(..., out)` and `readRaw(name,
 * out)`); a RangeError naming `what` when it is too small.
 */
export function intoBuffer(out: Uint8Array, length: number, what: string): Uint8Array {
  if (out.length < length) {
    throw new RangeError(`${what}: the output buffer holds ${out.length} bytes, ${length} needed`);
  }
  return out.subarray(0, length);
}

/**
 * A {@link ByteSource} over bytes in memory (a fetched file, a `File` from an input element).
 *
 * @example
 * ```ts
 * import { MemorySource } from "@lvm/weights";
 * const src = new MemorySource(new Uint8Array([1, 2, 3, 4]), "four.bin");
 * console.log(src.size, await src.read(1, 2)); // 4 Uint8Array(2) [ 2, 3 ]
 * ```
 */
export class MemorySource implements ByteSource {
  #closed = false;
  constructor(readonly bytes: Uint8Array, readonly path = "memory") {}

  get size(): number {
    return this.bytes.byteLength;
  }

  read(offset: number, length: number, out?: Uint8Array): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new Error(`${this.path}: read after close`));
    const src = this.bytes.subarray(offset, Math.min(offset + length, this.size));
    if (!out) return Promise.resolve(src.slice());
    try {
      const dst = intoBuffer(out, length, this.path);
      dst.set(src);
      return Promise.resolve(dst.subarray(0, src.length));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  close(): void {
    this.#closed = true;
  }

  get closed(): boolean {
    return this.#closed;
  }
}
