/**
 * Atomic file writes, shared by every package that writes results (`@lvm/kernels/fs`; no GPU code
 * is imported): data goes to a temp file beside the target, is flushed to disk, and is renamed into
 * place, so a reader (or a resumed run after a crash or Ctrl-C) sees the old file or the whole new
 * one, never a half-written one. Temp files are named `NAME.PID.tmp` (ignored by the repo's
 * .gitignore; a resumed build removes the ones a killed process left).
 * @module
 */

/** Temp path beside `path`, unique per process: `path.PID.tmp`. */
export function tempPath(path: string): string {
  return `${path}.${Deno.pid}.tmp`;
}

/**
 * Writes `data` (bytes, or text as UTF-8) to `path` atomically: temp file, fsync, rename. On error
 * the temp file is removed and the target is untouched.
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const w = await AtomicWriter.open(path);
  try {
    await w.write(typeof data === "string" ? new TextEncoder().encode(data) : data);
  } catch (e) {
    await w.abort();
    throw e;
  }
  await w.commit();
}

/** A file written in pieces and renamed into place by `commit()` (or removed by `abort()`). */
export class AtomicWriter {
  #file: Deno.FsFile;
  #tmp: string;
  #path: string;
  /** Bytes written so far. */
  bytes = 0;
  private constructor(file: Deno.FsFile, tmp: string, path: string) {
    this.#file = file;
    this.#tmp = tmp;
    this.#path = path;
  }
  /** Opens a temp file beside `path`. */
  static async open(path: string): Promise<AtomicWriter> {
    const tmp = tempPath(path);
    const f = await Deno.open(tmp, { write: true, create: true, truncate: true });
    return new AtomicWriter(f, tmp, path);
  }
  /** The temp file's path. */
  get tempPath(): string {
    return this.#tmp;
  }
  /** Appends bytes. */
  async write(data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) off += await this.#file.write(data.subarray(off));
    this.bytes += data.length;
  }
  /** Flushes, closes and renames into place (the temp file is removed when that fails). */
  async commit(): Promise<void> {
    try {
      await this.#file.syncData();
      this.#file.close();
      await Deno.rename(this.#tmp, this.#path);
    } catch (e) {
      await this.abort();
      throw e;
    }
  }
  /** Closes and removes the temp file. */
  async abort(): Promise<void> {
    try {
      this.#file.close();
    } catch { /* already closed */ }
    await Deno.remove(this.#tmp).catch(() => {});
  }
}
