import { getGpu } from "@lvm/gpu";
import { assertClose, assertStrictEquals, assertThrows, randint, randu } from "@lvm/util/testing";
import {
  bincount,
  countNonzero,
  nchwToRows,
  rowsToNchw,
  scatterAddRows,
  scatterAddRowsCpu,
  vqLookup,
  vqNearest,
  vqNearestCpu,
} from "./vq.ts";

/**
 * Checks GPU ids against the f64 reference: each id must be the reference's, or (a rounding-level
 * near tie) one whose exact distance is within `tol` of the minimum. Returns the number of near ties.
 */
function checkIds(
  ids: Int32Array,
  dist: Float32Array,
  ref: ReturnType<typeof vqNearestCpu>,
  K: number,
  tol: (n: number) => number,
  label: string,
): number {
  let ties = 0;
  for (let n = 0; n < ids.length; n++) {
    const want = ref.ids[n];
    if (ids[n] === want) continue;
    const gap = ref.all[n * K + ids[n]] - ref.dist[n];
    if (!(ids[n] >= 0 && ids[n] < K) || gap > tol(n)) {
      throw new Error(`${label}: row ${n} got id ${ids[n]} (gap ${gap}), expected ${want}`);
    }
    ties++;
  }
  assertClose(dist, ref.dist, { atol: tol(0), rtol: 1e-5 }, `${label} dist`);
  return ties;
}

Deno.test("vqNearest() matches the f64 reference", async (t) => {
  const gpu = await getGpu();
  const cases: [number, number, number, number][] = [
    // N, K, D, value range
    [1, 1, 1, 1],
    [37, 13, 6, 1],
    [37, 300, 64, 1],
    [64, 8192, 64, 1],
    [9, 77, 5, 300],
  ];
  for (const [i, [N, K, D, range]] of cases.entries()) {
    await t.step(`N=${N} K=${K} D=${D} range ${range}`, async () => {
      const z = randu(N * D, 500 + i, -range, range);
      const cb = randu(K * D, 600 + i, -range, range);
      const { ids, dist } = vqNearest(gpu, gpu.upload(z, [N, D]), gpu.upload(cb, [K, D]));
      const [gi, gd] = await gpu.readMany([ids, dist]);
      const ref = vqNearestCpu(z, cb, N, K, D);
      // f32 rounding of |z|^2 + |e|^2 - 2 z.e: a few ulps of the terms' size.
      const scale = 4 * D * range * range * 2 ** -23 * 8;
      const ties = checkIds(gi as Int32Array, gd as Float32Array, ref, K, () => scale, "random");
      if (ties > Math.max(1, N / 8)) throw new Error(`too many near ties: ${ties}/${N}`);
    });
  }
});

Deno.test("vqNearest() exact ties go to the lowest index", async (t) => {
  const gpu = await getGpu();
  await t.step("duplicate codebook rows, across code chunks", async () => {
    const K = 8192, D = 64, N = 20;
    const cb = randu(K * D, 700);
    // Rows 5000 and 7001 duplicate row 100; rows 12 and 8191 duplicate row 3.
    cb.copyWithin(5000 * D, 100 * D, 101 * D);
    cb.copyWithin(7001 * D, 100 * D, 101 * D);
    cb.copyWithin(12 * D, 3 * D, 4 * D);
    cb.copyWithin(8191 * D, 3 * D, 4 * D);
    // z rows sit next to duplicated codes (or on them exactly).
    const z = new Float32Array(N * D);
    const noise = randu(N * D, 701, -0.01, 0.01);
    for (let n = 0; n < N; n++) {
      const src = n % 2 ? 100 : 3;
      for (let d = 0; d < D; d++) z[n * D + d] = cb[src * D + d] + (n < 4 ? 0 : noise[n * D + d]);
    }
    const { ids } = vqNearest(gpu, gpu.upload(z, [N, D]), gpu.upload(cb, [K, D]));
    const got = await gpu.read(ids);
    for (let n = 0; n < N; n++) {
      const want = n % 2 ? 100 : 3;
      if (got[n] !== want) throw new Error(`row ${n}: got ${got[n]}, expected ${want}`);
    }
  });
  await t.step("all-zero codebook -> 0", async () => {
    const N = 33, K = 700, D = 8;
    const { ids, dist } = vqNearest(
      gpu,
      gpu.upload(randu(N * D, 9, -5, 5), [N, D]),
      gpu.zeros([K, D]),
    );
    const got = await gpu.read(ids);
    if (got.some((v) => v !== 0)) throw new Error(`ids [${got}]`);
    if ((await gpu.readF32(dist)).some((v) => !(v > 0))) throw new Error("dist must be |z|^2 > 0");
  });
  await t.step("bad shapes", () => {
    let msg = "";
    try {
      vqNearest(gpu, gpu.zeros([4, 8]), gpu.zeros([10, 7]));
    } catch (e) {
      msg = String(e);
    }
    if (!/z rows have 8 values but codebook rows have 7/.test(msg)) throw new Error(msg);
  });
});

