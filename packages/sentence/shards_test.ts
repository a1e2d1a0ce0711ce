import { join } from "node:path";
import { DatasetError, openDataset, writeShard } from "./shards.ts";
import { crc32 } from "./_fs.ts";
import { writeTestDataset as makeDataset } from "./testing.ts";

async function rejects(p: Promise<unknown>, re: RegExp, file?: string) {
  try {
    await p;
  } catch (e) {
    if (!(e instanceof DatasetError)) throw e;
    if (!re.test(e.message)) throw new Error(`wrong message: ${e.message}`);
    if (file && !e.message.includes(file)) {
      throw new Error(`message does not name ${file}: ${e.message}`);
    }
    return;
  }
  throw new Error(`expected a DatasetError matching ${re}`);
}

Deno.test("token shards", async (t) => {
  const dir = await Deno.makeTempDir();
  const sents = [[1, 2, 3, 4], [5, 6], [8191, 8192, 8291, 0, 7, 7], [9, 9, 9, 9]];
  await makeDataset(dir, sents, 3);

  await t.step("CRC-32 is the IEEE/zlib one", () => {
    const check = crc32(new TextEncoder().encode("123456789"));
    if (check !== 0xcbf43926) throw new Error(check.toString(16));
    const long = new Uint8Array(1000).map((_, i) => i * 7);
    if (crc32(long.subarray(300), crc32(long.subarray(0, 300))) !== crc32(long)) {
      throw new Error("streaming");
    }
  });

  await t.step("round trip: sentences, offsets, counts", async () => {
    const ds = await openDataset(dir);
    if (ds.index.counts.sentences !== 4 || ds.index.counts.tokens !== 16 || ds.shards !== 2) {
      throw new Error(JSON.stringify(ds.index.counts));
    }
    if (ds.index.counts.images !== 2 + 1 + 3 + 2) {
      throw new Error(`images ${ds.index.counts.images}`);
    }
    const got: number[][] = [];
    for await (const s of ds.sentencesIter()) got.push([...s]);
    if (JSON.stringify(got) !== JSON.stringify(sents)) throw new Error(JSON.stringify(got));
    if (ds.index.shards[1].sentenceTokens !== 4 || !ds.index.shards[0].offsets) {
      throw new Error("boundaries");
    }
    const bytes = await Deno.readFile(join(dir, "shard-00001.bin"));
    if (bytes.length !== 8 || bytes[0] !== 9 || bytes[1] !== 0) {
      throw new Error("u16 little-endian, no header");
    }
  });

  await t.step("i32 when the vocabulary exceeds u16", async () => {
    const d = await Deno.makeTempDir();
    await makeDataset(d, [[70000, 1], [2, 3]], 8, 80000);
    const ds = await openDataset(d);
    if (ds.index.dtype !== "i32") throw new Error(ds.index.dtype);
    const it = ds.sentencesIter();
    if ((await it.next()).value![0] !== 70000) throw new Error("value");
    await Deno.remove(d, { recursive: true });
  });

  await t.step("ids outside the vocabulary are refused at write", async () => {
    let msg = "";
    try {
      await writeShard(join(dir, "x.bin"), [[1, 8292]], "u16", 8292);
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!/sentence 0 token 1 is 8292/.test(msg)) throw new Error(msg);
  });

  await t.step("truncated shard: error names the file", async () => {
    const d = await Deno.makeTempDir();
    await makeDataset(d, sents, 3);
    const f = join(d, "shard-00000.bin");
    const b = await Deno.readFile(f);
    await Deno.writeFile(f, b.subarray(0, b.length - 2));
    await rejects(openDataset(d), /truncated: expected 24 bytes, found 22/, f);
    await Deno.remove(d, { recursive: true });
  });

  await t.step("corrupt shard (flipped byte): CRC error names the file", async () => {
    const d = await Deno.makeTempDir();
    await makeDataset(d, sents, 3);
    const f = join(d, "shard-00001.bin");
    const b = await Deno.readFile(f);
    b[3] ^= 0x01;
    await Deno.writeFile(f, b);
    const ds = await openDataset(d); // sizes are right
    await ds.readShard(0);
    await rejects(ds.readShard(1), /corrupt: CRC-32/, f);
    const it = ds.sentencesIter();
    await it.next();
    await rejects(
      (async () => {
        for await (const _ of it);
      })(),
      /corrupt/,
      f,
    );
    await Deno.remove(d, { recursive: true });
  });

  await t.step("missing shard, truncated or inconsistent index", async () => {
    const d = await Deno.makeTempDir();
    await makeDataset(d, sents, 3);
    const ix = join(d, "index.json");
    const text = await Deno.readTextFile(ix);
    await Deno.remove(join(d, "shard-00001.bin"));
    await rejects(openDataset(d), /shard file is missing/, "shard-00001.bin");
    await Deno.writeTextFile(ix, text.slice(0, text.length / 2));
    await rejects(openDataset(d), /not valid JSON \(truncated or corrupt\?\)/, ix);
    await Deno.writeTextFile(ix, text.replace('"sentences":4', '"sentences":5'));
    await rejects(openDataset(d), /counts.sentences is 5, the shards hold 4/, ix);
    // 2 tokens per image: sentences of 4, 2, 6 and 4 tokens hold 2 + 1 + 3 + 2 images.
    if (!text.includes('"images":8')) throw new Error(`fixture counts: ${text}`);
    await Deno.writeTextFile(ix, text.replace('"images":8', '"images":9'));
    await rejects(openDataset(d), /counts.images is 9, the shards hold 8/, ix);
    await Deno.writeTextFile(ix, text.replace('"images":8,', ""));
    await rejects(openDataset(d), /counts.images is undefined, the shards hold 8/, ix);
    await Deno.writeTextFile(
      ix,
      text.replace('"sentences":1,"tokens":4', '"sentences":1,"tokens":5'),
    );
    await rejects(openDataset(d), /shards\[1\]: 8 bytes do not hold 5 u16 tokens/, ix);
    await Deno.writeTextFile(ix, text.replace('"lvm-token-shards"', '"other"'));
    await rejects(openDataset(d), /format is "other"/, ix);
    await Deno.remove(ix);
    await rejects(openDataset(d), /not found/, ix);
    await Deno.remove(d, { recursive: true });
  });

  await Deno.remove(dir, { recursive: true });
});
