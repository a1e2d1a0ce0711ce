/**
 * End-to-end test of `deno task infer complete` on the PyTorch tokenizer fixture (16x16 images,
 * 8x8 = 64 codes of a 64-code codebook) and a random LLaMA saved here whose image codes (96) are
 * more than the tokenizer has: the generated codes must still be ones the tokenizer can decode.
 */
import { assert, assertEquals, assertStrictEquals } from "@lvm/util/testing";
import { join } from "node:path";
import { loadImage } from "@lvm/image/fs";
import { getGpu } from "@lvm/gpu";
import { Llama, makeConfig } from "@lvm/transformer";
import { saveLlama } from "@lvm/transformer/fs";
import { runApp } from "@lvm/cli/testing";

const ROOT = new URL("../../", import.meta.url).pathname;
const TOK = `${ROOT}tests/fixtures/tokenizer/openmuse`;
const IMAGE = `${ROOT}tests/fixtures/tokenizer/image.png`;

const cli = (...args: string[]) => runApp("infer", ...args);

Deno.test("infer complete", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvm-complete-" });
  const model = join(dir, "model");
  const gpu = await getGpu();
  const config = makeConfig({
    hidden: 32,
    layers: 2,
    heads: 2,
    ffn: 64,
    vocab: 100,
    imageCodes: 96,
    maxPositions: 256,
  });
  const llama = Llama.init(gpu, config, { seed: 3 });
  await saveLlama(llama, model);
  llama.release();
  const args = ["--model", model, "--tokenizer", TOK, "--count", "2", IMAGE, IMAGE];

  await t.step(
    "--json: 2 images of 64 codes below the tokenizer's 64, PNGs, codes.json",
    async () => {
      // Temperature 3 over every code: a model with 96 image codes would pick ids 64..95 often.
      const out = join(dir, "sampled");
      const r = await cli(
        "complete",
        ...args,
        "--out",
        out,
        "--top-k",
        "0",
        "--temperature",
        "3",
        "--json",
      );
      assertStrictEquals(r.code, 0, r.stderr);
      const j = JSON.parse(r.stdout);
      assertEquals(j.images, [join(out, "next-1.png"), join(out, "next-2.png")]);
      assertStrictEquals(j.tokens.length, 2);
      for (const t of j.tokens as number[][]) {
        assertStrictEquals(t.length, 64);
        assert(t.every((id) => Number.isInteger(id) && id >= 0 && id < 64), `${t}`);
      }
      assert(new Set(j.tokens.flat()).size > 10, "temperature 3 should vary the codes");
      assertEquals(JSON.parse(await Deno.readTextFile(j.codes)).tokens, j.tokens);
      const next = await loadImage(j.images[0]);
      assertEquals([next.width, next.height], [16, 16]);
      const strip = await loadImage(j.strip);
      assertEquals([strip.width, strip.height], [4 * 16 + 3 * 2, 16]); // 2 prompt + 2 new, 2 px gaps
    },
  );

  await t.step("greedy: the GPU-sampled and --cpu-sampling paths give the same codes", async () => {
    const a = await cli("complete", ...args, "--out", join(dir, "a"), "--greedy", "--json");
    const b = await cli(
      "complete",
      ...args,
      "--out",
      join(dir, "b"),
      "--greedy",
      "--cpu-sampling",
      "--json",
    );
    assertStrictEquals(a.code, 0, a.stderr);
    assertStrictEquals(b.code, 0, b.stderr);
    assertEquals(JSON.parse(a.stdout).tokens, JSON.parse(b.stdout).tokens);
  });

  await t.step("errors: no prompt images, a missing image, a negative --count", async () => {
    const a = await cli("complete", "--model", model, "--tokenizer", TOK, "--out", dir);
    assertStrictEquals(a.code, 2, a.stderr);
    const b = await cli("complete", ...args.slice(0, 4), "--out", dir, join(dir, "nope.png"));
    assertStrictEquals(b.code, 1, b.stderr);
    assert(b.stderr.includes("nope.png"), b.stderr);
    // A negative count is read as the flag's value and refused by its range (not "ambiguous").
    const c = await cli("complete", ...args, "--out", dir, "--count", "-5");
    assertStrictEquals(c.code, 2, c.stderr);
    assert(c.stderr.includes("--count -5: expected >= 1") && c.stderr.includes("usage:"), c.stderr);
  });
  await Deno.remove(dir, { recursive: true });
});
