/**
 * Line charts as images, with no dependency: axes with "nice" ticks, several series, a legend, a
 * title and axis labels, linear or logarithmic y; drawn into an {@link RgbImage} (so it saves as a
 * PNG through the same encoder as every other image here). Used for training loss curves and, later,
 * in-context and scaling curves.
 *
 * Text is drawn with a built-in 5x7 bitmap font (digits, A-Z, a few symbols; lower case is drawn
 * as upper case), scaled by whole pixels: no system fonts, the same pixels on every machine.
 *
 * ```
 *  +-------------------------------------------+
 *  |                  TITLE                    |
 *  |  1.5 -|\                    [-- TRAIN ]   |
 *  |       | \__                 [-- VAL   ]   |
 *  |  1.0 -|    \______                        |
 *  |       +-----+------+------+               |
 *  |       0     50    100    150              |
 *  |                 STEP                      |
 *  +-------------------------------------------+
 * ```
 * @module
 */
import { encodePng } from "./codec.ts";
import { makeImage, type RgbImage } from "./image.ts";

/** An RGB colour, each channel in [0, 1]. */
export type Rgb = readonly [number, number, number];

/** One line of a chart. */
export interface ChartSeries {
  /** Legend text. */
  name: string;
  /** Points in data units, drawn in the given order; non-finite values break the line. */
  points: readonly (readonly [number, number])[];
  /** Line colour (default: the next of {@link CHART_COLORS}). */
  color?: Rgb;
  /** Also mark each point with a small square (default: only when a series has 1 point). */
  markers?: boolean;
}

/** What to draw. */
export interface ChartOptions {
  series: readonly ChartSeries[];
  /** Pixels (default 640 x 400). */
  width?: number;
  height?: number;
  title?: string;
  xLabel?: string;
  yLabel?: string;
  /** Logarithmic y axis (points with y <= 0 are skipped). Default false. */
  logY?: boolean;
  /** Fixed axis ranges in data units (default: the data's extent, padded, to nice ticks). */
  xRange?: readonly [number, number];
  yRange?: readonly [number, number];
  /** Text scale in whole pixels per font pixel (default 2 when the chart is >= 400 wide, else 1). */
  textScale?: number;
}

/** The default series colours (matplotlib's first ones). */
export const CHART_COLORS: readonly Rgb[] = [
  [0.12, 0.47, 0.71],
  [1.0, 0.5, 0.05],
  [0.17, 0.63, 0.17],
  [0.84, 0.15, 0.16],
  [0.58, 0.4, 0.74],
  [0.55, 0.34, 0.29],
  [0.89, 0.47, 0.76],
  [0.5, 0.5, 0.5],
  [0.74, 0.74, 0.13],
  [0.09, 0.75, 0.81],
];

/** Where the data lands: the plot rectangle and the data-to-pixel mapping of a chart. */
export interface ChartLayout {
  width: number;
  height: number;
  /** The plot area in pixels (inclusive left/top, exclusive right/bottom). */
  plot: { left: number; top: number; right: number; bottom: number };
  /** Axis ranges in data units (y in data units too, also when log). */
  x: [number, number];
  y: [number, number];
  /** Tick values. */
  xTicks: number[];
  yTicks: number[];
  /** Pixel (column, row) of a data point (fractional; may fall outside the plot). */
  toPixel(x: number, y: number): [number, number];
}

// ---------------------------------------------------------------------------------- the font

/**
 * 5x7 glyphs: seven rows of five bits each (bit 4 = leftmost column). Lower case letters are drawn
 * with the upper case glyphs; unknown characters as a hollow box.
 */
