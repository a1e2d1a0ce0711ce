import { assertClose, randint } from "../kernels/testing.ts";
import { join } from "node:path";
import {
  decodeImageBytes,
  encodePng,
  listImages,
  loadFrames,
  loadImage,
  naturalCompare,
  savePng,
} from "./codec.ts";
import { fromUint8, ImageError, makeImage, toUint8 } from "./image.ts";

const FIX = new URL("../../tests/fixtures/image/", import.meta.url);
const fix = (name: string) => new URL(name, FIX).pathname;
const exact = { atol: 0, rtol: 0 };

/** Runs `fn`, expects an ImageError whose message contains every needle. */
async function expectImageError(fn: () => Promise<unknown>, needles: string[], label: string) {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof ImageError)) throw new Error(`${label}: threw ${e}, want ImageError`);
    for (const n of needles) {
      if (!e.message.includes(n)) throw new Error(`${label}: "${e.message}" lacks "${n}"`);
    }
    return;
  }
  throw new Error(`${label}: did not throw`);
}

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
