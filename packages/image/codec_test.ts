import { assertClose, randint } from "@lvm/util/testing";
import { join } from "node:path";
import { crc32 } from "@lvm/util";
import { decodeImageBytes, listImages, loadFrames, loadImage, savePng } from "./fs.ts";
import {
  DEFAULT_MAX_IMAGE_PIXELS,
  encodePng,
  ImageTooLargeError,
  MAX_IMAGE_PIXELS_ENV,
  maxImagePixels,
  naturalCompare,
  readImageHeader,
} from "./codec.ts";
import { fromUint8, makeImage, toUint8 } from "./image.ts";
import { exact, expectImageError, fix } from "./testing.ts";

Deno.test("encodePng() / savePng() / loadImage(): PNG round trip is exact", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvm_image_" });
  try {
    for (const [w, h] of [[1, 1], [7, 1], [1, 7], [45, 65], [256, 3]]) {
      await t.step(`${w}x${h}`, async () => {
        const bytes = new Uint8Array(randint(w * h * 3, 256, w * 1000 + h));
        bytes[0] = 0;
        bytes[bytes.length - 1] = 255;
        const img = fromUint8(bytes, w, h);
        const png = await encodePng(img);
        const [back] = await decodeImageBytes(png, "mem.png");
        if (back.width !== w || back.height !== h) throw new Error("size");
        assertClose(toUint8(back), bytes, exact, "encodePng -> decode");
        assertClose(back.data, img.data, exact, "floats");
        const path = join(dir, `img_${w}x${h}.png`);
        await savePng(path, img);
        assertClose(toUint8(await loadImage(path)), bytes, exact, "savePng -> loadImage");
        const again = await encodePng(img);
        assertClose(again, png, exact, "deterministic bytes");
      });
    }
    await t.step("values are clamped and truncated on save; no temp files left", async () => {
      const img = makeImage(4, 1, new Float32Array([-5, 0.999, 2, 0.5, 0, 0, 0, 0, 1, 1, 1, 1]));
      const path = join(dir, "clamp.png");
      await savePng(path, img);
      assertClose(toUint8(await loadImage(path)), toUint8(img), exact, "clamp");
      assertClose(
        toUint8(img).subarray(0, 12),
        [0, 0, 255, 254, 0, 255, 255, 0, 255, 127, 0, 255],
        exact,
        "v",
      );
      const left = [];
      for await (const e of Deno.readDir(dir)) if (e.name.endsWith(".tmp")) left.push(e.name);
      if (left.length) throw new Error(`temp files left: ${left}`);
    });
    await t.step("savePng into a missing folder is an ImageError naming the file", async () => {
      const path = join(dir, "no_such_dir", "x.png");
      await expectImageError(() => savePng(path, makeImage(1, 1)), [path, "cannot write"], "w");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadImage() of PIL-written files matches PIL's convert('RGB')", async (t) => {
  for (const name of ["rgba_5x4", "gray_6x5", "pal_6x5"]) {
    await t.step(`${name}.png (alpha dropped, gray/palette expanded): exact`, async () => {
      const want = await Deno.readFile(fix(`${name}.rgb`));
      assertClose(toUint8(await loadImage(fix(`${name}.png`))), want, exact, name);
    });
  }
  await t.step("JPEG (imagescript vs libjpeg decoders: within 2 uint8 levels)", async () => {
    const img = await loadImage(fix("tiny_20x12.jpg"));
    if (img.width !== 20 || img.height !== 12) throw new Error(`size ${img.width}x${img.height}`);
    const want = await Deno.readFile(fix("tiny_20x12_jpg.rgb"));
    assertClose(toUint8(img), want, { atol: 2, rtol: 0 }, "jpeg");
  });
});

Deno.test("loadFrames(): every GIF frame matches PIL", async (t) => {
  const frames = await loadFrames(fix("anim_3f.gif"));
  await t.step("3 frames of 9x7", () => {
    if (frames.length !== 3) throw new Error(`${frames.length} frames`);
    for (const f of frames) if (f.width !== 9 || f.height !== 7) throw new Error("size");
  });
  for (let i = 0; i < 3; i++) {
    await t.step(`frame ${i}`, async () => {
      const want = await Deno.readFile(fix(`anim_3f_f${i}.rgb`));
      assertClose(toUint8(frames[i]), want, exact, `frame ${i}`);
    });
  }
  await t.step("loadImage gives the first frame; other formats give one frame", async () => {
    assertClose((await loadImage(fix("anim_3f.gif"))).data, frames[0].data, exact, "first");
    const png = await loadFrames(fix("src_37x23.png"));
    if (png.length !== 1 || png[0].width !== 37) throw new Error("png frames");
  });
});

Deno.test("decode errors name the file and say what was wrong", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvm_image_" });
  const good = await Deno.readFile(fix("src_37x23.png"));
  const jpg = await Deno.readFile(fix("tiny_20x12.jpg"));
  const gif = await Deno.readFile(fix("anim_3f.gif"));
  const garble = (b: Uint8Array) => b.map((v, i) => (i >= 40 && i % 7 === 0 ? v ^ 0x5a : v));
  const cases: [string, Uint8Array, string][] = [
    ["random.png", new Uint8Array(randint(64, 256, 9)), "not a recognised image"],
    ["empty.png", new Uint8Array(0), "empty file"],
    ["truncated.png", good.slice(0, 40), "corrupt or unreadable PNG"],
    ["garbled.png", garble(good), "corrupt or unreadable PNG"],
    ["garbled.jpg", garble(jpg), "corrupt or unreadable JPEG"],
    ["truncated.gif", gif.slice(0, 30), "corrupt or unreadable GIF"],
    ["pic.bmp", new Uint8Array([0x42, 0x4d, 1, 2, 3, 4, 5, 6]), "unsupported image format BMP"],
  ];
  try {
    for (const [name, bytes, needle] of cases) {
      await t.step(name, async () => {
        const path = join(dir, name);
        await Deno.writeFile(path, bytes);
        await expectImageError(() => loadImage(path), [path, needle], name);
        await expectImageError(() => decodeImageBytes(bytes, name), [name, needle], "bytes");
      });
    }
    await t.step("the decoder still works after a failed decode", async () => {
      const want = await Deno.readFile(fix("tiny_20x12_jpg.rgb"));
      assertClose(toUint8((await decodeImageBytes(jpg))[0]), want, { atol: 2, rtol: 0 }, "jpg");
    });
    await t.step("missing file / folder", async () => {
      const path = join(dir, "missing.png");
      await expectImageError(() => loadImage(path), [path, "file not found"], "missing");
      await expectImageError(() => loadFrames(path), [path, "file not found"], "frames");
      await expectImageError(() => loadImage(dir), [dir, "is a directory"], "dir");
      await expectImageError(() => listImages(path), [path, "folder not found"], "list");
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("listImages() / naturalCompare()", async (t) => {
  await t.step("natural order", () => {
    const names = [
      "frame10.png",
      "frame2.png",
      "frame1.png",
      "a.png",
      "frame02.png",
      "b1c10",
      "b1c9",
    ];
    const want = [
      "a.png",
      "b1c9",
      "b1c10",
      "frame1.png",
      "frame02.png",
      "frame2.png",
      "frame10.png",
    ];
    const got = [...names].sort(naturalCompare);
    if (got.join() !== want.join()) throw new Error(got.join());
  });
  await t.step(
    "image files only, not recursive, sorted naturally, joined to the folder",
    async () => {
      const dir = await Deno.makeTempDir({ prefix: "lvm_image_" });
      try {
        for (
          const n of [
            "frame10.png",
            "frame2.JPG",
            "frame1.gif",
            "notes.txt",
            "frame3.jpeg",
            "x.tif",
          ]
        ) {
          await Deno.writeFile(join(dir, n), new Uint8Array(1));
        }
        await Deno.mkdir(join(dir, "frame0.png")); // a folder named like an image is skipped
        const got = await listImages(dir);
        const want = ["frame1.gif", "frame2.JPG", "frame3.jpeg", "frame10.png", "x.tif"];
        if (got.join() !== want.map((n) => join(dir, n)).join()) throw new Error(got.join());
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  );
});

/** A GIF of `frames` empty frames of w x h (no colour table, no pixel data: only headers). */
function gifOf(w: number, h: number, frames: number, fw = w, fh = h): Uint8Array {
  const out = [..."GIF89a"].map((c) => c.charCodeAt(0));
  out.push(w & 255, w >> 8, h & 255, h >> 8, 0, 0, 0);
  for (let i = 0; i < frames; i++) {
    out.push(0x2c, 0, 0, 0, 0, fw & 255, fw >> 8, fh & 255, fh >> 8, 0, 2, 0);
  }
  out.push(0x3b);
  return new Uint8Array(out);
}

Deno.test("image bombs: a huge declared size is 'too large', read before decoding", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvm_image_" });
  const big = 16000;
  // A valid small PNG whose IHDR says 16000x16000 (CRC fixed: the header itself is well formed).
  const png = await encodePng(makeImage(4, 3));
  const pv = new DataView(png.buffer);
  pv.setUint32(16, big);
  pv.setUint32(20, big);
  pv.setUint32(29, crc32(png.subarray(12, 29)));
  // The fixture JPEG with its SOF0 saying 16000x16000.
  const jpg = (await Deno.readFile(fix("tiny_20x12.jpg"))).slice();
  let sof = 2;
  while (!(jpg[sof] === 0xff && jpg[sof + 1] >= 0xc0 && jpg[sof + 1] <= 0xc2)) {
    sof += 2 + ((jpg[sof + 2] << 8) | jpg[sof + 3]);
  }
  new DataView(jpg.buffer).setUint16(sof + 5, big);
  new DataView(jpg.buffer).setUint16(sof + 7, big);
  // Little-endian TIFF whose first IFD says 16000x16000.
  const tif = new Uint8Array(8 + 2 + 24);
  const tv = new DataView(tif.buffer);
  tif.set([0x49, 0x49, 0x2a, 0]);
  tv.setUint32(4, 8, true);
  tv.setUint16(8, 2, true);
  for (const [k, tag] of [[0, 256], [1, 257]]) {
    tv.setUint16(10 + 12 * k, tag, true);
    tv.setUint16(12 + 12 * k, 4, true); // LONG
    tv.setUint32(14 + 12 * k, 1, true);
    tv.setUint32(18 + 12 * k, big, true);
  }
  const cases: [string, Uint8Array, string][] = [
    ["bomb.png", png, "16000x16000"],
    ["bomb.jpg", jpg, "16000x16000"],
    ["bomb.gif", gifOf(big, big, 1), "16000x16000"],
    ["bomb-frame.gif", gifOf(8, 8, 2, 12000, 12000), "12000x12000"],
    ["bomb.tif", tif, "16000x16000"],
  ];
  const limit = `${DEFAULT_MAX_IMAGE_PIXELS} pixels`;
  try {
    for (const [name, bytes, size] of cases) {
      await t.step(name, async () => {
        const path = join(dir, name);
        await Deno.writeFile(path, bytes);
        const needles = [path, "image too large", size, limit];
        for (const load of [loadImage, loadFrames]) {
          const t0 = performance.now();
          await expectImageError(() => load(path), needles, name);
          if (performance.now() - t0 > 5000) throw new Error(`${name}: took too long`);
        }
        await expectImageError(() => decodeImageBytes(bytes, name), [name, "too large"], "bytes");
        try {
          await loadImage(path);
        } catch (e) {
          if (!(e instanceof ImageTooLargeError) || e.limit !== DEFAULT_MAX_IMAGE_PIXELS) throw e;
          if (/corrupt/.test(e.message)) throw new Error(`says corrupt: ${e.message}`);
        }
      });
    }
    await t.step("readImageHeader reads the fixtures' sizes and GIF frames", async () => {
      const h = (f: string) => Deno.readFile(fix(f)).then(readImageHeader);
      const p = await h("src_37x23.png"), j = await h("tiny_20x12.jpg"), g = await h("anim_3f.gif");
      if (p?.width !== 37 || p.height !== 23) throw new Error(`png ${JSON.stringify(p)}`);
      if (j?.width !== 20 || j.height !== 12) throw new Error(`jpg ${JSON.stringify(j)}`);
      if (g?.format !== "gif" || g.frames !== 3) throw new Error(`gif ${JSON.stringify(g)}`);
      if (readImageHeader(new Uint8Array(3)) !== null) throw new Error("garbage");
    });
    await t.step("the option and LVM_MAX_IMAGE_PIXELS set the limit", async () => {
      const src = fix("src_37x23.png"); // 851 pixels
      await expectImageError(() => loadImage(src, { maxPixels: 850 }), [src, "37x23", "850"], "o");
      if ((await loadImage(src, { maxPixels: 851 })).width !== 37) throw new Error("at limit");
      Deno.env.set(MAX_IMAGE_PIXELS_ENV, "800");
      try {
        await expectImageError(() => loadImage(src), [src, "too large", "800 pixels"], "env");
        if ((await loadImage(src, { maxPixels: 10_000 })).width !== 37) throw new Error("opt");
        Deno.env.set(MAX_IMAGE_PIXELS_ENV, "lots");
        let msg = "";
        try {
          maxImagePixels();
        } catch (e) {
          msg = (e as Error).message;
        }
        if (!msg.includes(MAX_IMAGE_PIXELS_ENV)) throw new Error(`bad env value: ${msg}`);
      } finally {
        Deno.env.delete(MAX_IMAGE_PIXELS_ENV);
      }
    });
    await t.step("an animation's frames together may hold 4x the limit", async () => {
      const gif = gifOf(10, 10, 5); // 500 pixels over 5 frames
      await expectImageError(
        () => decodeImageBytes(gif, "anim.gif", { maxPixels: 100 }),
        ["anim.gif", "too large", "5 frames of 10x10"],
        "frames",
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
