/**
 * One writer per run folder: `RUN/train.lock` holds the pid, host and start time of the process
 * training into it. It is created with `createNew` (atomic: of two processes racing, one wins), and
 * removed when the run ends. A lock whose process is gone (same host, pid not alive: a crash or
 * `kill -9`) is stale and taken over; a live holder's lock refuses the second run with a
 * {@link RunLockedError} naming it. A lock from another host cannot be checked and is refused too
 * (remove the file by hand if that host's run is over).
 * @module
 */
import { join } from "node:path";

/** The lock file's name inside a run folder. */
export const LOCK_FILE = "train.lock";

/** What a lock file holds. */
export interface LockInfo {
  pid: number;
  host: string;
  /** ISO time the holder took the lock. */
  started: string;
  /** What the holder runs (its command line), for the message. */
  command?: string;
}

/** The run folder is in use by another live process. */
export class RunLockedError extends Error {
  override name = "RunLockedError";
  constructor(readonly path: string, readonly holder: LockInfo) {
    super(
      `${path}: this run folder is in use by pid ${holder.pid} on ${holder.host} since ` +
        `${holder.started}${
          holder.command ? ` (${holder.command})` : ""
        }; two runs on one folder ` +
        `would overwrite each other's checkpoints: wait for it to finish, stop it, or use another ` +
        `--out (if that process is gone, delete ${join(path, LOCK_FILE)})`,
    );
  }
}

function hostname(): string {
  try {
    return Deno.hostname();
  } catch {
    return "unknown-host";
  }
}

/**
 * Whether process `pid` is alive on this machine: /proc on Linux; elsewhere a signal-less probe is
 * not available, so a process is assumed alive (the lock then has to be removed by hand).
 */
export async function processAlive(pid: number): Promise<boolean> {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  if (pid === Deno.pid) return true;
  try {
    await Deno.stat("/proc/self");
  } catch {
    return true; // no /proc: cannot tell
  }
  try {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
    // A zombie (state Z, after the ")" that ends the command name) has exited.
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** A held lock on a run folder; {@link release} it when the run ends. */
export class RunLock {
  #released = false;
  private constructor(readonly path: string, readonly info: LockInfo) {}

  /**
   * Takes the lock of run folder `dir` (created if needed). Throws {@link RunLockedError} when a
   * live process holds it; takes over a stale one (its process is gone).
   */
  static async acquire(dir: string, command?: string): Promise<RunLock> {
    await Deno.mkdir(dir, { recursive: true });
    const path = join(dir, LOCK_FILE);
    const info: LockInfo = {
      pid: Deno.pid,
      host: hostname(),
      started: new Date().toISOString(),
      ...(command ? { command } : {}),
    };
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const f = await Deno.open(path, { write: true, createNew: true });
        try {
          await f.write(new TextEncoder().encode(JSON.stringify(info) + "\n"));
        } finally {
          f.close();
        }
        return new RunLock(path, info);
      } catch (e) {
        if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      }
      const holder = await readLock(path);
      if (holder === "gone") continue; // released meanwhile: try again
      const stale = holder === null || // unreadable or half-written by a process that died
        (holder.host === info.host && holder.pid !== Deno.pid && !(await processAlive(holder.pid)));
      if (!stale) throw new RunLockedError(dir, holder!);
      await Deno.remove(path).catch(() => {});
    }
    throw new Error(`${path}: could not take the run folder's lock (it keeps changing)`);
  }

  /**
   * Runs `fn` holding the lock of run folder `dir` ({@link acquire}) and releases the lock when it
   * ends, however it ends.
   */
  static async hold<T>(
    dir: string,
    command: string,
    fn: (lock: RunLock) => Promise<T>,
  ): Promise<T> {
    const lock = await RunLock.acquire(dir, command);
    try {
      return await fn(lock);
    } finally {
      await lock.release();
    }
  }

  /** Removes the lock file (once; later calls do nothing). */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    const holder = await readLock(this.path);
    if (
      holder && holder !== "gone" && holder.pid === this.info.pid &&
      holder.started === this.info.started
    ) {
      await Deno.remove(this.path).catch(() => {});
    }
  }

  /** Synchronous {@link release}, for exit paths that cannot wait. */
  releaseSync(): void {
    if (this.#released) return;
    this.#released = true;
    try {
      const holder = JSON.parse(Deno.readTextFileSync(this.path)) as LockInfo;
      if (holder.pid === this.info.pid && holder.started === this.info.started) {
        Deno.removeSync(this.path);
      }
    } catch {
      // already gone
    }
  }
}

/** The lock's contents; null when unreadable, "gone" when the file no longer exists. */
async function readLock(path: string): Promise<LockInfo | null | "gone"> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return "gone";
    return null;
  }
  try {
    const j = JSON.parse(text) as LockInfo;
    return Number.isInteger(j.pid) && typeof j.host === "string" ? j : null;
  } catch {
    // A lock being written this instant is also unparsable: only call it stale when it is old.
    try {
      const st = await Deno.stat(path);
      if (st.mtime && Date.now() - st.mtime.getTime() < 5000) {
        return { pid: -1, host: "?", started: "just now (the lock is being written)" };
      }
    } catch {
      return "gone";
    }
    return null;
  }
}
