import {
  DERIVED_TASKS,
  imageKey,
  keyItem,
  keyVariant,
  partRange,
  type Plan,
  planClasses,
  planDerived,
  planMultitask,
  planPairs,
  planSequences,
  shufflePlan,
  Variant,
} from "./builders.ts";
import { makeLayout, sentenceLength } from "./layout.ts";

function eq(a: unknown, b: unknown, msg = "") {
  const x = JSON.stringify(a), y = JSON.stringify(b);
  if (x !== y) throw new Error(`${msg}\n  got      ${x}\n  expected ${y}`);
}
function ok(c: unknown, msg: string) {
  if (!c) throw new Error(msg);
}
const row = (
  p: Plan,
  i: number,
) => [...p.keys.subarray(i * p.imagesPerSentence, (i + 1) * p.imagesPerSentence)];
const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);

Deno.test("planSequences()", async (t) => {
  await t.step("windows of n frames, stride apart, end to end, no slack", () => {
    // 40 frames, n=4, stride 3: span 10, 4 windows, no slack -> start 0.
    const p = planSequences([{ first: 100, frames: 40, stride: 3 }], { imagesPerSentence: 4 });
    eq(p.count, 4);
    for (let w = 0; w < 4; w++) {
      eq(
        row(p, w),
        [0, 3, 6, 9].map((i) => imageKey(100 + w * 10 + i)),
        `window ${w}`,
      );
    }
  });
  await t.step("random start within the slack; a new start per epoch; deterministic", () => {
    const seqs = [{ first: 0, frames: 47, stride: 2 }, { first: 47, frames: 5 }];
    const p = planSequences(seqs, { imagesPerSentence: 5, epochs: 6, seed: 3 });
    // source 0: span 9, 5 windows, slack 2; source 1: 5 frames, span 5, 1 window, slack 0.
    eq(p.count, 6 * 6);
    const starts = new Set<number>();
    for (let i = 0; i < p.count; i++) {
      const r = row(p, i).map(keyItem);
      ok(
        r.every((k, j) => j === 0 || k - r[j - 1] === (r[0] >= 47 ? 1 : 2)),
        `row ${i} stride: ${r}`,
      );
      ok(r.every((k) => (r[0] >= 47 ? k >= 47 && k < 52 : k < 47)), `row ${i} stays in its source`);
      if (r[0] < 47) starts.add(r[0] % 9);
      ok(row(p, i).every((k) => keyVariant(k) === 0), "original frames");
    }
    ok(
      [...starts].every((s) => s <= 2) && starts.size > 1,
      `starts in the slack, varied: ${[...starts]}`,
    );
    eq(
      [...planSequences(seqs, { imagesPerSentence: 5, epochs: 6, seed: 3 }).keys],
      [...p.keys],
      "same seed",
    );
  });
  await t.step("a source shorter than one span gives nothing", () => {
    eq(planSequences([{ first: 0, frames: 15, stride: 1 }], { imagesPerSentence: 16 }).count, 0);
  });
});

Deno.test("planPairs()", async (t) => {
  await t.step("[x1,y1,...,xk,yk] of one task, each pair once per epoch", () => {
    const tasks = [{ x: range(0, 11), y: range(100, 11) }, { x: range(200, 6), y: range(300, 6) }];
    const p = planPairs(tasks, { imagesPerSentence: 6, epochs: 2, seed: 1 });
    // task 0: 11 pairs / 3 = 3 sentences per epoch; task 1: 2 per epoch.
    eq(p.count, 10);
    const seen = new Map<string, number>();
    for (let i = 0; i < p.count; i++) {
      const r = row(p, i).map(keyItem);
      const task = r[0] < 200 ? 0 : 1;
      for (let j = 0; j < 6; j += 2) {
        eq(r[j + 1] - r[j], 100, `row ${i}: y follows its x`);
        ok((r[j] < 200 ? 0 : 1) === task, `row ${i}: one task`);
      }
      ok(new Set(r).size === 6, `row ${i}: distinct pairs`);
      for (let j = 0; j < 6; j += 2) seen.set(String(r[j]), (seen.get(String(r[j])) ?? 0) + 1);
    }
    ok([...seen.values()].every((c) => c <= 2), "a pair at most once per epoch");
  });
  await t.step("odd images per sentence is an error", () => {
    let msg = "";
    try {
      planPairs([{ x: [0], y: [1] }], { imagesPerSentence: 5 });
    } catch (e) {
      msg = (e as Error).message;
    }
    ok(/even/.test(msg), msg);
  });
});

