import { assertClose, randint, randu } from "@lvm/util/testing";
import {
  crop,
  flipH,
  flipV,
  fromUint8,
  gridImage,
  hstack,
  invert,
  makeImage,
  type RgbImage,
  rotate90,
  toGray,
  toUint8,
} from "./image.ts";

function assertEq(got: unknown, want: unknown, label: string) {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g !== w) throw new Error(`${label}: got ${g}, want ${w}`);
}

function assertThrows(fn: () => unknown, cls: ErrorConstructor, needle: string, label: string) {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof cls)) throw new Error(`${label}: threw ${e}, want ${cls.name}`);
    if (!(e as Error).message.includes(needle)) {
      throw new Error(`${label}: message "${(e as Error).message}" lacks "${needle}"`);
    }
    return;
  }
  throw new Error(`${label}: did not throw`);
}

/** Image whose pixel (x, y) of channel c is a unique value, to follow pixels through ops. */
function tagged(w: number, h: number): RgbImage {
  const img = makeImage(w, h);
  for (let i = 0; i < img.data.length; i++) img.data[i] = i / img.data.length;
  return img;
}
const px = (img: RgbImage, x: number, y: number) =>
  [0, 1, 2].map((c) => img.data[c * img.width * img.height + y * img.width + x]);

Deno.test("makeImage()", async (t) => {
  await t.step("zeros of (3,H,W), given data used", () => {
    assertEq(makeImage(7, 1).data.length, 21, "size");
    const d = new Float32Array(3 * 2 * 5);
    if (makeImage(5, 2, d).data !== d) throw new Error("data not used");
  });
  await t.step("errors name the input", () => {
    assertThrows(() => makeImage(0, 3), RangeError, "width", "w=0");
    assertThrows(() => makeImage(3, 1.5), RangeError, "height", "h=1.5");
    assertThrows(() => makeImage(2, 2, new Float32Array(5)), RangeError, "found 5", "len");
  });
});

Deno.test("toUint8() / fromUint8()", async (t) => {
  await t.step("every byte survives bytes -> float -> bytes", () => {
    const all = new Uint8Array(256 * 3);
    for (let i = 0; i < all.length; i++) all[i] = (i * 7) % 256;
    const img = fromUint8(all, 16, 16);
    assertEq(Array.from(toUint8(img)), Array.from(all), "round trip");
    for (let b = 0; b < 256; b++) {
      const v = fromUint8(new Uint8Array([b, 0, 0]), 1, 1).data[0];
      if (v !== Math.fround(b / 255)) throw new Error(`byte ${b} -> ${v}`);
    }
  });
  await t.step("clamp, x255, truncate (the official save path), NaN -> 0", () => {
    const vals = [-300, -0.001, 0, 0.999, 0.5, 1, 1.0001, 300, NaN, 2 / 255 - 1e-6, 3 / 255];
    const img = makeImage(vals.length, 1);
    img.data.set(vals); // channel R only
    const want = [0, 0, 0, 254, 127, 255, 255, 255, 0, 1, 3];
    const got = Array.from(toUint8(img)).filter((_, i) => i % 3 === 0);
    assertEq(got, want, "R");
  });
  await t.step("HWC layout; RGBA drops alpha", () => {
    const rgba = new Uint8Array([10, 20, 30, 0, 40, 50, 60, 255]); // 2x1
    const img = fromUint8(rgba, 2, 1, 4);
    assertEq(Array.from(toUint8(img)), [10, 20, 30, 40, 50, 60], "rgba");
    assertEq(px(img, 1, 0).map((v) => Math.round(v * 255)), [40, 50, 60], "planar");
  });
  await t.step("errors", () => {
    assertThrows(() => fromUint8(new Uint8Array(5), 2, 1), RangeError, "found 5", "len");
    assertThrows(() => fromUint8(new Uint8Array(2), 1, 1, 2 as 3), RangeError, "channels", "ch");
  });
});

Deno.test("toGray()", async (t) => {
  for (const [w, h] of [[1, 1], [7, 1], [45, 65]]) {
    await t.step(`${w}x${h}: 0.2989R+0.5870G+0.1140B on every channel`, () => {
      const img = makeImage(w, h, randu(3 * w * h, w * 31 + h, 0, 1));
      const g = toGray(img), P = w * h;
      const ref = new Float32Array(P);
      for (let i = 0; i < P; i++) {
        ref[i] = 0.2989 * img.data[i] + 0.587 * img.data[P + i] + 0.114 * img.data[2 * P + i];
      }
      for (let c = 0; c < 3; c++) {
        assertClose(g.data.subarray(c * P, (c + 1) * P), ref, { atol: 0, rtol: 0 }, `c${c}`);
      }
    });
  }
  await t.step("pure colours give the coefficients", () => {
    const img = makeImage(3, 1, new Float32Array([1, 0, 0, 0, 1, 0, 0, 0, 1]));
    assertClose(
      toGray(img).data.subarray(0, 3),
      [0.2989, 0.587, 0.114],
      { atol: 1e-7, rtol: 0 },
      "coef",
    );
  });
});

