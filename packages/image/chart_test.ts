/**
 * The line chart: pixels of a known series land where the layout maps its points, ticks are nice
 * numbers, log-y places decades evenly, text uses the built-in font, and the PNG decodes back.
 */
import { assert, assertEquals, assertStrictEquals, assertThrows } from "@lvm/util/testing";
import {
  CHART_COLORS,
  chartLayout,
  chartPng,
  formatTick,
  linearTicks,
  logTicks,
  renderChart,
  textWidth,
} from "./chart.ts";
import { saveChart } from "./fs.ts";
import { decodeImageBytes, loadImage } from "./fs.ts";
import type { RgbImage } from "./image.ts";

function px(img: RgbImage, x: number, y: number): [number, number, number] {
  const p = img.width * img.height, i = Math.round(y) * img.width + Math.round(x);
  return [img.data[i], img.data[p + i], img.data[2 * p + i]];
}
const near = (a: readonly number[], b: readonly number[]) =>
  a.every((v, i) => Math.abs(v - b[i]) < 1e-6);
/** Colour `c` at (x, y) or one of its 8 neighbours (lines are drawn on whole pixels). */
function hit(img: RgbImage, x: number, y: number, c: readonly number[]): boolean {
  for (let dy = -1; dy <= 1; dy++) {
    for (let dx = -1; dx <= 1; dx++) if (near(px(img, x + dx, y + dy), c)) return true;
  }
  return false;
}

Deno.test("linearTicks(), logTicks(), formatTick()", () => {
  assertEquals(linearTicks(0, 100), [0, 20, 40, 60, 80, 100]);
  assertEquals(linearTicks(0.13, 0.71), [0.2, 0.3, 0.4, 0.5, 0.6, 0.7]);
  assertEquals(logTicks(0.5, 30), [0.5, 1, 2, 5, 10, 20]);
  assertEquals(logTicks(1e-3, 1e3), [1e-3, 1e-2, 0.1, 1, 10, 100, 1000]);
  assertEquals([0, 1.5, 2000, 1e6, 1.5e-4].map(formatTick), [
    "0",
    "1.5",
    "2000",
    "1e6",
    "1.5e-4",
  ]);
  assertStrictEquals(textWidth("abc", 2), (3 * 6 - 1) * 2);
});

Deno.test("renderChart()", async (t) => {
  const series = [
    { name: "train", points: [[0, 4], [50, 2], [100, 1]] as [number, number][] },
    { name: "val", points: [[0, 3.5], [100, 1.5]] as [number, number][] },
  ];
  const opts = { series, title: "loss", xLabel: "step", yLabel: "loss", width: 320, height: 200 };

  await t.step("the points of a known series land where the layout maps them", () => {
    const img = renderChart(opts);
    const L = chartLayout(opts);
    assertStrictEquals([img.width, img.height].join(), "320,200");
    assertEquals(L.xTicks, [0, 20, 40, 60, 80, 100]);
    assertEquals(L.x, [0, 100]);
    // Every point of "train" lies in the plot area and is drawn in the first series colour; the
    // midpoint of a segment too (a line, not just markers).
    for (const [x, y] of [[0, 4], [50, 2], [100, 1], [10, 3.6], [75, 1.5]]) {
      const [cx, cy] = L.toPixel(x, y);
      assert(cx >= L.plot.left && cx < L.plot.right && cy >= L.plot.top && cy < L.plot.bottom);
      assert(hit(img, cx, cy, CHART_COLORS[0]), `(${x}, ${y}) at (${cx}, ${cy})`);
    }
    // x maps linearly: 50 is halfway between 0 and 100.
    const [a] = L.toPixel(0, 1), [b] = L.toPixel(50, 1), [c] = L.toPixel(100, 1);
    assert(Math.abs(b - (a + c) / 2) < 1e-9);
    // Higher values are higher up.
    assert(L.toPixel(0, 4)[1] < L.toPixel(0, 1)[1]);
    // The "val" series uses the second colour; far from every line the plot is white or grid.
    const [vx, vy] = L.toPixel(50, 2.5);
    assert(hit(img, vx, vy, CHART_COLORS[1]), "val midpoint");
    const [ex, ey] = L.toPixel(10, 1.15);
    assert(px(img, ex, ey).every((v) => v > 0.85), "empty area");
    // Text (title) is drawn: some black pixels in the title band, none outside the image.
    let dark = 0;
    for (let y = 0; y < L.plot.top - 2; y++) {
      for (let x = 0; x < img.width; x++) if (px(img, x, y)[0] === 0) dark++;
    }
    assert(dark > 10, `${dark} title pixels`);
  });

  await t.step("log y: decades are evenly spaced; non-positive and NaN points skipped", () => {
    const o = {
      series: [{
        name: "s",
        points: [[1, 0.01], [2, 0.1], [3, 1], [4, 0], [5, NaN], [6, 10]] as [
          number,
          number,
        ][],
      }],
      logY: true,
      width: 300,
      height: 200,
    };
    const L = chartLayout(o);
    const ys = [0.01, 0.1, 1, 10].map((v) => L.toPixel(1, v)[1]);
    assert(Math.abs((ys[0] - ys[1]) - (ys[1] - ys[2])) < 1e-9 && ys[2] - ys[3] > 0);
    assert(L.yTicks.includes(0.01) && L.yTicks.includes(10), String(L.yTicks));
    const img = renderChart(o);
    assert(hit(img, ...L.toPixel(2, 0.1), CHART_COLORS[0]));
  });

  await t.step("errors: too small, log axis over non-positive values", () => {
    assertThrows(() => renderChart({ series: [], width: 10, height: 10 }), Error, /at least|>= 64/);
    assertThrows(() => renderChart({ series: [], logY: true, yRange: [0, 1] }), Error, /positive/);
    // Empty series still draw axes.
    assertStrictEquals(renderChart({ series: [] }).width, 640);
  });

  await t.step("the PNG decodes back to the same pixels; saveChart writes it", async () => {
    const img = renderChart(opts);
    const [back] = await decodeImageBytes(await chartPng(opts));
    assertStrictEquals(back.width, 320);
    const same = img.data.every((v, i) => Math.abs(v - back.data[i]) <= 1 / 255 + 1e-6);
    assert(same, "decoded pixels");
    const dir = await Deno.makeTempDir();
    await saveChart(`${dir}/c.png`, opts);
    assertStrictEquals((await loadImage(`${dir}/c.png`)).height, 200);
    await Deno.remove(dir, { recursive: true });
  });
});
