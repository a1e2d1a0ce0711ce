/**
 * Progress lines: one formatter for "how far, how fast, how long still" ({@link formatProgress}),
 * a throttled printer ({@link progressMeter}) and the checkpoint-load reporter
 * ({@link loadProgress}). Durations print as `h:mm:ss` ({@link formatDuration}).
 * @module
 */

/** Seconds as `h:mm:ss`; `?` for a negative or non-finite time (an ETA not known yet). */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  return `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${
    String(s % 60).padStart(2, "0")
  }`;
}

/** What a progress line reports. */
export interface ProgressState {
  /** Units done so far (steps, images, tokens). */
  done: number;
  /** Units in all. */
  total: number;
  /** Seconds since the work started (gives the rate and the ETA when those are not given). */
  seconds: number;
  /** The unit counted, printed before the count: `step 12/400`. Default none. */
  unit?: string;
  /** A prefix such as `[train]`. */
  label?: string;
  /** Units per second, if not done / seconds (e.g. tokens/s of a run that counts steps). */
  rate?: number;
  /** The unit of `rate` (default `unit`, else "items"). */
  rateUnit?: string;
  /** Seconds left, if not (total - done) / rate. */
  eta?: number;
  /** More fields, printed between the rate and the ETA: `loss 0.6931`. */
  fields?: readonly string[];
}

/**
 * One progress line: `[label] unit done/total (pct%) · rate unit/s · fields... · ETA h:mm:ss`.
 *
 * @example
 * ```ts
 * import { formatProgress } from "@lvm/cli";
 * console.log(formatProgress({ unit: "step", done: 10, total: 40, seconds: 5 }));
 * // step 10/40 (25.0%) · 2.00 step/s · ETA 0:00:15
 * ```
 */
export function formatProgress(p: ProgressState): string {
  const rate = p.rate ?? (p.seconds > 0 ? p.done / p.seconds : NaN);
  const eta = p.eta ?? (rate > 0 ? (p.total - p.done) / rate : NaN);
  const pct = p.total > 0 ? ((100 * p.done) / p.total).toFixed(1) : "100.0";
  const head = [p.label, p.unit, `${p.done}/${p.total} (${pct}%)`].filter(Boolean).join(" ");
  const r = !Number.isFinite(rate)
    ? "?"
    : rate >= 100
    ? Math.round(rate).toLocaleString("en-US")
    : rate.toFixed(2);
  return [
    head,
    `${r} ${p.rateUnit ?? p.unit ?? "items"}/s`,
    ...(p.fields ?? []),
    `ETA ${formatDuration(eta)}`,
  ].join(" · ");
}

/** Options of {@link progressMeter}. */
export interface MeterOptions {
  /** Units in all. */
  total: number;
  /** Where lines go (e.g. `console.error`). */
  log: (line: string) => unknown;
  /** The unit counted (`tokens`). */
  unit?: string;
  /** A prefix such as `[infer]`. */
  label?: string;
  /** At most one line per this many ms, plus the first and the last (default 1000). */
  everyMs?: number;
}

/**
 * A progress printer: call it with the units done (and optional extra fields); it prints a
 * {@link formatProgress} line at most every `everyMs`, always the first and the last.
 */
export function progressMeter(
  opts: MeterOptions,
): (done: number, fields?: readonly string[]) => void {
  const t0 = performance.now();
  const every = opts.everyMs ?? 1000;
  let last = -Infinity;
  return (done, fields) => {
    const now = performance.now();
    if (now - last < every && done < opts.total && last > -Infinity) return;
    last = now;
    opts.log(formatProgress({
      label: opts.label,
      unit: opts.unit,
      done,
      total: opts.total,
      seconds: (now - t0) / 1000,
      fields,
    }));
  };
}

/**
 * A checkpoint-load progress callback (`loadLlama`'s `onTensor`): a line through `log` at most every
 * `everyMs` (a 7B takes minutes to load on a CPU), none for a load faster than that.
 */
export function loadProgress(
  log: (line: string) => unknown,
  everyMs = 5000,
): (name: string, index: number, total: number) => void {
  const t0 = performance.now();
  let last = t0;
  return (_name, index, total) => {
    const now = performance.now();
    if (now - last < everyMs) return;
    last = now;
    const s = (now - t0) / 1000, done = index + 1;
    const eta = (s / done) * (total - done);
    log(`  loaded ${done}/${total} tensors in ${s.toFixed(0)} s, eta ${eta.toFixed(0)} s`);
  };
}