Deno.test("planDerived()", async (t) => {
  const items = range(10, 9);
  await t.step("colorization [gray(a), a, gray(b), b, ...]", () => {
    const p = planDerived("colorization", items, { imagesPerSentence: 8, seed: 2 });
    eq(p.count, 2);
    for (let i = 0; i < p.count; i++) {
      const r = row(p, i);
      for (let j = 0; j < 8; j += 2) {
        eq([keyVariant(r[j]), keyVariant(r[j + 1])], [Variant.gray, Variant.original]);
        eq(keyItem(r[j]), keyItem(r[j + 1]));
      }
    }
  });
  await t.step("inpainting [masked(a), a, ...]", () => {
    const p = planDerived("inpainting", items, { imagesPerSentence: 4 });
    for (let i = 0; i < p.count; i++) {
      const r = row(p, i);
      eq(r.map(keyVariant), [Variant.masked, 0, Variant.masked, 0]);
      eq(keyItem(r[0]), keyItem(r[1]));
    }
  });
  await t.step("rotation/flip/invert/zoom/edges [a, t(a), ...], one transform per sentence", () => {
    for (const task of ["rotation", "flip", "invert", "zoom", "edges"]) {
      const p = planDerived(task, range(0, 60), { imagesPerSentence: 4, epochs: 3 });
      const used = new Set<number>();
      for (let i = 0; i < p.count; i++) {
        const r = row(p, i);
        eq([keyVariant(r[0]), keyVariant(r[2])], [0, 0], `${task}: originals first`);
        eq(keyVariant(r[1]), keyVariant(r[3]), `${task}: one transform per sentence`);
        ok(DERIVED_TASKS[task].variants.includes(keyVariant(r[1]) as never), `${task}: variant`);
        used.add(keyVariant(r[1]));
      }
      eq(used.size, DERIVED_TASKS[task].variants.length, `${task}: every transform drawn`);
    }
  });
  await t.step("edges: [a, edges(a), b, edges(b)] exactly", () => {
    const p = planDerived("edges", [3, 8, 5, 1], { imagesPerSentence: 4, seed: 6 });
    eq(p.count, 2);
    const seen: number[] = [];
    for (let i = 0; i < p.count; i++) {
      const r = row(p, i);
      eq(r.map(keyVariant), [0, Variant.edges, 0, Variant.edges]);
      eq([keyItem(r[0]), keyItem(r[2])], [keyItem(r[1]), keyItem(r[3])]);
      seen.push(keyItem(r[0]), keyItem(r[2]));
    }
    eq(seen.sort(), [1, 3, 5, 8], "each image once per epoch");
  });
});

Deno.test("planMultitask()", async (t) => {
  await t.step("g scenes x M modalities, one modality order per sentence", () => {
    // 7 scenes, 5 modalities; item = 100*m + s.
    const scenes = range(0, 7).map((s) => range(0, 5).map((m) => 100 * m + s));
    const p = planMultitask(scenes, { imagesPerSentence: 16, epochs: 4, seed: 9 });
    eq(p.imagesPerSentence, 15);
    eq(p.count, 4 * 2);
    const orders = new Set<string>();
    for (let i = 0; i < p.count; i++) {
      const r = row(p, i).map(keyItem);
      const order = r.slice(0, 5).map((k) => Math.floor(k / 100));
      eq([...order].sort(), [0, 1, 2, 3, 4], "a permutation of the modalities");
      for (let g = 0; g < 3; g++) {
        const blk = r.slice(g * 5, g * 5 + 5);
        eq(blk.map((k) => Math.floor(k / 100)), order, `row ${i} scene ${g}: same order`);
        ok(blk.every((k) => k % 100 === blk[0] % 100), `row ${i} scene ${g}: one scene`);
      }
      orders.add(order.join());
    }
    ok(orders.size > 1, "orders shuffled per sentence");
  });
});

Deno.test("planClasses()", async (t) => {
  await t.step("n distinct images of one class", () => {
    const classes = [range(0, 10), range(50, 7), range(90, 3)];
    const p = planClasses(classes, { imagesPerSentence: 3, seed: 4 });
    eq(p.count, 3 + 2 + 1);
    for (let i = 0; i < p.count; i++) {
      const r = row(p, i).map(keyItem);
      const c = r[0] < 50 ? 0 : r[0] < 90 ? 1 : 2;
      ok(r.every((k) => classes[c].includes(k)), `row ${i}: one class`);
      eq(new Set(r).size, 3);
    }
  });
});

Deno.test("shufflePlan() / partRange()", async (t) => {
  await t.step("shuffle permutes whole sentences", () => {
    const p = planClasses([range(0, 40)], { imagesPerSentence: 4 });
    const s = shufflePlan(p, 5);
    const a = range(0, p.count).map((i) => row(p, i).join()).sort();
    const b = range(0, s.count).map((i) => row(s, i).join()).sort();
    eq(b, a);
    ok(range(0, p.count).some((i) => row(p, i).join() !== row(s, i).join()), "order changed");
  });
  await t.step("parts are contiguous, disjoint and cover the plan", () => {
    for (const [count, n] of [[10, 3], [2, 5], [0, 2], [17, 17]]) {
      let next = 0;
      for (let i = 1; i <= n; i++) {
        const [a, b] = partRange(count, i, n);
        eq(a, next);
        next = b;
      }
      eq(next, count);
    }
    let msg = "";
    try {
      partRange(10, 0, 3);
    } catch (e) {
      msg = (e as Error).message;
    }
    ok(/1 <= I <= N/.test(msg), msg);
  });
  await t.step("the default layout is 16 x 256 = 4096 tokens", () => {
    eq(sentenceLength(makeLayout()), 4096);
  });
});
