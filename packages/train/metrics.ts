/**
 * What a run leaves beside its checkpoints for people to read: a metrics log (one JSON object per
 * line, appended as the run goes) and a loss chart (PNG: training loss and validation loss against
 * the step, redrawn as the run goes, written atomically so a viewer never sees half a file).
 * @module
 */
import type { ChartSeries } from "@lvm/image";
import { saveChart } from "@lvm/image/fs";
import type { LogRecord } from "./checkpoint.ts";

/** Appends one JSON object per line to a file (nothing when the path is null). */
export class MetricsLog {
  constructor(readonly path: string | null) {}
  /** Appends `record` as one line. */
  write(record: Record<string, unknown>): void {
    if (this.path) {
      Deno.writeTextFileSync(this.path, JSON.stringify(record) + "\n", { append: true });
    }
  }
}

/** Seconds between two redraws of the chart on progress reports (evaluations always redraw). */
const CHART_INTERVAL_S = 5;

/**
 * The loss chart of a run, drawn from its history (the trainer's `log_history`: one record per
 * progress report, `val_loss` on those with an evaluation), so a resumed run continues its curve.
 * The y axis is logarithmic when the losses span more than a factor of 20.
 */
export class LossChart {
  #last = -Infinity;
  constructor(
    readonly path: string,
    readonly history: readonly LogRecord[],
    readonly title = "loss",
    /** Legend of the evaluation series (its `loss`). */
    readonly evalName = "validation",
  ) {}

  /** The chart's series: training loss and, when any, validation loss, by step. */
  series(): ChartSeries[] {
    const train = this.history.filter((h) => Number.isFinite(h.loss)).map((h) =>
      [h.step, h.loss] as [number, number]
    );
    const val = this.history.filter((h) => h.val_loss !== undefined && Number.isFinite(h.val_loss))
      .map((h) => [h.step, h.val_loss!] as [number, number]);
    const out: ChartSeries[] = [{ name: "train", points: train }];
    if (val.length) out.push({ name: this.evalName, points: val, markers: true });
    return out;
  }

  /** Redraws the chart (at most every few seconds unless `force`). */
  async update(force = false): Promise<void> {
    const now = performance.now() / 1000;
    if (!force && now - this.#last < CHART_INTERVAL_S) return;
    this.#last = now;
    const series = this.series();
    const ys = series.flatMap((s) => s.points.map((p) => p[1]));
    if (!ys.length) return;
    const lo = Math.min(...ys), hi = Math.max(...ys);
    await saveChart(this.path, {
      series,
      title: this.title,
      xLabel: "step",
      yLabel: "loss",
      logY: lo > 0 && hi / lo > 20,
    });
  }
}
