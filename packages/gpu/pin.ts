/**
 * `@lvm/gpu/pin` (Deno on Linux): one core per compute thread of a CPU adapter (Mesa's lavapipe).
 * Importing it installs {@link pinDriverThreads} as the {@link ThreadPinner} of every context created
 * afterwards (`getGpu`, `Gpu.create`): it finds the driver's worker threads by the CPU time a
 * calibration dispatch gives them and pins each to its own core (`sched_setaffinity` through Deno's
 * FFI). The apps, the bench and `@lvm/pipeline/fs` import it; the browser-ready `@lvm/gpu` cannot
 * (no threads there to place).
 *
 * @example
 * ```ts
 * import "@lvm/gpu/pin";
 * import { getGpu } from "@lvm/gpu";
 * const gpu = await getGpu();
 * console.log(gpu.pinning); // on lavapipe, 2 cores: { pinned: 2, cpus: [0, 1], threads: [...] }
 * ```
 *
 * Why: lavapipe cuts a dispatch's workgroups into one equal chunk per worker thread (Mesa 22.3's
 * `lp_cs_tpool`: `workgroups / threads` each, no stealing) and waits for the last chunk. The workers
 * sleep between dispatches, and the kernel's scheduler often wakes both on the core of the thread that
 * woke them: measured with `perf sched timehist` during `100m` GPU-sampled decode on the 2-vCPU VM
 * the project is developed on, each worker spent about as long runnable-but-waiting (0.19-0.20 ms
 * after each of ~8,700 wake-ups in 3 s) as running, the two taking turns on one core while the other
 * sat idle 32% of the time. Pinned one per core, they cannot queue behind each other. Measured in one
 * process, pinning and unpinning the same two threads between rounds (one-off scripts, not bench
 * cases): `100m` decode 38-39.5 ms/token pinned against 41.6-46.6 free (6 rounds each); the tiny
 * tokenizer training step median 441 against 487 ms (18 steps each; in a slower phase 528 against
 * 653).
 *
 * Nothing here is needed for correctness, so every failure is a reason in the result, not an error:
 * no Deno, not Linux, no FFI permission, one core, no worker threads found. `LVM_PIN_THREADS=0` (or
 * `GpuOptions.pinThreads: false`) turns it off.
 * @module
 */

import { notPinned, setThreadPinner, type ThreadPinning } from "./gpu.ts";

/** Calibration runs measured (after one that compiles): a thread must be busy in each. */
const CALIBRATION_RUNS = 3;

/** Environment variable that turns pinning off when "0". */
export const PIN_THREADS_ENV = "LVM_PIN_THREADS";

/** Parses a Linux CPU list (`0-3,8,10-11`, as in `/proc/self/status`'s `Cpus_allowed_list`). */
export function parseCpuList(text: string): number[] {
  const out: number[] = [];
  for (const part of text.trim().split(",")) {
    if (!part) continue;
    const m = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!m) throw new RangeError(`parseCpuList: "${part}" in "${text}" is not N or N-M`);
    const a = Number(m[1]), b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new RangeError(`parseCpuList: range "${part}" in "${text}" runs backwards`);
    for (let c = a; c <= b; c++) out.push(c);
  }
  return out;
}

/**
 * The threads that did the calibration's work, given each thread's CPU time before and after each of
 * several calibration runs: a thread's score is its smallest growth over the runs (a thread busy with
 * something else, a garbage collector, in one run scores by its quietest), and the workers are those
 * scoring at least half the best score and at least `minNs`, the main thread excluded, the busiest
 * first. The driver cuts the work into equal chunks, one per worker, so its workers grow alike; its
 * queue thread, which hands the dispatch over and waits, grows by a fraction of that.
 */
export function pickWorkers(
  snapshots: readonly ReadonlyMap<number, number>[],
  mainTid: number,
  minNs = 200_000,
): number[] {
  if (snapshots.length < 2) throw new RangeError("pickWorkers: needs at least two snapshots");
  const last = snapshots[snapshots.length - 1];
  const score = [...last.keys()].filter((tid) => tid !== mainTid).map((tid) => {
    let least = Infinity;
    for (let i = 1; i < snapshots.length; i++) {
      least = Math.min(least, (snapshots[i].get(tid) ?? 0) - (snapshots[i - 1].get(tid) ?? 0));
    }
    return [tid, least] as const;
  }).sort((a, b) => b[1] - a[1]);
  const top = score.length ? score[0][1] : 0;
  return score.filter(([, d]) => d >= minNs && d >= top / 2).map(([tid]) => tid);
}

