/**
 * End-to-end tests of `deno task infer encode` / `decode` on the PyTorch tokenizer fixture
 * (tests/fixtures/tokenizer, written by tools/ref_vqgan.py).
 */
import { floatToByte } from "@lvm/image";
import { loadImage } from "@lvm/image/fs";
import { SafetensorsFile } from "@lvm/weights/fs";
import { assertClose, assertEquals, assertMatch, assertStrictEquals } from "@lvm/util/testing";
import { runApp } from "@lvm/cli/testing";

const ROOT = new URL("../../", import.meta.url).pathname;
const FIX = `${ROOT}tests/fixtures/tokenizer`;

const cli = (...args: string[]) => runApp("infer", ...args);

const ref = await SafetensorsFile.open(`${FIX}/reference.safetensors`);
const ids = Array.from(new Int32Array((await ref.readRaw("ids")).slice().buffer)); // (2, 64)
const decoded = await ref.readF32("decoded"); // (2,3,16,16)
ref.close();

Deno.test("infer encode", async (t) => {
  await t.step("--json gives PyTorch's ids of the fixed image (from the .bin)", async () => {
    const r = await cli(
      "encode",
      "--tokenizer",
      `${FIX}/bin`,
      "--json",
      `${FIX}/image.png`,
      `${FIX}/image.png`,
    );
    assertStrictEquals(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assertEquals(Object.keys(out), ["tokens"]);
    assertEquals(out.tokens, [ids.slice(0, 64), ids.slice(0, 64)]);
  });
  await t.step("errors: no images, a missing image", async () => {
    const a = await cli("encode", "--tokenizer", `${FIX}/bin`);
    assertStrictEquals(a.code, 2);
    assertMatch(a.stderr, /at least one IMAGE/);
    const b = await cli("encode", "--tokenizer", `${FIX}/bin`, `${FIX}/nope.png`);
    assertStrictEquals(b.code, 1);
    assertMatch(b.stderr, /nope\.png/);
  });
});

Deno.test("infer decode", async (t) => {
  const dir = await Deno.makeTempDir();
  await t.step("--tokens @FILE writes PyTorch's decoded pixels as PNG", async () => {
    await Deno.writeTextFile(`${dir}/ids.txt`, JSON.stringify(ids.slice(64)));
    const r = await cli(
      "decode",
      "--tokenizer",
      `${FIX}/diffusers`,
      "--resolution", // a diffusers config.json does not record it
      "16",
      "--tokens",
      `@${dir}/ids.txt`,
      "--out",
      `${dir}/a.png`,
    );
    assertStrictEquals(r.code, 0, r.stderr);
    assertMatch(r.stdout, /wrote .*a\.png \(16x16, 1 image\)/);
    const png = await loadImage(`${dir}/a.png`);
    const want = Array.from(decoded.slice(3 * 256), (v) => floatToByte(v) / 255);
    // A value within float rounding of a byte boundary may land one byte apart.
    assertClose(png.data, want, { atol: 1 / 255 + 1e-6, rtol: 0 }, "png");
  });
  await t.step("a wrong count names the grid; --many decodes several side by side", async () => {
    const r = await cli(
      "decode",
      "--tokenizer",
      `${FIX}/openmuse`,
      "--tokens",
      ids.slice(0, 63).join(","),
      "--out",
      `${dir}/b.png`,
    );
    assertStrictEquals(r.code, 1);
    assertMatch(r.stderr, /got 63 ids, expected 64 \(a 8x8 grid/);
    const m = await cli(
      "decode",
      "--tokenizer",
      `${FIX}/openmuse`,
      "--tokens",
      ids.join(" "),
      "--out",
      `${dir}/c.png`,
      "--many",
    );
    assertStrictEquals(m.code, 0, m.stderr);
    const png = await loadImage(`${dir}/c.png`);
    assertEquals([png.width, png.height], [34, 16]);
  });
  await Deno.remove(dir, { recursive: true });
});
