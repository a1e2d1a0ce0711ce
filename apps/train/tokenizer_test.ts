/**
 * End-to-end tests of `deno task train tokenizer`: a short run writes a tokenizer that
 * `deno task infer encode` loads, reports held-out PSNR, leaves the shared trainer's checkpoints
 * and loss chart, and a run resumed from its checkpoint ends
 * with exactly the weights of an uninterrupted run; --init takes the init tokenizer's config and
 * weights; --max-frames caps GIFs; --holdout 1 and a batch that cannot fit are usage errors.
 */
import { assert, assertEquals, assertMatch, assertStrictEquals } from "@lvm/util/testing";
import { makeImage } from "@lvm/image";
import { savePng } from "@lvm/image/fs";
import { SafetensorsFile } from "@lvm/weights/fs";
import { TINY_CONFIG_JSON } from "@lvm/tokenizer/testing";
import { runApp as cli } from "@lvm/cli/testing";

const ROOT = new URL("../../", import.meta.url).pathname;
const FIX = `${ROOT}tests/fixtures/tokenizer`;

Deno.test("train tokenizer", async (t) => {
  const dir = await Deno.makeTempDir();
  await Deno.mkdir(`${dir}/images/frames`, { recursive: true });
  for (let k = 0; k < 6; k++) {
    const img = makeImage(20, 18);
    img.data.forEach((_, i) => (img.data[i] = 0.5 + 0.45 * Math.sin(i / (3 + k))));
    await savePng(k < 4 ? `${dir}/images/img${k}.png` : `${dir}/images/frames/f${k}.png`, img);
  }
  await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(TINY_CONFIG_JSON));
  const common = ["--images", `${dir}/images`, "--config", `${dir}/config.json`, "--batch", "2"];
  const read = (p: string) => Deno.readFile(p);

  await t.step("a short run writes a loadable tokenizer and reports held-out PSNR", async () => {
    const r = await cli(
      "train",
      "tokenizer",
      ...common,
      "--steps",
      "4",
      "--out",
      `${dir}/a`,
      "--holdout",
      "2",
      "--json",
      "--log-every",
      "1",
    );
    assertStrictEquals(r.code, 0, r.stderr);
    // 5 sources: img0-3 and the frames/ folder (2 frames, one source); every 2nd held out.
    assertMatch(r.stderr, /data: 3 training sources \(4 images\), 2 held out \(2 images\)/);
    assertMatch(r.stderr, /step 4\/4 .* psnr [\d.]+ dB {2}codes \d+\/32 .* steps\/s {2}eta/);
    assertMatch(r.stderr, /held-out PSNR [\d.]+ dB/);
    const s = JSON.parse(r.stdout);
    assertStrictEquals(s.steps, 4);
    // The shared trainer's files: checkpoints/checkpoint-4 (a loadable tokenizer) named by
    // checkpoints/latest, the loss chart; the run folder's lock is gone.
    assertStrictEquals(
      (await Deno.readTextFile(`${dir}/a/checkpoints/latest`)).trim(),
      "checkpoint-4",
    );
    assert((await Deno.stat(`${dir}/a/checkpoints/checkpoint-4/config.json`)).isFile);
    assertEquals(Array.from((await read(`${dir}/a/loss.png`)).subarray(1, 4)), [80, 78, 71]);
    await Deno.stat(`${dir}/a/train.lock`).then(() => assert(false, "lock left"), () => {});
    assert(s.eval_psnr > 0 && s.eval_images === 2, JSON.stringify(s));
    const e = await cli(
      "infer",
      "encode",
      "--tokenizer",
      `${dir}/a`,
      "--json",
      `${dir}/images/img0.png`,
    );
    assertStrictEquals(e.code, 0, e.stderr);
    assertStrictEquals(JSON.parse(e.stdout).tokens[0].length, 64);
  });
  await t.step(
    "--resume continues exactly: same final weights as an uninterrupted run",
    async () => {
      // The uninterrupted run is the previous step's (4 steps into a/).
      const runC = (steps: number, ...extra: string[]) =>
        cli("train", "tokenizer", ...common, "--steps", `${steps}`, "--out", `${dir}/c`, ...extra);
      const r = await runC(2, "--holdout", "2", "--save-every", "1", "--quiet");
      assertStrictEquals(r.code, 0, r.stderr);
      const c = await runC(4, "--holdout", "2", "--resume");
      assertStrictEquals(c.code, 0, c.stderr);
      assertMatch(c.stderr, /resumed from .* at step 2/);
      assertEquals(
        await read(`${dir}/c/model.safetensors`),
        await read(`${dir}/a/model.safetensors`),
      );
      const bad = await cli(
        "train",
        "tokenizer",
        "--images",
        `${dir}/images/img0.png`,
        "--config",
        `${dir}/config.json`,
        "--steps",
        "5",
        "--out",
        `${dir}/c`,
        "--resume",
      );
      assertStrictEquals(bad.code, 2);
      assertMatch(bad.stderr, /training sources differ/);
    },
  );
  await t.step(
    "--init: the init tokenizer's resolution, weights and codebook; --max-frames caps a GIF",
    async () => {
      // The fixture tokenizer is 16x16 (the default preset, tiny, is 32x32). With --lr 0 and no
      // restarts the weights written are the init weights: the PyTorch ids of the fixed image.
      await Deno.mkdir(`${dir}/gif`);
      await Deno.copyFile(`${ROOT}tests/fixtures/image/anim_3f.gif`, `${dir}/gif/anim.gif`);
      for (const k of [0, 1]) {
        await Deno.copyFile(`${dir}/images/img${k}.png`, `${dir}/gif/i${k}.png`);
      }
      const r = await cli(
        "train",
        "tokenizer",
        "--images",
        `${dir}/gif`,
        "--init",
        `${FIX}/bin`,
        "--max-frames",
        "2",
        "--holdout",
        "0",
        "--steps",
        "1",
        "--batch",
        "2",
        "--lr",
        "0",
        "--restart-every",
        "0",
        "--out",
        `${dir}/i`,
      );
      assertStrictEquals(r.code, 0, r.stderr);
      assertMatch(r.stderr, /data: 3 training sources \(4 images\)/); // 2 of the GIF's 3 frames
      assertMatch(r.stderr, /model: 16x16 -> 8x8 tokens, 64 codes/);
      assertStrictEquals(
        JSON.parse(await Deno.readTextFile(`${dir}/i/config.json`)).resolution,
        16,
      );
      const e = await cli(
        "infer",
        "encode",
        "--tokenizer",
        `${dir}/i`,
        "--json",
        `${FIX}/image.png`,
      );
      assertStrictEquals(e.code, 0, e.stderr);
      const ref = await SafetensorsFile.open(`${FIX}/reference.safetensors`);
      const ids = Array.from(new Int32Array((await ref.readRaw("ids")).slice().buffer));
      ref.close();
      assertEquals(JSON.parse(e.stdout).tokens[0], ids.slice(0, 64));
      const both = await cli(
        "train",
        "tokenizer",
        ...common,
        "--init",
        `${FIX}/bin`,
        "--steps",
        "1",
        "--out",
        `${dir}/j`,
      );
      assertStrictEquals(both.code, 2);
      assertMatch(
        both.stderr,
        /--init .* takes the architecture from its config\.json: give no --config/,
      );
    },
  );
  await t.step("bare paths after --eval-images are held out, never trained on", async () => {
    const r = await cli(
      "train",
      "tokenizer",
      "--images",
      `${dir}/images/img0.png`,
      `${dir}/images/img1.png`,
      "--eval-images",
      `${dir}/images/img2.png`,
      `${dir}/images/img3.png`,
      "--config",
      `${dir}/config.json`,
      "--batch",
      "2",
      "--steps",
      "1",
      "--out",
      `${dir}/ev`,
    );
    assertStrictEquals(r.code, 0, r.stderr);
    assertMatch(r.stderr, /data: 2 training sources \(2 images\), 2 held out \(2 images\)/);
    const bare = await cli("train", "tokenizer", `${dir}/images/img0.png`, "--steps", "1");
    assertStrictEquals(bare.code, 2, bare.stderr);
    assertMatch(bare.stderr, /unexpected argument/);
  });
  await t.step("usage errors: --holdout 1, a batch that cannot fit the adapter", async () => {
    const h = await cli(
      "train",
      "tokenizer",
      ...common,
      "--holdout",
      "1",
      "--steps",
      "1",
      "--out",
      `${dir}/h`,
    );
    assertStrictEquals(h.code, 2, h.stderr);
    assertMatch(h.stderr, /--holdout 1: .*holds out all 5 sources, leaving none to train on/);
    // Refused before the data is read (the path does not exist).
    const b = await cli(
      "train",
      "tokenizer",
      "--images",
      `${dir}/nothing-here`,
      "--preset",
      "lvm",
      "--batch",
      "1000",
      "--steps",
      "1",
      "--out",
      `${dir}/b`,
    );
    assertStrictEquals(b.code, 2, b.stderr);
    assertMatch(b.stderr, /--batch 1000: at most \d+ images? of 256x256 per step fit this adapter/);
  });
  await Deno.remove(dir, { recursive: true });
});
