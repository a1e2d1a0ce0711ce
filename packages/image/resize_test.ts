import { assertClose, randint, randu } from "@lvm/util/testing";
import { loadImage } from "./fs.ts";
import { fromUint8, makeImage, toUint8 } from "./image.ts";
import { resize, resizeUint8 } from "./resize.ts";
import { fix } from "./testing.ts";

interface Manifest {
  pil_version: string;
  source: { file: string; width: number; height: number };
  resize: { width: number; height: number; file: string }[];
}

Deno.test("resize() matches PIL Image.resize(BICUBIC) bit-exactly (0 uint8 levels)", async (t) => {
  const m: Manifest = JSON.parse(await Deno.readTextFile(fix("manifest.json")));
  const src = await loadImage(fix(m.source.file)); // 37x23, from uint8
  for (const c of m.resize) {
    await t.step(`${m.source.width}x${m.source.height} -> ${c.width}x${c.height}`, async () => {
      const want = await Deno.readFile(fix(c.file)); // (H,W,3) from PIL ${m.pil_version}
      const got = resize(src, c.width, c.height);
      if (got.width !== c.width || got.height !== c.height) throw new Error("size");
      assertClose(toUint8(got), want, { atol: 0, rtol: 0 }, `PIL ${m.pil_version} ${c.file}`);
      // the byte path gives the same bytes
      const bytes = resizeUint8(toUint8(src), src.width, src.height, c.width, c.height);
      assertClose(bytes, want, { atol: 0, rtol: 0 }, "resizeUint8");
    });
  }
});

Deno.test("resizeUint8()", async (t) => {
  await t.step("channels are independent: 1-channel planes == 3-channel result", () => {
    const [w, h, ow, oh] = [45, 65, 17, 90];
    const rgb = new Uint8Array(randint(w * h * 3, 256, 7));
    const all = resizeUint8(rgb, w, h, ow, oh, 3);
    for (let c = 0; c < 3; c++) {
      const plane = rgb.filter((_, i) => i % 3 === c);
      const one = resizeUint8(plane, w, h, ow, oh, 1);
      assertClose(one, all.filter((_, i) => i % 3 === c), { atol: 0, rtol: 0 }, `c${c}`);
    }
  });
  await t.step("a constant image stays constant (coefficients sum to one), any size", () => {
    for (const v of [0, 1, 128, 254, 255]) {
      for (
        const [w, h, ow, oh] of [[1, 1, 7, 3], [7, 1, 1, 1], [45, 65, 256, 256], [300, 2, 3, 9]]
      ) {
        const got = resizeUint8(new Uint8Array(w * h * 3).fill(v), w, h, ow, oh);
        if (got.some((x) => x !== v)) throw new Error(`${v} ${w}x${h}->${ow}x${oh}: ${got[0]}`);
      }
    }
  });
  await t.step("a 0/255 checker is clipped, not wrapped (overshoot goes through clip8)", () => {
    const w = 9, h = 9, img = new Uint8Array(w * h);
    for (let i = 0; i < w * h; i++) img[i] = (i % 2) * 255;
    const up = resizeUint8(img, w, h, 31, 29, 1);
    // bicubic overshoots on hard edges; the result must stay a valid clipped byte image that
    // still contains both extremes.
    if (!up.includes(0) || !up.includes(255)) throw new Error("extremes lost");
  });
  await t.step("errors name the input", () => {
    const cases: [() => unknown, string][] = [
      [() => resizeUint8(new Uint8Array(5), 2, 1, 1, 1), "found 5"],
      [() => resizeUint8(new Uint8Array(6), 2, 1, 0, 1), "width"],
      [() => resize(makeImage(2, 2), 3, -1), "height"],
    ];
    for (const [fn, needle] of cases) {
      let msg = "";
      try {
        fn();
      } catch (e) {
        msg = (e as Error).message;
      }
      if (!msg.includes(needle)) {
        throw new Error(`expected an error with "${needle}", got "${msg}"`);
      }
    }
  });
});

Deno.test("resize() on float images", async (t) => {
  await t.step("same size returns an unquantised copy", () => {
    const img = makeImage(7, 3, randu(63, 3, -0.2, 1.2));
    const same = resize(img, 7, 3);
    if (same.data === img.data) throw new Error("not a copy");
    assertClose(same.data, img.data, { atol: 0, rtol: 0 }, "copy");
  });
  await t.step("other sizes: values on the 1/255 grid, equal to the byte path", () => {
    const img = makeImage(45, 65, randu(3 * 45 * 65, 4, -0.3, 1.3));
    const out = resize(img, 16, 70);
    for (const v of out.data) {
      if (Math.fround(Math.round(v * 255) / 255) !== v) throw new Error(`${v} off the grid`);
    }
    const rgb = new Uint8Array(3 * 45 * 65);
    const P = 45 * 65;
    for (let c = 0; c < 3; c++) {
      for (let i = 0; i < P; i++) {
        rgb[i * 3 + c] = Math.round(Math.min(1, Math.max(0, img.data[c * P + i])) * 255);
      }
    }
    const want = fromUint8(resizeUint8(rgb, 45, 65, 16, 70), 16, 70);
    assertClose(out.data, want.data, { atol: 0, rtol: 0 }, "float path");
  });
});