/** CPU time of each of this process's threads, ns (`/proc/self/task/TID/schedstat`). */
export function threadCpuNs(): Map<number, number> {
  const out = new Map<number, number>();
  for (const e of Deno.readDirSync("/proc/self/task")) {
    try {
      const ns = Number(Deno.readTextFileSync(`/proc/self/task/${e.name}/schedstat`).split(" ")[0]);
      if (Number.isFinite(ns)) out.set(Number(e.name), ns);
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out;
}

/** The cores a thread may run on (`Cpus_allowed_list` of /proc/self/task/TID/status). */
export function threadCpus(tid: number): number[] {
  const status = Deno.readTextFileSync(`/proc/self/task/${tid}/status`);
  const m = /Cpus_allowed_list:\s*(\S+)/.exec(status);
  if (!m) throw new Error(`/proc/self/task/${tid}/status has no Cpus_allowed_list`);
  return parseCpuList(m[1]);
}

/** Why pinning cannot run here, or null when it can. */
function unavailable(): string | null {
  if (typeof Deno === "undefined" || typeof Deno.dlopen !== "function") return "not Deno";
  if (Deno.build.os !== "linux") return `not Linux (${Deno.build.os})`;
  if (Deno.env.get(PIN_THREADS_ENV) === "0") return `${PIN_THREADS_ENV}=0`;
  try {
    if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") return "no FFI permission";
    if (Deno.permissions.querySync({ name: "read", path: "/proc" }).state !== "granted") {
      return "no read permission on /proc";
    }
  } catch (e) {
    return `permissions: ${(e as Error).message}`;
  }
  return null;
}

/**
 * Runs `calibrate` (work for the driver's compute threads, awaited until done) once to compile it,
 * then {@link CALIBRATION_RUNS} times measured, and pins each thread that did the work
 * ({@link pickWorkers}) to its own core among those the process may use (round robin when there are
 * more threads than cores). Call it once a CPU adapter's device exists; see the module doc for why.
 */
export async function pinDriverThreads(calibrate: () => Promise<void>): Promise<ThreadPinning> {
  const no = unavailable();
  if (no) return notPinned(no);
  let cores: number[];
  try {
    cores = threadCpus(Deno.pid);
  } catch (e) {
    return notPinned((e as Error).message);
  }
  if (cores.length < 2) return notPinned(`one core (${cores.join(",")})`);
  await calibrate(); // once to compile the kernel (lavapipe compiles on its queue thread)
  const snapshots = [threadCpuNs()];
  for (let i = 0; i < CALIBRATION_RUNS; i++) {
    await calibrate();
    snapshots.push(threadCpuNs());
  }
  const workers = pickWorkers(snapshots, Deno.pid);
  if (workers.length < 2) {
    const busiest = [...snapshots[CALIBRATION_RUNS]]
      .map(([tid, ns]) => [tid, ns - (snapshots[0].get(tid) ?? 0)])
      .sort((a, b) => b[1] - a[1]).slice(0, 4)
      .map(([tid, ns]) => `${tid}${tid === Deno.pid ? " (main)" : ""} ${(ns / 1e6).toFixed(1)} ms`);
    return notPinned(
      `${workers.length} worker thread(s) found (busiest over the calibration: ${
        busiest.join(", ")
      })`,
    );
  }
  let lib: Deno.DynamicLibrary<{
    sched_setaffinity: { parameters: ["i32", "usize", "buffer"]; result: "i32" };
  }>;
  try {
    lib = Deno.dlopen("libc.so.6", {
      sched_setaffinity: { parameters: ["i32", "usize", "buffer"], result: "i32" },
    });
  } catch (e) {
    return notPinned(`libc.so.6: ${(e as Error).message}`);
  }
  try {
    // A cpu_set_t: one bit per core, at least glibc's 1024 bits.
    const bytes = Math.max(128, Math.ceil((Math.max(...cores) + 1) / 64) * 8);
    const setAffinity = (tid: number, on: readonly number[]) => {
      const mask = new Uint8Array(bytes);
      for (const c of on) mask[c >> 3] |= 1 << (c & 7);
      return lib.symbols.sched_setaffinity(tid, BigInt(bytes), mask) === 0;
    };
    const cpus: number[] = [];
    for (const [i, tid] of workers.entries()) {
      const cpu = cores[i % cores.length];
      if (!setAffinity(tid, [cpu])) {
        // Undo what was done: half-pinned threads are worse than none.
        for (const t of workers.slice(0, i)) setAffinity(t, cores);
        return notPinned(`sched_setaffinity failed for thread ${tid}`);
      }
      cpus.push(cpu);
    }
    return { pinned: workers.length, cpus, threads: workers };
  } finally {
    lib.close();
  }
}

setThreadPinner(pinDriverThreads);