const FONT: Record<string, number[]> = {
  " ": [0, 0, 0, 0, 0, 0, 0],
  "0": [14, 17, 19, 21, 25, 17, 14],
  "1": [4, 12, 4, 4, 4, 4, 14],
  "2": [14, 17, 1, 2, 4, 8, 31],
  "3": [31, 2, 4, 2, 1, 17, 14],
  "4": [2, 6, 10, 18, 31, 2, 2],
  "5": [31, 16, 30, 1, 1, 17, 14],
  "6": [6, 8, 16, 30, 17, 17, 14],
  "7": [31, 1, 2, 4, 8, 8, 8],
  "8": [14, 17, 17, 14, 17, 17, 14],
  "9": [14, 17, 17, 15, 1, 2, 12],
  A: [14, 17, 17, 31, 17, 17, 17],
  B: [30, 17, 17, 30, 17, 17, 30],
  C: [14, 17, 16, 16, 16, 17, 14],
  D: [28, 18, 17, 17, 17, 18, 28],
  E: [31, 16, 16, 30, 16, 16, 31],
  F: [31, 16, 16, 30, 16, 16, 16],
  G: [14, 17, 16, 23, 17, 17, 15],
  H: [17, 17, 17, 31, 17, 17, 17],
  I: [14, 4, 4, 4, 4, 4, 14],
  J: [7, 2, 2, 2, 2, 18, 12],
  K: [17, 18, 20, 24, 20, 18, 17],
  L: [16, 16, 16, 16, 16, 16, 31],
  M: [17, 27, 21, 21, 17, 17, 17],
  N: [17, 17, 25, 21, 19, 17, 17],
  O: [14, 17, 17, 17, 17, 17, 14],
  P: [30, 17, 17, 30, 16, 16, 16],
  Q: [14, 17, 17, 17, 21, 18, 13],
  R: [30, 17, 17, 30, 20, 18, 17],
  S: [15, 16, 16, 14, 1, 1, 30],
  T: [31, 4, 4, 4, 4, 4, 4],
  U: [17, 17, 17, 17, 17, 17, 14],
  V: [17, 17, 17, 17, 17, 10, 4],
  W: [17, 17, 17, 21, 21, 21, 10],
  X: [17, 17, 10, 4, 10, 17, 17],
  Y: [17, 17, 17, 10, 4, 4, 4],
  Z: [31, 1, 2, 4, 8, 16, 31],
  ".": [0, 0, 0, 0, 0, 12, 12],
  ",": [0, 0, 0, 0, 12, 4, 8],
  "-": [0, 0, 0, 31, 0, 0, 0],
  "+": [0, 4, 4, 31, 4, 4, 0],
  ":": [0, 12, 12, 0, 12, 12, 0],
  "/": [0, 1, 2, 4, 8, 16, 0],
  "(": [2, 4, 8, 8, 8, 4, 2],
  ")": [8, 4, 2, 2, 2, 4, 8],
  "%": [24, 25, 2, 4, 8, 19, 3],
  "=": [0, 0, 31, 0, 31, 0, 0],
  "_": [0, 0, 0, 0, 0, 0, 31],
  "[": [14, 8, 8, 8, 8, 8, 14],
  "]": [14, 2, 2, 2, 2, 2, 14],
  "x": [0, 0, 17, 10, 4, 10, 17],
  "*": [0, 4, 21, 14, 21, 4, 0],
  "'": [4, 4, 8, 0, 0, 0, 0],
  "#": [10, 10, 31, 10, 31, 10, 10],
  "<": [2, 4, 8, 16, 8, 4, 2],
  ">": [8, 4, 2, 1, 2, 4, 8],
  "?": [14, 17, 1, 2, 4, 0, 4],
  "!": [4, 4, 4, 4, 4, 0, 4],
};
const BOX = [31, 17, 17, 17, 17, 17, 31];
const GLYPH_W = 5, GLYPH_H = 7, ADVANCE = 6;

function glyph(ch: string): number[] {
  return FONT[ch] ?? FONT[ch.toUpperCase()] ?? BOX;
}

/** Width in pixels of `text` at `scale`. */
export function textWidth(text: string, scale = 1): number {
  return text.length ? (text.length * ADVANCE - 1) * scale : 0;
}

// ---------------------------------------------------------------------------------- drawing

