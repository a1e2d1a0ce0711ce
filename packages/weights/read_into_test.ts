import { join } from "node:path";
import { encodeGguf, GgufReader, type GgufTensorEntry } from "./gguf.ts";
import {
  encodeSafetensors,
  SafetensorsReader,
  type TensorEntry,
  type TensorSource,
} from "./safetensors.ts";
import { openCheckpoint, SafetensorsFile, TorchBinFile, writeShardedSafetensors } from "./fs.ts";
import { MemorySource } from "./byte_source.ts";
import { assert, assertEquals, assertRejects, randu } from "@lvm/util/testing";

const FIXTURES = new URL("../../tests/fixtures/kernels/", import.meta.url).pathname;

/**
 * Reads every tensor of `src` twice, into one reused buffer (sized for the largest) and into new
 * arrays: the same bytes, and each read into the buffer is a view of its start.
 */
async function checkReuse(
  src: { names(): string[]; readRaw: TensorSource["readRaw"] },
  sizes: (n: string) => number,
) {
  const names = src.names();
  const scratch = new Uint8Array(Math.max(...names.map(sizes)) + 3);
  scratch.fill(0xAB);
  for (const name of names) {
    const got = await src.readRaw(name, scratch);
    assert(
      got.buffer === scratch.buffer && got.byteOffset === 0,
      `${name}: not read into the buffer`,
    );
    assertEquals([...got], [...await src.readRaw(name)], name);
  }
  // Too small: a RangeError naming the tensor, before anything is read.
  const big = names.reduce((a, n) => (sizes(n) > sizes(a) ? n : a));
  await assertRejects(() => src.readRaw(big, new Uint8Array(sizes(big) - 1)), RangeError, big);
}

const tensors: Record<string, TensorEntry> = {
  "a.f32": { dtype: "F32", shape: [3, 7], data: randu(21, 1, -300, 300) },
  "b.bf16": { dtype: "BF16", shape: [5, 32], data: randu(160, 2) },
  "c.f16": { dtype: "F16", shape: [9], data: randu(9, 3) },
  "d.i64": { dtype: "I64", shape: [2], data: new BigInt64Array([-1n, 7n]) },
};

Deno.test("readRaw(name, out): the same bytes into a reused buffer, every reader", async (t) => {
  await t.step("safetensors in memory", async () => {
    const r = await SafetensorsReader.fromBytes(encodeSafetensors(tensors), "mem");
    await checkReuse(r, (n) => r.info(n).byteLength);
  });
  await t.step("MemorySource.read into a buffer", async () => {
    const m = new MemorySource(new Uint8Array([1, 2, 3, 4, 5]));
    const out = new Uint8Array(8);
    assertEquals([...await m.read(1, 3, out)], [2, 3, 4]);
    assertEquals([...await m.read(3, 8, out)], [4, 5]); // short at the end, as without out
    await assertRejects(() => m.read(0, 4, new Uint8Array(3)), RangeError, "4 needed");
  });
  const dir = await Deno.makeTempDir({ prefix: "read_into_" });
  try {
    await t.step("safetensors file and sharded checkpoint", async () => {
      const path = join(dir, "one.safetensors");
      await Deno.writeFile(path, encodeSafetensors(tensors));
      const f = await SafetensorsFile.open(path);
      try {
        await checkReuse(f, (n) => f.info(n).byteLength);
      } finally {
        f.close();
      }
      await writeShardedSafetensors(join(dir, "sharded"), tensors, 200);
      const s = await openCheckpoint(join(dir, "sharded"));
      try {
        await checkReuse(s, (n) => s.info(n).byteLength);
      } finally {
        s.close();
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  await t.step("GGUF (quantized blocks as stored)", async () => {
    const entries: GgufTensorEntry[] = [
      { name: "f32", type: "F32", shape: [3, 5], data: randu(15, 4) },
      { name: "q8", type: "Q8_0", shape: [3, 64], data: randu(192, 5) },
      { name: "q4", type: "Q4_0", shape: [5, 96], data: randu(480, 6) },
    ];
    const g = await GgufReader.fromBytes(encodeGguf(new Map(), entries), "x.gguf");
    await checkReuse(g, (n) => g.info(n).byteLength);
  });
  await t.step("PyTorch .bin (views gathered, then copied)", async () => {
    const f = await TorchBinFile.open(join(FIXTURES, "torch_state.bin"));
    try {
      const names = f.names().filter((n) => f.info(n).byteLength > 0);
      await checkReuse(
        { names: () => names, readRaw: (n, out) => f.readRaw(n, out) },
        (n) => f.info(n).byteLength,
      );
    } finally {
      f.close();
    }
  });
});
