/**
 * The data pipeline on the host (no GPU work): the loader's packed rows (tokens/s), shard
 * checksums (GB/s), and the per-image preprocessing of a build (squash-resize to 256 + variant,
 * images/s on one thread) that feeds the tokenizer. Training needs ~B*T tokens per step; a build
 * needs the tokenizer's images/s from the preprocessing, split over `--workers` threads.
 * @module
 */
import { join } from "node:path";
import { makeImage } from "@lvm/image";
import { imageKey, renderVariant, TokenLoader, Variant } from "@lvm/sentence";
import { writeTestDataset } from "@lvm/sentence/testing";
import { crc32 } from "@lvm/util";
import type { BenchCase } from "./_harness.ts";

const T = 4096, B = 8;
let tmp = "";

export const benches: BenchCase[] = [
  {
    name: "loader packed",
    shape: `B=${B} T=${T}, 4 shards`,
    items: B * T,
    unit: "tokens",
    note: "shuffled shards and sentences, u16 shards, one shard in memory",
    async setup() {
      tmp = await Deno.makeTempDir();
      const sents = Array.from(
        { length: 256 },
        (_, s) => Array.from({ length: T }, (_, i) => (s * 31 + i) % 8192),
      );
      await writeTestDataset(join(tmp, "ds"), sents, 64);
      const l = await TokenLoader.open(join(tmp, "ds"), {
        rowTokens: T,
        batchRows: B,
        split: "all",
      });
      return () => l.next();
    },
    teardown() {
      Deno.removeSync(tmp, { recursive: true });
    },
  },
  {
    name: "crc32",
    shape: "32 MiB",
    bytes: 32 << 20,
    note: "slicing-by-8, verifies every shard read",
    setup() {
      const buf = new Uint8Array(32 << 20).map((_, i) => (i * 2654435761) >>> 24);
      return () => crc32(buf);
    },
  },
  ...(["original", "gray", "masked", "rot90", "edges"] as const).map((v): BenchCase => ({
    name: "render 512->256",
    shape: v,
    items: 1,
    unit: "images",
    note: "PIL-exact bicubic squash-resize + variant, one thread",
    setup() {
      const img = makeImage(
        512,
        512,
        new Float32Array(3 * 512 * 512).map((_, i) => (i % 251) / 250),
      );
      return () => renderVariant(img, imageKey(7, Variant[v]), { resolution: 256, seed: 0 });
    },
  })),
];
