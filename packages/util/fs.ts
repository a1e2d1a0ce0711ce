/**
 * Atomic file writes, shared by every package that writes results (`@lvm/util/fs`; no GPU code
 * is imported): data goes to a temp file beside the target, is flushed to disk, and is renamed into
 * place, so a reader (or a resumed run after a crash or Ctrl-C) sees the old file or the whole new
 * one, never a half-written one. Temp files are named `NAME.PID.tmp` (ignored by the repo's
 * .gitignore; a resumed build removes the ones a killed process left).
 *
 * Every error of a write (a missing folder, a full disk, a file-size limit) names the TARGET path
 * ("PATH: cannot write: No space left on device ..."), keeping the error's class
 * (`Deno.errors.NotFound`, ...) so callers can still tell the cases apart.
 * @module
 */

/**
 * `e` again, of the same class where it can be, with a message that starts with `path` and says
 * what was being done: `PATH: DOING: original message` (`cause` is the original error).
 */
export function errorWithPath(path: string, e: unknown, doing: string): Error {
  const msg = (e as Error)?.message ?? String(e);
  if (msg.startsWith(`${path}: `)) return e as Error;
  const text = `${path}: ${doing}: ${msg}`;
  if (e instanceof Error) {
    try {
      const Ctor = e.constructor as new (m: string, o?: ErrorOptions) => Error;
      const out = new Ctor(text, { cause: e });
      if (out instanceof Error && out.message === text) {
        out.name = e.name;
        return out;
      }
    } catch { /* a constructor with another signature: a plain Error */ }
  }
  return new Error(text, { cause: e });
}

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
    let f: Deno.FsFile;
    try {
      f = await Deno.open(tmp, { write: true, create: true, truncate: true });
    } catch (e) {
      throw errorWithPath(path, e, "cannot write");
    }
    return new AtomicWriter(f, tmp, path);
  }
  /** The target path. */
  get path(): string {
    return this.#path;
  }
  /** The temp file's path. */
  get tempPath(): string {
    return this.#tmp;
  }
  /** Appends bytes; an error (a full disk) names the target path. */
  async write(data: Uint8Array): Promise<void> {
    let off = 0;
    try {
      while (off < data.length) off += await this.#file.write(data.subarray(off));
    } catch (e) {
      throw errorWithPath(this.#path, e, `cannot write (after ${this.bytes + off} bytes)`);
    }
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
      throw errorWithPath(this.#path, e, "cannot write");
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

/**
 * What is at `path`: "file", "dir", "other" (FIFO, socket, device) or null when nothing is there.
 * Follows symlinks; a symlink loop or a permission problem is an error naming the path, never
 * reported as missing.
 */
export async function pathKind(path: string): Promise<"file" | "dir" | "other" | null> {
  try {
    const st = await Deno.stat(path);
    return st.isFile ? "file" : st.isDirectory ? "dir" : "other";
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new Error(`${path}: ${(e as Error).message}`, { cause: e });
  }
}

/** True when `path` is a regular file (following symlinks); see {@link pathKind} for errors. */
export async function isFile(path: string): Promise<boolean> {
  return (await pathKind(path)) === "file";
}
