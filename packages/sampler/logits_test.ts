import { assertEquals, assertThrows } from "@lvm/util/testing";
import {
  argmax,
  processLogits,
  Sampler,
  sampleToken,
  sampleTokenAt,
  softmaxF64,
} from "./logits.ts";
import { Rng } from "@lvm/util";

const row = (n: number, seed: number) => {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => (r.next() - 0.5) * 8);
};

Deno.test("processLogits()", async (t) => {
  await t.step("suppression removes ids >= suppressFrom, temperature divides", () => {
    const x = row(10, 1);
    const p = processLogits(x, { suppressFrom: 7, temperature: 2, topK: 0 });
    for (let i = 0; i < 10; i++) assertEquals(p[i], i < 7 ? Math.fround(x[i] / 2) : -Infinity);
  });
  await t.step("top-k keeps the k largest (and ties with the k-th)", () => {
    const x = row(101, 2);
    const p = processLogits(x, { topK: 5 });
    const kept = [...p.keys()].filter((i) => p[i] > -Infinity);
    const want = [...x.keys()].sort((a, b) => x[b] - x[a]).slice(0, 5).sort((a, b) => a - b);
    assertEquals(kept, want);
    const tie = processLogits([1, 3, 3, 2, 3], { topK: 2 });
    assertEquals([...tie], [-Infinity, 3, 3, -Infinity, 3]);
  });
  await t.step("top-p keeps the smallest head reaching p, at least one", () => {
    const probs = [0.5, 0.3, 0.15, 0.05];
    const x = probs.map(Math.log);
    const kept = (p: number) => {
      const o = processLogits(x, { topK: 0, topP: p });
      return [...o.keys()].filter((i) => o[i] > -Infinity);
    };
    assertEquals(kept(0.5), [0]);
    assertEquals(kept(0.6), [0, 1]);
    assertEquals(kept(0.9), [0, 1, 2]);
    assertEquals(kept(0.99), [0, 1, 2, 3]);
    assertEquals(kept(1e-6), [0]);
  });
  await t.step("extreme logits stay finite in softmax", () => {
    const p = softmaxF64(processLogits([300, -300, 299, 0], { topK: 0 }));
    assertEquals(p.every(Number.isFinite), true);
    if (Math.abs(p[0] + p[2] - 1) > 1e-12) throw new Error(`softmax ${p}`);
  });
  await t.step("bad options are RangeErrors naming the option", () => {
    assertThrows(() => processLogits([1, 2], { temperature: 0 }), Error, "temperature");
    assertThrows(() => processLogits([1, 2], { topP: 1.5 }), Error, "topP");
    assertThrows(() => processLogits([1, 2], { topK: -1 }), Error, "topK");
  });
});

Deno.test("sampleToken()", async (t) => {
  await t.step("greedy is the arg-max below suppressFrom, ties to the lowest id", () => {
    assertEquals(sampleToken([1, 5, 5, 9], { greedy: true, suppressFrom: 3 }), 1);
    assertEquals(argmax([NaN, -Infinity, 2]), 2);
  });
  await t.step("sampling matches the processed distribution (chi-square)", () => {
    const x = row(12, 3);
    const opts = { topK: 6, topP: 0.9, temperature: 0.7, suppressFrom: 10 };
    const p = softmaxF64(processLogits(x, opts));
    const s = new Sampler(opts, 42);
    const counts = new Array(12).fill(0);
    const N = 20000;
    for (let i = 0; i < N; i++) counts[s.sample(x)]++;
    let chi = 0, dof = -1;
    for (let i = 0; i < 12; i++) {
      if (p[i] === 0) {
        assertEquals(counts[i], 0, `id ${i} has probability 0 but was drawn`);
        continue;
      }
      chi += (counts[i] - N * p[i]) ** 2 / (N * p[i]);
      dof++;
    }
    // 99.9th percentile of chi-square with <= 5 degrees of freedom is 20.5.
    if (chi > 20.5) throw new Error(`chi-square ${chi} over ${dof} dof: ${counts} vs ${p}`);
  });
  await t.step("same seed, same draws; different seed, different draws", () => {
    const x = row(64, 4);
    const draw = (seed: number) => {
      const s = new Sampler({ topK: 0 }, seed);
      return Array.from({ length: 40 }, () => s.sample(x));
    };
    assertEquals(draw(7), draw(7));
    if (JSON.stringify(draw(7)) === JSON.stringify(draw(8))) throw new Error("seeds ignored");
  });
  await t.step("edge rows: NaN removed, +inf maxima share, nothing above -inf -> 0", () => {
    const at = (x: number[], u: number, o = {}) => sampleTokenAt(x, { topK: 0, ...o }, u);
    assertEquals([0, 0.49, 0.51, 0.99].map((u) => at([NaN, 1, NaN, 1], u)), [1, 1, 3, 3]);
    assertEquals([0.2, 0.7].map((u) => at([Infinity, 7, Infinity], u)), [0, 2]);
    assertEquals(at([-Infinity, NaN, -Infinity], 0.5), 0);
    // top-k ranks the raw logits: NaN is never among the k largest.
    assertEquals([0, 0.99].map((u) => at([NaN, 2, NaN, 1, 3], u, { topK: 2 })), [1, 4]);
    // u is where the cumulative probability is crossed: e^2 : 1 at temperature 0.5.
    const p0 = Math.exp(2) / (Math.exp(2) + 1);
    assertEquals([p0 - 1e-9, p0 + 1e-9].map((u) => at([1, 0], u, { temperature: 0.5 })), [0, 1]);
    assertThrows(() => sampleTokenAt([1, 2], {}, 1), Error, "u must be in [0, 1)");
  });
  await t.step("drawUniforms() takes what sample() would take from the Rng", () => {
    const x = row(30, 6);
    const a = new Sampler({ topK: 8 }, 3), b = new Sampler({ topK: 8 }, 3);
    const ids = Array.from({ length: 5 }, () => a.sample(x));
    const us = b.drawUniforms(5);
    assertEquals([...us].map((u) => sampleTokenAt(x, { topK: 8 }, u)), ids);
    assertEquals(b.rng.state, a.rng.state);
    const g = new Sampler({ greedy: true }, 3);
    assertEquals([g.drawUniforms(5).length, g.rng.state], [0, new Rng(3).state]);
  });
  await t.step("never returns a suppressed id even when they dominate", () => {
    const x = new Float32Array(100).fill(-50);
    x.fill(300, 90);
    const s = new Sampler({ suppressFrom: 90 }, 1);
    for (let i = 0; i < 200; i++) if (s.sample(x) >= 90) throw new Error("suppressed id drawn");
  });
});