Deno.test("hstack() / gridImage()", async (t) => {
  const solid = (w: number, h: number, v: number) => {
    const im = makeImage(w, h);
    im.data.fill(v);
    return im;
  };
  const a = solid(3, 2, 0.125), b = solid(4, 5, 0.25), c = solid(1, 1, 0.375);
  await t.step("strip: widths add up, tallest height, gaps and padding filled", () => {
    const s = hstack([a, b, c], 2, 1);
    assertEq([s.width, s.height], [3 + 2 + 4 + 2 + 1, 5], "size");
    const at = (x: number, y: number) => px(s, x, y)[0];
    assertClose(
      [at(0, 0), at(2, 1), at(0, 2)],
      [0.125, 0.125, 1],
      { atol: 0, rtol: 0 },
      "a + pad below",
    );
    assertClose([at(3, 0), at(4, 4)], [1, 1], { atol: 0, rtol: 0 }, "gap");
    assertClose([at(5, 0), at(8, 4), at(11, 0), at(11, 1)], [0.25, 0.25, 0.375, 1], {
      atol: 0,
      rtol: 0,
    }, "b,c");
    assertEq(hstack([a, b]).width, 7, "no gap");
  });
  await t.step("grid: row-major cells of the largest size, empty cells filled", () => {
    const g = gridImage([a, b, c, a, b], 2, 1, 0.5);
    assertEq([g.width, g.height], [2 * 4 + 1, 3 * 5 + 2], "size");
    const at = (x: number, y: number) => px(g, x, y)[0];
    // cell (col, row) origin = (col*5, row*6)
    assertClose(
      [at(0, 0), at(5, 0), at(0, 6), at(5, 6), at(0, 12), at(5, 12), at(3, 0), at(4, 0)],
      [0.125, 0.25, 0.375, 0.125, 0.25, 0.5, 0.5, 0.5],
      { atol: 0, rtol: 0 },
      "cells",
    );
    const t3 = tagged(4, 3);
    assertClose(gridImage([t3], 3).data, t3.data, { atol: 0, rtol: 0 }, "single image is itself");
  });
  await t.step("errors", () => {
    assertThrows(() => gridImage([], 2), RangeError, "at least one", "empty");
    assertThrows(() => gridImage([a], 0), RangeError, "cols", "cols");
    assertThrows(() => hstack([a], -1), RangeError, "gap", "gap");
  });
});

Deno.test("crop() / flipH() / flipV() / rotate90() / invert()", async (t) => {
  for (const [w, h] of [[1, 1], [7, 1], [1, 7], [45, 65]]) {
    const img = tagged(w, h);
    await t.step(`${w}x${h}`, () => {
      const rng = randint(6, 1 << 20, 1000 + w);
      const x = rng[0] % w, y = rng[1] % h;
      const cw = 1 + (rng[2] % (w - x)), chh = 1 + (rng[3] % (h - y));
      const cr = crop(img, x, y, cw, chh);
      assertEq([cr.width, cr.height], [cw, chh], "crop size");
      assertEq(px(cr, cw - 1, chh - 1), px(img, x + cw - 1, y + chh - 1), "crop corner");
      assertEq(px(flipH(img), 0, y), px(img, w - 1, y), "flipH");
      assertEq(px(flipV(img), x, 0), px(img, x, h - 1), "flipV");
      const r1 = rotate90(img, 1);
      assertEq([r1.width, r1.height], [h, w], "rot size");
      // np.rot90 (counter-clockwise): the top-right corner goes to the top-left.
      assertEq(px(r1, 0, 0), px(img, w - 1, 0), "rot90 corner");
      assertEq(px(r1, y, w - 1 - x), px(img, x, y), "rot90 map");
      assertEq(Array.from(rotate90(img, -1).data), Array.from(rotate90(img, 3).data), "-1 == 3");
      assertEq(Array.from(rotate90(r1, 3).data), Array.from(img.data), "1 then 3 = identity");
      assertEq(Array.from(rotate90(img, 2).data), Array.from(flipH(flipV(img)).data), "2 = flips");
      assertEq(Array.from(rotate90(img, 4).data), Array.from(img.data), "4 = identity");
      const inv = invert(img);
      assertClose(inv.data, img.data.map((v) => 1 - v), { atol: 0, rtol: 0 }, "invert");
    });
  }
  await t.step("crop errors name the region", () => {
    const img = tagged(5, 4);
    assertThrows(() => crop(img, 3, 0, 3, 1), RangeError, "exceeds the 5x4 image", "wide");
    assertThrows(() => crop(img, -1, 0, 1, 1), RangeError, "non-negative", "neg");
    assertThrows(() => crop(img, 0, 0, 0, 1), RangeError, "width", "w=0");
  });
});
