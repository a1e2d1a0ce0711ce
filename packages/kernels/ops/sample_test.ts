import { getGpu } from "@lvm/gpu";
import { assertEquals, assertThrows, randu, rng } from "@lvm/util/testing";
import { sampleCpu, sampleLogits, type SampleOptions, sampleWeights } from "./sample.ts";

/**
 * Distance in cumulative probability within which f32 rounding of the weights and their sums may
 * move a draw to a neighbouring id (on lavapipe every draw agrees at 1e-7; f32 epsilon is 6e-8).
 */
const EPS = 1e-6;

/**
 * Rows that break samplers: ties, +-300, -inf and NaN entries, +inf maxima, -0 vs +0, nothing above
 * -inf.
 */
function rows(V: number, seed: number): [string, Float32Array][] {
  const r = rng(seed);
  const base = () => randu(V, seed++, -4, 4);
  const extreme = base().map((v, i) => (i % 3 === 0 ? 300 : i % 3 === 1 ? -300 : v));
  extreme[V - 1] = 299.5;
  const negInf = base().map((v, i) => (i % 3 === 1 ? -Infinity : v));
  const nan = base().map((v, i) => (i % 5 === 0 ? NaN : v));
  const posInf = base();
  posInf[Math.floor(r() * V)] = Infinity;
  posInf[V - 1] = Infinity;
  const none = new Float32Array(V).fill(-Infinity).map((v, i) => (i % 2 ? NaN : v));
  return [
    ["random", base()],
    ["+-300", extreme],
    ["-inf entries", negInf],
    ["NaN entries", nan],
    ["all equal", new Float32Array(V).fill(1.5)],
    ["few values (ties at the k-th)", base().map((v) => Math.round(v / 3))],
    ["+inf entries", posInf],
    ["signed zeros (-0 == +0 at the k-th)", base().map((_, i) => [0, -0, -1][i % 3])],
    ["-inf and NaN only", none],
  ];
}

/** Cases: greedy, and sampling over top-k {0, 1, 3, 50, > n} x temperature {1, 0.5, 2}. */
function optionSets(n: number): SampleOptions[] {
  const out: SampleOptions[] = [{ greedy: true, n }];
  for (const topK of [0, 1, 3, 50, n + 5]) {
    for (const temperature of [1, 0.5, 2]) out.push({ n, topK, temperature });
  }
  return out;
}

/** Cumulative probability just below and at id `i` of the f64 reference distribution. */
function interval(w: Float64Array, i: number): [number, number] {
  let total = 0, before = 0;
  for (let j = 0; j < w.length; j++) {
    total += w[j];
    if (j < i) before += w[j];
  }
  return [before / total, (before + w[i]) / total];
}

