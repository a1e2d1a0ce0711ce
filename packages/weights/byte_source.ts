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
   * Up to `length` bytes at `offset` in a new buffer; fewer only at the end (the caller decides
   * whether that is truncation). Concurrent calls must be safe.
   */
  read(offset: number, length: number): Promise<Uint8Array>;
  /** Releases the handle (idempotent); reads after it fail. */
  close(): void;
  /** Whether {@link ByteSource.close} was called. */
  readonly closed: boolean;
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

  read(offset: number, length: number): Promise<Uint8Array> {
    if (this.#closed) return Promise.reject(new Error(`${this.path}: read after close`));
    return Promise.resolve(this.bytes.slice(offset, Math.min(offset + length, this.size)));
  }

  close(): void {
    this.#closed = true;
  }

  get closed(): boolean {
    return this.#closed;
  }
}
