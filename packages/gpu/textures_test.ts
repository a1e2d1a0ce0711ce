import { getGpu } from "./gpu.ts";
import { assertEquals } from "@lvm/util/testing";
import { TextureCache, TexturePool, textureView } from "./textures.ts";

Deno.test("TextureCache: one texture per slot and size, least recently used out first", async () => {
  const gpu = await getGpu();
  const cache = new TextureCache("test", 2);
  const a = cache.get(gpu, "A", 4, 8, 2);
  assertEquals([a.w, a.h, a.l, a.texture.depthOrArrayLayers], [4, 8, 2, 2], "size");
  assertEquals(cache.get(gpu, "A", 4, 8, 2), a, "same slot and size: same texture");
  const b = cache.get(gpu, "B", 4, 8, 2);
  assertEquals(b === a, false, "another slot: another texture");
  const u = cache.get(gpu, "A", 4, 8, 2, { format: "rgba32uint" });
  assertEquals(u === a, false, "another format: another texture");
  assertEquals(u.texture.format, "rgba32uint", "format");
  assertEquals(cache.count(gpu), 3, "count");
  cache.get(gpu, "A", 4, 8, 2); // a is now the most recent of slot A
  const c = cache.get(gpu, "A", 16, 1, 1); // over keep=2: evicts u (least recent), not a
  assertEquals(cache.get(gpu, "A", 4, 8, 2), a, "a kept");
  assertEquals(cache.count(gpu), 3, "A holds 2, B 1");
  assertEquals(cache.get(gpu, "A", 16, 1, 1), c, "c kept");
  assertEquals(cache.get(gpu, "A", 4, 8, 2, { format: "rgba32uint" }) === u, false, "u re-made");
  const plain = cache.get(gpu, "P", 8, 8, 1, { view: "2d" });
  assertEquals(plain === cache.get(gpu, "P", 8, 8, 1), false, "view dimension is part of the key");
  cache.trim(gpu);
  assertEquals(cache.count(gpu), 0, "trim");
  assertEquals(cache.get(gpu, "A", 4, 8, 2) === a, false, "made again after trim");
  cache.trim(gpu);
});

Deno.test("TexturePool: take, put back, take again; release", async () => {
  const gpu = await getGpu();
  const pool = new TexturePool("test");
  const t1 = pool.take(gpu, 16, 64);
  const t2 = pool.take(gpu, 16, 64);
  assertEquals(t1 === t2, false, "two taken at once are distinct");
  assertEquals(pool.count(gpu), 0, "none free");
  pool.put(gpu, t1);
  pool.put(gpu, t2);
  assertEquals(pool.count(gpu), 2, "both free");
  const again = pool.take(gpu, 16, 64);
  assertEquals(again === t1 || again === t2, true, "reused");
  assertEquals(pool.take(gpu, 32, 64) === t1 || pool.take(gpu, 32, 64) === t2, false, "by size");
  pool.release(gpu);
  assertEquals(pool.count(gpu), 0, "release");
});

Deno.test("textureView: one view per texture, so a pooled texture's bind groups are reused", async () => {
  const gpu = await getGpu();
  const pool = new TexturePool("test");
  const t = pool.take(gpu, 16, 4), u = pool.take(gpu, 16, 4);
  const v = textureView(t);
  assertEquals(textureView(t) === v, true, "the same view again");
  assertEquals(textureView(u) === v, false, "another texture: another view");
  pool.put(gpu, t);
  assertEquals(textureView(pool.take(gpu, 16, 4)) === v, true, "lent again: the same view");
  // The Gpu's bind-group cache keys on the objects bound: the same pipeline and view, one group.
  const pipe = gpu.pipeline(
    "textureView test",
    () =>
      `@group(0) @binding(0) var t: texture_storage_2d<rgba32float, write>;
@compute @workgroup_size(1) fn main() { textureStore(t, vec2u(0u, 0u), vec4f(1.0)); }`,
  );
  const n0 = gpu.bindGroupCount;
  gpu.dispatch(pipe, [textureView(t)], null, 1);
  gpu.dispatch(pipe, [textureView(t)], null, 1);
  assertEquals(gpu.bindGroupCount - n0, 1, "one bind group for two dispatches");
  await gpu.sync();
  pool.put(gpu, t);
  pool.put(gpu, u);
  pool.release(gpu);
});
