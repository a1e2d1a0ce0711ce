/**
 * The benchmark harness: each file in tools/bench/ exports `benches`, a list of {@link BenchCase}.
 * A case is set up once, run once to warm up (pipeline compile), then timed best-of-`reps` with a
 * GPU sync after each run, so the time includes the dispatches and the ~11 ms sync on lavapipe only
 * once per run. A run may record several ops (`per`, e.g. 16 small matmuls before one sync): `ms` is
 * the best run's time divided by `per` (time per op), `run_ms` the run's own time. Throughput comes
 * from the case's own napkin math (`flops`, `bytes`, `items`, all of one run) over the run's time,
 * so it does not depend on `per`.
 * @module
 */
import type { AdapterKind, Gpu, KernelTime } from "@lvm/gpu";
import { matmul } from "@lvm/kernels";

/** One measured thing. */
export interface BenchCase {
  /** Op or job name, e.g. "matmul". */
  name: string;
  /** Shape or config, e.g. "1024x1024x1024". */
  shape: string;
  /** Ops one timed run does (default 1): `ms` is reported per op, run time / `per`. */
  per?: number;
  /** Floating-point operations of one run, all `per` ops together (for GFLOP/s). */
  flops?: number;
  /** Bytes moved by one run, all `per` ops together (for GB/s). */
  bytes?: number;
  /** Items of one run and their unit (for items/s, e.g. tokens/s, images/s). */
  items?: number;
  unit?: string;
  /** Napkin math shown beside the figure. */
  note?: string;
  /** Timed runs of this case when `--reps` is not given (default 5). */
  reps?: number;
  /**
   * Kernel kinds the case runs in (default: every kind): a GPU-only A/B (a tuning knob flipped)
   * is skipped on lavapipe, where it would only lengthen the bench.
   */
  kinds?: AdapterKind[];
  /** Prepares inputs; returns the function timed (which must record or do one run). */
  setup(gpu: Gpu): Promise<() => unknown> | (() => unknown);
  /** Releases what setup made. */
  teardown?(): void;
  /**
   * Extra fields for the result (e.g. parameter counts); a `mem_mb` among them is also printed in
   * the human-readable line.
   */
  extra?: () => Record<string, unknown>;
}

/** Result line (the `--json` object, less `backend`/`adapter`). */
export interface BenchResult {
  name: string;
  shape: string;
  /** Milliseconds per op: the best run's time / `per`. */
  ms: number;
  /** Ops per timed run. */
  per?: number;
  /** Milliseconds of the best timed run (all `per` ops and one sync). */
  run_ms?: number;
  gflops?: number;
  gbps?: number;
  per_s?: number;
  unit?: string;
  /** Memory the case held, MiB (2^20 bytes); what it counts is the case's to say. */
  mem_mb?: number;
  /** GPU dispatches per generated token (decode cases; prefill excluded). */
  dispatches_per_token?: number;
  /** GPU dispatches per training step (train-step cases). */
  dispatches_per_step?: number;
  note?: string;
  /**
   * With `--profile N`: the GPU time of one more, profiled run (every dispatch timed in its own
   * pass) and its N slowest kernels.
   */
  profile_ms?: number;
  profile?: KernelTime[];
  [k: string]: unknown;
}

/**
 * Runs one case: warm-up, then best of `reps` timed runs (`reps` given: the command line's
 * `--reps`, which overrides the case's own; otherwise the case's, else 5).
 */