class Canvas {
  readonly img: RgbImage;
  constructor(readonly w: number, readonly h: number) {
    this.img = makeImage(w, h, new Float32Array(3 * w * h).fill(1));
  }
  set(x: number, y: number, c: Rgb): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.w || y >= this.h) return;
    const p = this.w * this.h, i = y * this.w + x;
    this.img.data[i] = c[0];
    this.img.data[p + i] = c[1];
    this.img.data[2 * p + i] = c[2];
  }
  rect(x0: number, y0: number, x1: number, y1: number, c: Rgb): void {
    for (let y = Math.round(y0); y < Math.round(y1); y++) {
      for (let x = Math.round(x0); x < Math.round(x1); x++) this.set(x, y, c);
    }
  }
  /** A line of `thick` pixels from (x0,y0) to (x1,y1), stepping along the longer axis. */
  line(x0: number, y0: number, x1: number, y1: number, c: Rgb, thick = 1): void {
    const n = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    const lo = -Math.floor((thick - 1) / 2), hi = lo + thick;
    for (let i = 0; i <= n; i++) {
      const x = Math.round(x0 + ((x1 - x0) * i) / n), y = Math.round(y0 + ((y1 - y0) * i) / n);
      for (let dy = lo; dy < hi; dy++) for (let dx = lo; dx < hi; dx++) this.set(x + dx, y + dy, c);
    }
  }
  text(s: string, x: number, y: number, c: Rgb, scale: number): void {
    let cx = Math.round(x);
    for (const ch of s) {
      const g = glyph(ch);
      for (let r = 0; r < GLYPH_H; r++) {
        for (let b = 0; b < GLYPH_W; b++) {
          if (g[r] & (1 << (GLYPH_W - 1 - b))) {
            this.rect(cx + b * scale, y + r * scale, cx + (b + 1) * scale, y + (r + 1) * scale, c);
          }
        }
      }
      cx += ADVANCE * scale;
    }
  }
  /** Text turned 90 degrees counter-clockwise (read bottom to top), its top-left at (x, y). */
  textUp(s: string, x: number, y: number, c: Rgb, scale: number): void {
    const len = textWidth(s, 1);
    let i = 0;
    for (const ch of s) {
      const g = glyph(ch);
      for (let r = 0; r < GLYPH_H; r++) {
        for (let b = 0; b < GLYPH_W; b++) {
          if (g[r] & (1 << (GLYPH_W - 1 - b))) {
            const u = i * ADVANCE + b; // along the text
            const px = x + r * scale, py = y + (len - 1 - u) * scale;
            this.rect(px, py, px + scale, py + scale, c);
          }
        }
      }
      i++;
    }
  }
}

// ---------------------------------------------------------------------------------- ticks

/** A "nice" step (1, 2 or 5 times a power of ten) near span / target. */
function niceStep(span: number, target: number): number {
  const raw = span / Math.max(1, target);
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
}

/** Ticks of a linear axis over [lo, hi]: multiples of a nice step inside the range. */
export function linearTicks(lo: number, hi: number, target = 5): number[] {
  if (!(hi > lo)) return [lo];
  const step = niceStep(hi - lo, target);
  const out: number[] = [];
  for (let k = Math.ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9; k++) {
    out.push(+(k * step).toPrecision(12));
  }
  return out;
}

/** Ticks of a log axis over [lo, hi] (> 0): powers of ten, with 2 and 5 when few decades. */
export function logTicks(lo: number, hi: number): number[] {
  const a = Math.floor(Math.log10(lo)), b = Math.ceil(Math.log10(hi));
  const mults = b - a <= 3 ? [1, 2, 5] : [1];
  const out: number[] = [];
  for (let e = a; e <= b; e++) {
    for (const m of mults) {
      const v = +(m * 10 ** e).toPrecision(12);
      if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) out.push(v);
    }
  }
  return out.length ? out : [lo];
}

/** A short tick label: plain for moderate magnitudes, else "1.5e-4" style. */
export function formatTick(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) {
    const [m, e] = v.toExponential().split("e");
    return `${+(+m).toPrecision(3)}e${+e}`;
  }
  return String(+v.toPrecision(4));
}

// ---------------------------------------------------------------------------------- the chart

function extent(vals: number[]): [number, number] | null {
  const f = vals.filter(Number.isFinite);
  if (!f.length) return null;
  return [Math.min(...f), Math.max(...f)];
}

function usable(o: ChartOptions, p: readonly [number, number]): boolean {
  return Number.isFinite(p[0]) && Number.isFinite(p[1]) && (!o.logY || p[1] > 0);
}

