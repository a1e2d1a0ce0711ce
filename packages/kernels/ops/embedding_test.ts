import { getGpu } from "@lvm/gpu";
import { roundF16 } from "@lvm/util";
import { assertClose, finiteDiff, randint, randu } from "@lvm/util/testing";
import {
  buildEmbeddingIndex,
  embedding,
  embeddingBackward,
  embeddingBackwardCpu,
  embeddingCpu,
  validateIds,
} from "./embedding.ts";

// [N tokens, V, C]: C covers the vec4 (64), scalar (7, 1) and odd f16 paths.
const CASES = [[1, 1, 1], [7, 5, 7], [33, 19, 64], [45, 65, 13], [130, 8292, 12]];

Deno.test("embedding()", async (t) => {
  const gpu = await getGpu();
  for (const [N, V, C] of CASES) {
    for (const dtype of ["f32", "f16"] as const) {
      await t.step(`N=${N} V=${V} C=${C} ${dtype}`, async () => {
        const ids = randint(N, V, N + V);
        const table = randu(V * C, C, -300, 300);
        const T = gpu.upload(table, [V, C], dtype);
        const I = gpu.upload(ids, [N], "i32");
        const out = embedding(gpu, I, T);
        const ref = embeddingCpu(ids, dtype === "f16" ? roundF16(table) : table, V, C);
        assertClose(await gpu.readF32(out), ref, { atol: 0, rtol: 0 }, "embedding");
        [T, I, out].forEach((x) => x.release());
      });
    }
  }

  await t.step("ids outside [0,V) are clamped in the kernel and rejected on the host", async () => {
    const V = 4, C = 3;
    const table = randu(V * C, 3);
    const ids = [-5, 0, 3, 4, 2147483647];
    const out = embedding(gpu, gpu.upload(ids, [5], "i32"), gpu.upload(table, [V, C]));
    assertClose(await gpu.readF32(out), embeddingCpu(ids, table, V, C), {}, "clamped");
    let msg = "";
    try {
      validateIds(ids, V);
    } catch (e) {
      msg = e instanceof RangeError ? e.message : "";
    }
    if (!/ids\[0\] is -5, expected an integer in \[0, 4\)/.test(msg)) {
      throw new Error(`unexpected error: ${msg}`);
    }
  });

  await t.step("shape (B,T) ids give (B,T,C)", () => {
    const out = embedding(gpu, gpu.zeros([2, 3], "i32"), gpu.zeros([5, 4]));
    if (out.shape.join() !== "2,3,4") throw new Error(`shape ${out.shape}`);
  });
});

Deno.test("embeddingBackward()", async (t) => {
  const gpu = await getGpu();
  for (const [N, V, C] of CASES) {
    await t.step(`N=${N} V=${V} C=${C}`, async () => {
      // Few distinct ids so rows collect many tokens.
      const ids = randint(N, Math.min(V, 6), N * 7 + 1);
      const dout = randu(N * C, 5, -300, 300);
      const D = gpu.upload(dout, [N, C]);
      const dtable = embeddingBackward(gpu, ids, D, V);
      const ref = embeddingBackwardCpu(ids, dout, V, C);
      assertClose(await gpu.readF32(dtable), ref, { atol: 1e-3, rtol: 1e-5 }, "dtable");
      // Accumulate into an existing gradient.
      const prev = randu(V * C, 9);
      const acc = gpu.upload(prev, [V, C]);
      embeddingBackward(gpu, buildEmbeddingIndex(ids, V), D, V, { accumulate: acc });
      assertClose(
        await gpu.readF32(acc),
        ref.map((r, i) => r + prev[i]),
        { atol: 1e-3, rtol: 1e-5 },
        "accumulated",
      );
      [D, dtable, acc].forEach((x) => x.release());
    });
  }

  await t.step("index is a stable counting sort", () => {
    const idx = buildEmbeddingIndex([3, 1, 3, 0, 1, 3], 5);
    const got = JSON.stringify([[...idx.rows], [...idx.offsets], [...idx.order]]);
    if (got !== "[[0,1,3],[0,1,3,6],[3,1,4,0,2,5]]") throw new Error(got);
  });

  await t.step("matches finite differences of sum(embedding * w)", async () => {
    const N = 9, V = 4, C = 5;
    const ids = randint(N, V, 77), table = randu(V * C, 78), w = randu(N * C, 79);
    const dtable = embeddingBackward(gpu, ids, gpu.upload(w, [N, C]), V);
    // L = sum(table[ids] * w), in f64.
    const loss64 = (tab: Float64Array) => {
      let s = 0;
      for (let n = 0; n < N; n++) {
        for (let c = 0; c < C; c++) s += tab[ids[n] * C + c] * w[n * C + c];
      }
      return s;
    };
    assertClose(
      await gpu.readF32(dtable),
      finiteDiff(loss64, table, 1e-3),
      { atol: 1e-4, rtol: 1e-4 },
      "fd",
    );
  });

  await t.step("bad ids are a RangeError before any upload", () => {
    let msg = "";
    try {
      embeddingBackward(gpu, [0, 9], gpu.zeros([2, 3]), 4);
    } catch (e) {
      msg = e instanceof RangeError ? e.message : "";
    }
    if (!/ids\[1\] is 9/.test(msg)) throw new Error(`unexpected error: ${msg}`);
  });
});