export async function runCase(
  gpu: Gpu,
  c: BenchCase,
  reps?: number,
  options: { profile?: number; profileRuns?: number } = {},
): Promise<BenchResult> {
  const per = c.per ?? 1;
  if (!Number.isInteger(per) || per < 1) {
    throw new RangeError(
      `bench case "${c.name} ${c.shape}": per must be a positive integer, found ${per}`,
    );
  }
  const fn = await c.setup(gpu);
  await fn();
  await gpu.sync();
  let best = Infinity;
  for (let i = 0; i < (reps ?? c.reps ?? 5); i++) {
    const t0 = performance.now();
    await fn();
    await gpu.sync();
    best = Math.min(best, performance.now() - t0);
  }
  // --profile: more runs with every dispatch timed on the GPU (`profileRuns`, default 1; the one of
  // least GPU time kept), the slowest kernels kept.
  let profile: KernelTime[] | undefined, profileMs = Infinity;
  for (let i = 0; options.profile && i < (options.profileRuns ?? 1); i++) {
    gpu.startProfile();
    try {
      await fn();
    } finally {
      const all = await gpu.stopProfile();
      const ms = all.reduce((a, k) => a + k.ms, 0);
      if (ms < profileMs) {
        profileMs = ms;
        profile = all.slice(0, options.profile).map((k) => ({ ...k, ms: +k.ms.toFixed(3) }));
      }
    }
  }
  const extra = c.extra?.() ?? {}; // before teardown: it may read what the case holds
  c.teardown?.();
  const r: BenchResult = {
    name: c.name,
    shape: c.shape,
    ms: +(best / per).toFixed(3),
    per,
    run_ms: +best.toFixed(3),
  };
  if (c.flops) r.gflops = +(c.flops / best / 1e6).toFixed(2);
  if (c.bytes) r.gbps = +(c.bytes / best / 1e6).toFixed(3);
  if (c.items) {
    r.per_s = +(c.items / best * 1e3).toPrecision(4);
    r.unit = c.unit ?? "items";
  }
  if (c.note) r.note = c.note;
  Object.assign(r, extra);
  if (profile) {
    r.profile_ms = +profileMs.toFixed(3);
    r.profile = profile;
  }
  return r;
}

/** Human-readable line for a result: ms per op ("(N/run)" when a run holds N ops), rates, memory. */
export function formatResult(r: BenchResult): string {
  const per = (r.per !== undefined && r.per > 1 ? ` (${r.per}/run)` : "").padEnd(9);
  const parts = [
    `${r.name.padEnd(22)} ${r.shape.padEnd(26)} ${r.ms.toFixed(3).padStart(10)} ms${per}`,
  ];
  if (r.gflops !== undefined) parts.push(`${r.gflops.toFixed(2).padStart(8)} GFLOP/s`);
  if (r.gbps !== undefined) parts.push(`${r.gbps.toFixed(3).padStart(8)} GB/s`);
  if (r.per_s !== undefined) {
    const v = r.per_s >= 100 ? r.per_s.toFixed(1) : r.per_s.toPrecision(3);
    parts.push(`${v.padStart(9)} ${r.unit}/s`);
  }
  if (typeof r.mem_mb === "number") parts.push(`mem ${r.mem_mb.toFixed(1)} MiB`);
  if (typeof r.dispatches_per_token === "number") {
    parts.push(`${r.dispatches_per_token} dispatches/token`);
  }
  if (typeof r.dispatches_per_step === "number") {
    parts.push(`${r.dispatches_per_step} dispatches/step`);
  }
  if (typeof r.ms_worst === "number") {
    parts.push(`worst of ${r.rounds} rounds ${r.ms_worst.toFixed(3)} ms`);
  }
  if (r.note) parts.push(`  (${r.note})`);
  let out = parts.join(" ");
  if (r.profile) {
    out += `\n    profiled run: ${
      r.profile_ms?.toFixed(1)
    } ms of GPU time in its dispatches; slowest:`;
    for (const k of r.profile) {
      const share = r.profile_ms ? ` ${(100 * k.ms / r.profile_ms).toFixed(1).padStart(5)}%` : "";
      out += `\n    ${k.ms.toFixed(3).padStart(10)} ms${share} ${
        String(k.dispatches).padStart(5)
      }x ${k.kernel.length > 90 ? k.kernel.slice(0, 87) + "..." : k.kernel}`;
    }
  }
  return out;
}

/**
 * Keeps the GPU busy for about `seconds` (1024^3 matmuls, a sync after each batch), so that a card
 * that idles at a low clock (an H200 at 345 MHz) is at its working clock before anything is timed.
 * Returns the products run.
 */
export async function warmUp(gpu: Gpu, seconds: number): Promise<number> {
  if (!(seconds > 0)) return 0;
  const a = gpu.upload(new Float32Array(1024 * 1024).fill(0.5), [1024, 1024]);
  const end = performance.now() + seconds * 1000;
  let n = 0;
  while (performance.now() < end) {
    for (let i = 0; i < 4; i++, n++) matmul(gpu, a, a).release();
    await gpu.sync();
  }
  a.release();
  return n;
}