Deno.test("vqLookup(), nchwToRows(), rowsToNchw()", async (t) => {
  const gpu = await getGpu();
  await t.step("lookup with out-of-range ids", async () => {
    const K = 11, D = 5;
    const cb = randu(K * D, 800);
    const ids = new Int32Array([0, 10, 3, -1, 11, 3, 7]);
    const out = await gpu.readF32(
      vqLookup(gpu, gpu.upload(ids, [7], "i32"), gpu.upload(cb, [K, D])),
    );
    const ref = new Float32Array(7 * D);
    ids.forEach((k, n) => {
      if (k >= 0 && k < K) ref.set(cb.subarray(k * D, (k + 1) * D), n * D);
    });
    assertClose(out, ref, { atol: 0, rtol: 0 }, "lookup");
  });
  await t.step("transposes round-trip", async () => {
    for (const [B, C, H, W] of [[1, 1, 1, 1], [2, 3, 7, 9], [2, 64, 16, 16]]) {
      const x = randu(B * C * H * W, 801);
      const rows = nchwToRows(gpu, gpu.upload(x, [B, C, H, W]));
      const r = await gpu.readF32(rows);
      const ref = new Float32Array(x.length);
      for (let b = 0; b < B; b++) {
        for (let c = 0; c < C; c++) {
          for (let s = 0; s < H * W; s++) ref[(b * H * W + s) * C + c] = x[(b * C + c) * H * W + s];
        }
      }
      assertClose(r, ref, { atol: 0, rtol: 0 }, `rows [${B},${C},${H},${W}]`);
      const back = await gpu.readF32(rowsToNchw(gpu, rows, B, H, W));
      assertClose(back, x, { atol: 0, rtol: 0 }, "round trip");
    }
  });
});

Deno.test("scatterAddRows(), bincount() and countNonzero() are exact and deterministic", async (t) => {
  const gpu = await getGpu();
  for (const [N, K, D] of [[1, 1, 1], [7, 3, 5], [1000, 50, 5], [600, 8192, 64]]) {
    await t.step(`N=${N} K=${K} D=${D}`, async () => {
      const ids = randint(N, K + 2, 900 + N).map((v) => v - 1); // includes -1 and K (ignored)
      const rows = randu(N * D, 901 + N, -300, 300);
      const I = gpu.upload(ids, [N], "i32"), R = gpu.upload(rows, [N, D]);
      const a = scatterAddRows(gpu, I, R, K);
      const b = scatterAddRows(gpu, I, R, K);
      const counts = bincount(gpu, I, K);
      const [ga, gb, gc] = await gpu.readMany([a, b, counts]);
      assertClose(ga, scatterAddRowsCpu(ids, rows, N, D, K), { atol: 0, rtol: 0 }, "sums");
      assertClose(gb, ga, { atol: 0, rtol: 0 }, "second run");
      const refc = new Uint32Array(K);
      for (const k of ids) if (k >= 0 && k < K) refc[k]++;
      assertClose(gc, refc, { atol: 0, rtol: 0 }, "counts");
      // A running tally: the same ids added twice into the counts, then the codes used.
      bincount(gpu, I, K, counts);
      const used = countNonzero(gpu, counts);
      const [g2, gu] = await gpu.readMany([counts, used]);
      assertClose(g2, refc.map((c) => 2 * c), { atol: 0, rtol: 0 }, "tally");
      assertStrictEquals(gu[0], refc.filter((c) => c > 0).length, "codes used");
      for (const t of [I, R, a, b, counts, used]) t.release();
    });
  }
  await t.step("bad counts are named", () => {
    const I = gpu.upload(new Int32Array(3), [3], "i32"), f = gpu.zeros([4]);
    assertThrows(() => bincount(gpu, I, 4, f), RangeError, "into must be u32 with 4 elements");
    assertThrows(() => countNonzero(gpu, f), RangeError, "counts must be u32");
    I.release();
    f.release();
  });
});