/** The layout {@link renderChart} uses for `o` (ranges, ticks, plot area, data-to-pixel mapping). */
export function chartLayout(o: ChartOptions): ChartLayout {
  const W = o.width ?? 640, H = o.height ?? 400;
  if (!(Number.isInteger(W) && Number.isInteger(H) && W >= 64 && H >= 48)) {
    throw new RangeError(`chart: width and height must be integers >= 64 x 48, found ${W} x ${H}`);
  }
  const s = o.textScale ?? (W >= 400 ? 2 : 1);
  const pts = o.series.flatMap((se) => se.points.filter((p) => usable(o, p)));
  let [x0, x1] = o.xRange ?? extent(pts.map((p) => p[0])) ?? [0, 1];
  let [y0, y1] = o.yRange ?? extent(pts.map((p) => p[1])) ?? (o.logY ? [1, 10] : [0, 1]);
  if (!(x1 > x0)) [x0, x1] = [x0 - 0.5, x1 + 0.5];
  let yTicks: number[];
  if (o.logY) {
    if (!(y0 > 0)) throw new RangeError(`chart: a log y axis needs positive values, found ${y0}`);
    if (!(y1 > y0)) [y0, y1] = [y0 / 2, y1 * 2];
    if (!o.yRange) [y0, y1] = [y0 / 1.1, y1 * 1.1]; // keep the curve off the frame
    yTicks = logTicks(y0, y1);
  } else {
    if (!(y1 > y0)) [y0, y1] = [y0 - (Math.abs(y0) || 1) * 0.5, y1 + (Math.abs(y1) || 1) * 0.5];
    if (!o.yRange) {
      const step = niceStep(y1 - y0, 5);
      y0 = Math.floor(y0 / step) * step;
      y1 = Math.ceil(y1 / step) * step;
    }
    yTicks = linearTicks(y0, y1);
  }
  if (!o.xRange) {
    const step = niceStep(x1 - x0, 6);
    x0 = Math.floor(x0 / step) * step;
    x1 = Math.ceil(x1 / step) * step;
  }
  const xTicks = linearTicks(x0, x1, 6);
  const ch = GLYPH_H * s, pad = 4 * s;
  const yLabelW = Math.max(...yTicks.map((t) => textWidth(formatTick(t), s)));
  const left = pad + (o.yLabel ? ch + pad : 0) + yLabelW + pad + 3 * s;
  const top = pad + (o.title ? ch + 2 * pad : pad);
  const bottom = H - (pad + (o.xLabel ? ch + pad : 0) + ch + pad + 3 * s);
  const right = W - Math.max(pad * 2, Math.ceil(textWidth(formatTick(x1), s) / 2) + pad);
  if (right - left < 16 || bottom - top < 16) {
    throw new RangeError(`chart: ${W} x ${H} leaves no room for the plot at text scale ${s}`);
  }
  const ty = (v: number) => (o.logY ? Math.log10(v) : v);
  const [ly0, ly1] = [ty(y0), ty(y1)];
  return {
    width: W,
    height: H,
    plot: { left, top, right, bottom },
    x: [x0, x1],
    y: [y0, y1],
    xTicks,
    yTicks,
    toPixel(x: number, y: number): [number, number] {
      const px = left + ((x - x0) / (x1 - x0)) * (right - 1 - left);
      const py = bottom - 1 - ((ty(y) - ly0) / (ly1 - ly0)) * (bottom - 1 - top);
      return [px, py];
    },
  };
}

const BLACK: Rgb = [0, 0, 0], GRID: Rgb = [0.9, 0.9, 0.9], GREY: Rgb = [0.35, 0.35, 0.35];

/**
 * Draws a line chart.
 *
 * @example
 * ```ts
 * import { renderChart } from "@lvm/image";
 * const img = renderChart({
 *   title: "loss",
 *   xLabel: "step",
 *   series: [{ name: "train", points: [[0, 9], [10, 4], [20, 2.5]] }],
 * });
 * console.assert(img.width === 640 && img.height === 400);
 * ```
 */
