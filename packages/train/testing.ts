/**
 * Test helpers for @lvm/train and the trainer CLI: a model small enough to train in seconds on
 * lavapipe (LVM's vocabulary, 2 layers of width 32), a learnable synthetic dataset, temp folders
 * and assertions.
 * @module
 */
import { writeTestDataset } from "@lvm/sentence/testing";
import { type LlamaConfig, makeConfig } from "@lvm/transformer";
import { assertEquals, rng } from "@lvm/util/testing";
export { assertEquals, assertRejects, assertThrows } from "@lvm/util/testing";

/** 2 layers, width 32, 2 heads, FFN 64, LVM's 8292-id vocabulary. */
export const MINI: LlamaConfig = makeConfig({ hidden: 32, layers: 2, heads: 2, ffn: 64 });

/**
 * Sentences whose next token is a fixed function of the current one (a random cycle over 40 image
 * codes), from a random start: a model learns it quickly, so the loss must fall far below ln(8292).
 */
export function patternSentences(n: number, len: number, seed = 1): number[][] {
  const r = rng(seed);
  const ids = Array.from({ length: 40 }, (_, i) => 100 + i * 37);
  const next = new Map(ids.map((id, i) => [id, ids[(i * 7 + 3) % 40]]));
  return Array.from({ length: n }, () => {
    let t = ids[Math.floor(r() * 40)];
    return Array.from({ length: len }, () => {
      const cur = t;
      t = next.get(t)!;
      return cur;
    });
  });
}

/** A fresh temp folder holding a pattern dataset (`n` sentences of `len` tokens) in `data/`. */
export async function patternDataset(n = 64, len = 16): Promise<{ root: string; data: string }> {
  const root = await Deno.makeTempDir({ prefix: "lvm-train-" });
  const data = `${root}/data`;
  await writeTestDataset(data, patternSentences(n, len), 16);
  return { root, data };
}

/** Throws with `msg` unless `cond`. */
export function assert(cond: unknown, msg = "assertion failed"): asserts cond {
  if (!cond) throw new Error(msg);
}

/** Bitwise equality of two float arrays (NaN-safe), naming the first differing index. */
export function assertBitEqual(a: Float32Array, b: Float32Array, label: string): void {
  assertEquals(a.length, b.length, `${label}: length`);
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) {
    if (x[i] !== y[i]) throw new Error(`${label}[${i}]: ${a[i]} != ${b[i]} (bitwise)`);
  }
}
