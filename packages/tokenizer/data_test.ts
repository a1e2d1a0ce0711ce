/**
 * Training sources: how many frames a GIF or a frame folder gives (the --max-frames cap), the
 * held-out split (and its refusal to hold out everything), and the sampler on an empty list.
 */
import { assertEquals, assertRejects, assertStrictEquals, assertThrows } from "@lvm/util/testing";
import { join } from "node:path";
import { makeImage } from "@lvm/image";
import { loadFrames, savePng } from "@lvm/image/fs";
import { holdOut, HoldOutError, type ImageSource, sampleBatch } from "./data.ts";
import { DEFAULT_MAX_FRAMES, loadSources } from "./sources.ts";
import { Rng } from "@lvm/util";

const GIF = new URL("../../tests/fixtures/image/anim_3f.gif", import.meta.url).pathname;

Deno.test("loadSources() frames per GIF and frame folder", async (t) => {
  const all = await loadFrames(GIF); // 3 frames of 9x7
  assertStrictEquals(all.length, 3);
  await t.step("a GIF gives every frame under the cap, evenly spaced frames over it", async () => {
    const [d] = await loadSources([GIF]);
    assertStrictEquals(d.frames.length, 3);
    const [two] = await loadSources([GIF], { maxFrames: 2 });
    assertEquals(two.frames.map((f) => f.data), [all[0].data, all[1].data]); // frames 0 and 1 of 3
    const [one] = await loadSources([GIF], { maxFrames: 1 });
    assertEquals(one.frames.map((f) => f.data), [all[0].data]);
    const [every] = await loadSources([GIF], { maxFrames: 0 });
    assertStrictEquals(every.frames.length, 3);
    await assertRejects(
      () => loadSources([GIF], { maxFrames: -1 }),
      Error,
      /maxFrames must be an integer >= 0/,
    );
  });
  await t.step(
    `a frame folder keeps ${DEFAULT_MAX_FRAMES} frames by default, all with 0`,
    async () => {
      const dir = await Deno.makeTempDir();
      const n = DEFAULT_MAX_FRAMES + 6;
      await Deno.mkdir(join(dir, "clip"));
      for (let i = 0; i < n; i++) {
        await savePng(
          join(dir, "clip", `f${i}.png`),
          makeImage(2, 2, new Float32Array(12).fill(i / n)),
        );
      }
      const [d] = await loadSources([dir]);
      assertStrictEquals(d.name, join(dir, "clip"));
      assertStrictEquals(d.frames.length, DEFAULT_MAX_FRAMES);
      const [every] = await loadSources([dir], { maxFrames: 0 });
      assertStrictEquals(every.frames.length, n);
      await Deno.remove(dir, { recursive: true });
    },
  );
});

Deno.test("holdOut()", async (t) => {
  const src = (n: number): ImageSource[] =>
    Array.from({ length: n }, (_, i) => ({ name: `s${i}`, frames: [makeImage(1, 1)] }));
  const names = (ss: ImageSource[]) => ss.map((s) => s.name);
  await t.step("every K-th source is held out; 0 holds none; one source is kept", () => {
    const r = holdOut(src(5), 2);
    assertEquals([names(r.train), names(r.held)], [["s0", "s2", "s4"], ["s1", "s3"]]);
    assertEquals(names(holdOut(src(3), 0).held), []);
    assertEquals(names(holdOut(src(1), 1).train), ["s0"]);
    assertEquals(names(holdOut(src(3), 8).held), ["s2"]); // K past the count: the last one
  });
  await t.step("holding out every source is an error, not an empty training set", () => {
    assertThrows(
      () => holdOut(src(4), 1),
      HoldOutError,
      /holds out all 4 sources, leaving none to train on/,
    );
  });
  await t.step("sampling from no sources names the problem", () => {
    assertThrows(() => sampleBatch([], 1, 8, new Rng(1)), Error, /no training sources/);
  });
});