export function renderChart(o: ChartOptions): RgbImage {
  const L = chartLayout(o);
  const s = o.textScale ?? (L.width >= 400 ? 2 : 1);
  const cv = new Canvas(L.width, L.height);
  const { left, top, right, bottom } = L.plot;
  const ch = GLYPH_H * s, pad = 4 * s;
  // Grid and ticks.
  for (const t of L.yTicks) {
    const py = Math.round(L.toPixel(L.x[0], t)[1]);
    cv.line(left + 1, py, right - 1, py, GRID);
    cv.line(left - 3 * s, py, left - 1, py, BLACK);
    const label = formatTick(t);
    cv.text(label, left - 3 * s - pad / 2 - textWidth(label, s), py - Math.floor(ch / 2), GREY, s);
  }
  for (const t of L.xTicks) {
    const px = Math.round(L.toPixel(t, L.y[0])[0]);
    cv.line(px, top, px, bottom - 2, GRID);
    cv.line(px, bottom, px, bottom + 3 * s - 1, BLACK);
    const label = formatTick(t);
    cv.text(label, px - Math.floor(textWidth(label, s) / 2), bottom + 3 * s + pad / 2, GREY, s);
  }
  // Frame.
  cv.line(left - 1, top, left - 1, bottom, BLACK);
  cv.line(left - 1, bottom, right, bottom, BLACK);
  cv.line(right, top, right, bottom, GRID);
  cv.line(left - 1, top - 1, right, top - 1, GRID);
  // Series, clipped to the plot area.
  const clip = (c: Rgb) => (x: number, y: number) => {
    if (x >= left && x < right && y >= top && y < bottom) cv.set(x, y, c);
  };
  o.series.forEach((se, k) => {
    const c = se.color ?? CHART_COLORS[k % CHART_COLORS.length];
    const put = clip(c);
    const thick = s >= 2 ? 2 : 1;
    let prev: [number, number] | null = null;
    const n = se.points.length;
    for (const p of se.points) {
      if (!usable(o, p)) {
        prev = null;
        continue;
      }
      const q = L.toPixel(p[0], p[1]);
      if (se.markers ?? n === 1) {
        for (let dy = -2; dy <= 2; dy++) for (let dx = -2; dx <= 2; dx++) put(q[0] + dx, q[1] + dy);
      }
      if (prev) {
        const [ax, ay] = prev, [bx, by] = q;
        const steps = Math.max(1, Math.ceil(Math.max(Math.abs(bx - ax), Math.abs(by - ay))));
        const lo = -Math.floor((thick - 1) / 2);
        for (let i = 0; i <= steps; i++) {
          const x = Math.round(ax + ((bx - ax) * i) / steps);
          const y = Math.round(ay + ((by - ay) * i) / steps);
          for (let d = lo; d < lo + thick; d++) {
            for (let e = lo; e < lo + thick; e++) put(x + d, y + e);
          }
        }
      } else put(Math.round(q[0]), Math.round(q[1]));
      prev = q;
    }
  });
  // Title, axis labels.
  if (o.title) cv.text(o.title, (L.width - textWidth(o.title, s)) / 2, pad, BLACK, s);
  if (o.xLabel) {
    cv.text(o.xLabel, (left + right - textWidth(o.xLabel, s)) / 2, L.height - pad - ch, BLACK, s);
  }
  if (o.yLabel) {
    cv.textUp(o.yLabel, pad, (top + bottom - textWidth(o.yLabel, s)) / 2, BLACK, s);
  }
  // Legend: top right inside the plot, a swatch and the name per series.
  const named = o.series.filter((se) => se.name);
  if (named.length) {
    const rowH = ch + pad, sw = 6 * s;
    const wMax = Math.max(...named.map((se) => textWidth(se.name, s)));
    const bw = pad + sw + pad + wMax + pad, bh = pad + named.length * rowH;
    const bx = right - bw - pad, by = top + pad;
    cv.rect(bx, by, bx + bw, by + bh, [1, 1, 1]);
    cv.line(bx, by, bx + bw, by, GREY);
    cv.line(bx, by + bh, bx + bw, by + bh, GREY);
    cv.line(bx, by, bx, by + bh, GREY);
    cv.line(bx + bw, by, bx + bw, by + bh, GREY);
    o.series.forEach((se, k) => {
      const i = named.indexOf(se);
      if (i < 0) return;
      const c = se.color ?? CHART_COLORS[k % CHART_COLORS.length];
      const y = by + pad + i * rowH;
      cv.rect(bx + pad, y + ch / 2 - s, bx + pad + sw, y + ch / 2 + s, c);
      cv.text(se.name, bx + pad + sw + pad, y, BLACK, s);
    });
  }
  return cv.img;
}

/** A chart as PNG bytes. */
export async function chartPng(o: ChartOptions): Promise<Uint8Array> {
  return await encodePng(renderChart(o));
}
