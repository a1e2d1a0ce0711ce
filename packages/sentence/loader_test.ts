import { type Batch, TokenLoader } from "./loader.ts";
import { writeTestDataset as makeDataset } from "./testing.ts";
import { rng } from "@lvm/util";

/** 60 sentences of 3..9 tokens; every token id is unique, so the stream is traceable. */
async function fixture(): Promise<{ dir: string; sents: number[][] }> {
  const dir = await Deno.makeTempDir();
  const r = rng(42);
  let next = 0;
  const sents = Array.from(
    { length: 60 },
    () => Array.from({ length: 3 + Math.floor(r() * 7) }, () => next++),
  );
  await makeDataset(dir, sents, 7);
  return { dir, sents };
}

async function take(l: TokenLoader, n: number): Promise<Batch[]> {
  const out: Batch[] = [];
  for (let i = 0; i < n; i++) {
    const b = await l.next();
    if (!b) break;
    out.push(b);
  }
  return out;
}
const flat = (bs: Batch[], k: "inputs" | "targets" | "mask") => bs.flatMap((b) => [...b[k]]);
function eq(a: unknown, b: unknown, msg = "") {
  const x = JSON.stringify(a), y = JSON.stringify(b);
  if (x !== y) {
    throw new Error(`${msg}\n  got      ${x.slice(0, 300)}\n  expected ${y.slice(0, 300)}`);
  }
}

Deno.test("TokenLoader", async (t) => {
  const { dir, sents } = await fixture();
  const total = sents.reduce((a, s) => a + s.length, 0);
  const owner = new Map<number, number>();
  sents.forEach((s, i) => s.forEach((v) => owner.set(v, i)));

  await t.step(
    "packed: one epoch is every sentence once, whole, in a shuffled order; targets shift by one",
    async () => {
      const l = await TokenLoader.open(dir, {
        rowTokens: 16,
        batchRows: 3,
        split: "all",
        epochs: 1,
        seed: 1,
      });
      const bs = await take(l, 100);
      const inputs = flat(bs, "inputs"), targets = flat(bs, "targets"), mask = flat(bs, "mask");
      const n = mask.reduce((a, v) => a + v, 0);
      eq(n, total - 1, "every token but the last has a target");
      const stream = inputs.slice(0, total);
      eq([...stream].sort((a, b) => a - b), [...Array(total).keys()], "each token once");
      for (let i = 0; i + 1 < total; i++) {
        if (targets[i] !== stream[i + 1] || mask[i] !== 1) throw new Error(`target ${i}`);
      }
      // Sentences are contiguous and whole.
      const order: number[] = [];
      for (const v of stream) if (order.at(-1) !== owner.get(v)) order.push(owner.get(v)!);
      eq(order.length, 60, "each sentence contiguous");
      let pos = 0;
      for (const s of order) {
        eq(stream.slice(pos, pos + sents[s].length), sents[s]);
        pos += sents[s].length;
      }
      if (order.every((s, i) => s === i)) throw new Error("not shuffled");
      eq(
        inputs.slice(total).every((v) => v === 0) && mask.slice(total - 1).every((v) => v === 0),
        true,
        "padding",
      );
      eq(await l.next(), null);
    },
  );

  await t.step("seeded: same seed same batches, other seed or epoch other order", async () => {
    const a = await take(
      await TokenLoader.open(dir, { rowTokens: 16, batchRows: 2, seed: 3, split: "all" }),
      40,
    );
    const b = await take(
      await TokenLoader.open(dir, { rowTokens: 16, batchRows: 2, seed: 3, split: "all" }),
      40,
    );
    const c = await take(
      await TokenLoader.open(dir, { rowTokens: 16, batchRows: 2, seed: 4, split: "all" }),
      40,
    );
    eq(flat(a, "inputs"), flat(b, "inputs"));
    if (JSON.stringify(flat(a, "inputs")) === JSON.stringify(flat(c, "inputs"))) {
      throw new Error("seed ignored");
    }
    const s = flat(a, "inputs");
    const e1 = s.slice(0, 100), e2 = s.slice(total, total + 100);
    if (JSON.stringify(e1) === JSON.stringify(e2)) {
      throw new Error("epoch 2 repeats epoch 1's order");
    }
    if (a.at(-1)!.epoch < 2) throw new Error("unbounded epochs by default");
  });

  await t.step("exact resume from a saved state", async () => {
    const opts = { rowTokens: 11, batchRows: 2, seed: 9 } as const;
    const all = await take(await TokenLoader.open(dir, opts), 30);
    const l = await TokenLoader.open(dir, opts);
    await take(l, 17);
    const state = JSON.parse(JSON.stringify(l.state()));
    eq(state.rows, 34);
    const rest = await take(await TokenLoader.open(dir, { ...opts, state }), 13);
    eq(
      rest.map((b) => [...b.inputs, ...b.targets, ...b.mask]),
      all.slice(17).map((b) => [...b.inputs, ...b.targets, ...b.mask]),
    );
    let msg = "";
    try {
      await TokenLoader.open(dir, { ...opts, seed: 10, state });
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!/saved state belongs to another dataset or other loader options/.test(msg)) {
      throw new Error(msg);
    }
  });

  await t.step(
    "train/validation split: disjoint, complete, independent of the order seed",
    async () => {
      const seen = async (split: "train" | "val", seed: number) => {
        const l = await TokenLoader.open(dir, {
          rowTokens: 8,
          split,
          valFraction: 0.2,
          epochs: 1,
          seed,
          packing: "sentence",
        });
        const got = new Set<number>();
        for (const b of await take(l, 1000)) {
          for (let r = 0; r < b.rows; r++) {
            if (b.mask[r * 8] || b.inputs[r * 8]) {
              got.add(owner.get(b.inputs[r * 8])!);
            }
          }
        }
        return got;
      };
      const train = await seen("train", 1), val = await seen("val", 1), val2 = await seen("val", 2);
      eq(train.size + val.size, 60);
      eq([...train].filter((s) => val.has(s)), []);
      eq([...val].sort(), [...val2].sort());
      if (val.size < 5 || val.size > 20) {
        throw new Error(
          `val holds ${val.size} of 60 at fraction 0.2`,
        );
      }
      let msg = "";
      try {
        await (await TokenLoader.open(dir, { rowTokens: 8, split: "val", valFraction: 0 })).next();
      } catch (e) {
        msg = (e as Error).message;
      }
      if (!/"val" split .* holds no sentence/.test(msg)) throw new Error(msg);
    },
  );

  await t.step(
    "sentence packing: one sentence per row, truncated to T, padding masked",
    async () => {
      const T = 6;
      const l = await TokenLoader.open(dir, {
        rowTokens: T,
        batchRows: 4,
        packing: "sentence",
        split: "all",
        epochs: 1,
        shuffle: false,
      });
      const bs = await take(l, 100);
      eq(bs.length, 15);
      bs.forEach((b, bi) => {
        for (let r = 0; r < 4; r++) {
          const s = sents[bi * 4 + r], o = r * T;
          const k = Math.min(T, s.length);
          eq(
            [...b.inputs.subarray(o, o + T)],
            [...s.slice(0, k), ...Array(T - k).fill(0)],
            `row ${bi * 4 + r}`,
          );
          for (let i = 0; i < T; i++) {
            const has = i < k && i + 1 < s.length;
            eq([b.mask[o + i], has ? b.targets[o + i] : 0], [has ? 1 : 0, has ? s[i + 1] : 0]);
          }
        }
      });
    },
  );

  await Deno.remove(dir, { recursive: true });
});