Deno.test("sampleLogits()", async (t) => {
  const gpu = await getGpu();
  for (const V of [1, 7, 45, 8292]) {
    await t.step(`V=${V}: equals sampleCpu on odd and extreme rows`, async () => {
      const draw = rng(V);
      const jobs: { label: string; row: Float32Array; o: SampleOptions; edge: boolean }[] = [];
      const out = gpu.empty([8192], "i32"); // (draws) ids, at most 3 n x 9 rows x 16 options x 12
      const tensors = [];
      for (const n of new Set([V, Math.max(1, V - 3), Math.min(V, 8192)])) {
        for (const [kind, row] of rows(V, V + n)) {
          const x = gpu.upload(row, [1, V]); // (1,V)
          tensors.push(x);
          for (const base of optionSets(n)) {
            const w = sampleWeights(row, { ...base, u: 0 });
            // Random draws, both ends, and two exact cumulative boundaries (the hardest draws).
            const us = base.greedy ? [0.5] : [0, 1 - 2 ** -32, ...Array.from({ length: 8 }, draw)];
            const pos = [...w.keys()].filter((i) => w[i] > 0);
            if (!base.greedy && pos.length > 1) {
              for (const k of [0, pos.length >> 1]) {
                us.push(Math.min(interval(w, pos[k])[1], 1 - 2 ** -32));
              }
            }
            us.forEach((u, k) => {
              const o = { ...base, u };
              sampleLogits(gpu, x, o, { out, index: jobs.length });
              jobs.push({ label: `${kind}, ${JSON.stringify(o)}`, row, o, edge: k >= 10 });
            });
          }
          gpu.submit();
        }
      }
      const got = (await gpu.read(out)) as Int32Array;
      let differ = 0;
      jobs.forEach(({ label, row, o, edge }, j) => {
        const g = got[j], ref = sampleCpu(row, o);
        if (g === ref) return;
        const w = sampleWeights(row, o);
        // Exact parts: greedy, a row without survivors (id 0), and the survivor set (top-k).
        if (o.greedy || w.every((v) => v === 0)) {
          throw new Error(`${label}: got id ${g}, expected ${ref}`);
        }
        if (!(g >= 0 && g < o.n! && w[g] > 0)) {
          throw new Error(`${label}: got id ${g}, which is removed (expected ${ref})`);
        }
        // A different survivor only when u lies within EPS of the chosen id's cumulative interval.
        const [lo, hi] = interval(w, g);
        if (!(o.u! >= lo - EPS && o.u! <= hi + EPS)) {
          throw new Error(
            `${label}: got id ${g} (cumulative [${lo}, ${hi})), expected ${ref}; u is not within ${EPS} of a boundary`,
          );
        }
        if (!edge) differ++;
      });
      // The deliberate boundary draws may round either way; random ones (~1e-6 odds each) do not.
      if (differ > 1) throw new Error(`${differ} random draws of ${jobs.length} differ`);
      tensors.forEach((x) => x.release());
      out.release();
    });
  }

  await t.step("writes the token tensor too; a new (1) out by default", async () => {
    const x = gpu.upload([0, 2, 7, 7, -1], [1, 5]);
    const token = gpu.zeros([1], "i32");
    const out = sampleLogits(gpu, x, { greedy: true }, { token });
    assertEquals([...(await gpu.read(out))], [2]);
    assertEquals([...(await gpu.read(token))], [2]);
    const out2 = sampleLogits(gpu, x, { topK: 1, u: 0.99 }, { token });
    assertEquals([...(await gpu.read(out2))], [3]); // the two tied maxima share: u 0.99 -> the second
    assertEquals([...(await gpu.read(token))], [3]);
    [x, token, out, out2].forEach((t) => t.release());
  });

  await t.step("bad inputs name the problem", () => {
    const x = gpu.upload([1, 2, 3], [1, 3]);
    const two = gpu.upload([1, 2, 3, 4], [2, 2]);
    const f = gpu.empty([2]);
    assertThrows(() => sampleLogits(gpu, x, { u: 0.5, temperature: 0 }), RangeError, "temperature");
    assertThrows(() => sampleLogits(gpu, x, { u: 0.5, topK: -1 }), RangeError, "topK");
    assertThrows(() => sampleLogits(gpu, x, { u: 1 }), RangeError, "uniform u in [0, 1)");
    assertThrows(() => sampleLogits(gpu, x, {}), RangeError, "uniform u");
    assertThrows(
      () => sampleLogits(gpu, x, { greedy: true, n: 0 }),
      RangeError,
      "n (suppressFrom)",
    );
    assertThrows(() => sampleLogits(gpu, two, { greedy: true }), RangeError, "expected one row");
    assertThrows(
      () => sampleLogits(gpu, x, { greedy: true }, { out: f }),
      TypeError,
      "out must be i32",
    );
    const ids = gpu.empty([2], "i32");
    assertThrows(
      () => sampleLogits(gpu, x, { greedy: true }, { out: ids, index: 2 }),
      RangeError,
      "index 2",
    );
    [x, two, f, ids].forEach((t) => t.release());
  });
});

Deno.test("sampleCpu()", () => {
  assertEquals(sampleCpu([1, 5, 5, 9], { greedy: true, n: 3 }), 1);
  assertEquals(sampleCpu([NaN, -Infinity, 2], { greedy: true }), 2);
  assertEquals(sampleCpu([NaN, -Infinity], { u: 0.3 }), 0);
  // top-k keeps every value equal to the k-th: [3, 3, 3] survive k=2, each 1/3.
  const x = [1, 3, 3, 2, 3];
  assertEquals([0.1, 0.4, 0.9].map((u) => sampleCpu(x, { topK: 2, u })), [1, 2, 4]);
  // +inf maxima share the probability; everything finite gets none.
  assertEquals([0, 0.6].map((u) => sampleCpu([Infinity, 5, Infinity], { u })), [0, 2]);
  // Temperature 0.5 squares the odds: e^1 : e^0 -> e^2 : 1.
  const p0 = Math.exp(2) / (Math.exp(2) + 1);
  assertEquals(sampleCpu([1, 0], { temperature: 0.5, u: p0 - 1e-9 }), 0);
  assertEquals(sampleCpu([1, 0], { temperature: 0.5, u: p0 + 1e-9 }), 1);
});
