import { getGpu } from "@lvm/gpu";
import { attentionCpu, attentionDecode } from "@lvm/kernels";
import { assertClose, assertEquals, assertThrows, randu } from "@lvm/util/testing";
import { KvCache } from "./kv_cache.ts";

Deno.test("KvCache", async (t) => {
  const gpu = await getGpu();
  const [H, KVH, D, maxT, T] = [4, 2, 8, 12, 7];
  const q = randu(T * H * D, 1), k = randu(T * KVH * D, 2), v = randu(T * KVH * D, 3);
  const full = attentionCpu(q, k, v, { B: 1, Tq: T, H, KVH, D }).out; // (1,T,H,D)
  for (const layout of ["tex", "buffer"] as const) {
    await t.step(`${layout}: prefill + one step == the last row of causal attention`, async () => {
      const cache = new KvCache(gpu, { batch: 1, maxT, kvHeads: KVH, headDim: D, layout });
      assertEquals([cache.layout, cache.maxT], [layout, maxT]);
      const n0 = T - 1, row = KVH * D;
      cache.write(
        gpu,
        gpu.upload(k.subarray(0, n0 * row), [1, n0, KVH, D]),
        gpu.upload(v.subarray(0, n0 * row), [1, n0, KVH, D]),
        0,
      );
      cache.write(
        gpu,
        gpu.upload(k.subarray(n0 * row), [1, 1, KVH, D]),
        gpu.upload(v.subarray(n0 * row), [1, 1, KVH, D]),
        n0,
      );
      const out = attentionDecode(
        gpu,
        gpu.upload(q.subarray(n0 * H * D), [1, 1, H, D]),
        cache.buffers,
        n0,
      );
      assertClose(await gpu.readF32(out), full.subarray(n0 * H * D), { atol: 2e-6, rtol: 1e-4 });
      out.release();
      cache.release();
    });
  }
  await t.step("sizes must be positive integers", () => {
    assertThrows(
      () => new KvCache(gpu, { batch: 1, maxT: 0, kvHeads: 1, headDim: 4 }),
      RangeError,
      "maxT must be a positive integer, got 0",
    );
  });
});
