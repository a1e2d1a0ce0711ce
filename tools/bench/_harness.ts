/**
 * The benchmark harness: each file in tools/bench/ exports `benches`, a list of {@link BenchCase}.
 * A case is set up once, run once to warm up (pipeline compile), then timed best-of-`reps` with a
 * GPU sync after each run, so the time includes the dispatches and the ~11 ms sync on lavapipe only
 * once per run. Throughput comes from the case's own napkin math (`flops`, `bytes`, `items`).
 * @module
 */
import type { Gpu } from "@lvm/kernels";

/** One measured thing. */
export interface BenchCase {
  /** Op or job name, e.g. "matmul". */
  name: string;
  /** Shape or config, e.g. "1024x1024x1024". */
  shape: string;
  /** Floating-point operations of one run (for GFLOP/s). */
  flops?: number;
  /** Bytes moved by one run (for GB/s). */
  bytes?: number;
  /** Items of one run and their unit (for items/s, e.g. tokens/s, images/s). */
  items?: number;
  unit?: string;
  /** Napkin math shown beside the figure. */
  note?: string;
  reps?: number;
  /** Prepares inputs; returns the function timed (which must record or do one run). */
  setup(gpu: Gpu): Promise<() => unknown> | (() => unknown);
  /** Releases what setup made. */
  teardown?(): void;
  /** Extra fields for the JSON line (e.g. memory). */
  extra?: () => Record<string, unknown>;
}

/** Result line. */
export interface BenchResult {
  name: string;
  shape: string;
  ms: number;
  gflops?: number;
  gbps?: number;
  per_s?: number;
  unit?: string;
  note?: string;
  [k: string]: unknown;
}

/** Runs one case: warm-up, then best of `reps`. */
export async function runCase(gpu: Gpu, c: BenchCase, reps = 5): Promise<BenchResult> {
  const fn = await c.setup(gpu);
  await fn();
  await gpu.sync();
  let best = Infinity;
  for (let i = 0; i < (c.reps ?? reps); i++) {
    const t0 = performance.now();
    await fn();
    await gpu.sync();
    best = Math.min(best, performance.now() - t0);
  }
  c.teardown?.();
  const r: BenchResult = { name: c.name, shape: c.shape, ms: +best.toFixed(3) };
  if (c.flops) r.gflops = +(c.flops / best / 1e6).toFixed(2);
  if (c.bytes) r.gbps = +(c.bytes / best / 1e6).toFixed(3);
  if (c.items) {
    r.per_s = +(c.items / best * 1e3).toPrecision(4);
    r.unit = c.unit ?? "items";
  }
  if (c.note) r.note = c.note;
  Object.assign(r, c.extra?.() ?? {});
  return r;
}

/** Human-readable line for a result. */
export function formatResult(r: BenchResult): string {
  const parts = [`${r.name.padEnd(22)} ${r.shape.padEnd(26)} ${r.ms.toFixed(3).padStart(10)} ms`];
  if (r.gflops !== undefined) parts.push(`${r.gflops.toFixed(2).padStart(8)} GFLOP/s`);
  if (r.gbps !== undefined) parts.push(`${r.gbps.toFixed(3).padStart(8)} GB/s`);
  if (r.per_s !== undefined) {
    const v = r.per_s >= 100 ? r.per_s.toFixed(1) : r.per_s.toPrecision(3);
    parts.push(`${v.padStart(9)} ${r.unit}/s`);
  }
  if (r.note) parts.push(`  (${r.note})`);
  return parts.join(" ");
}
