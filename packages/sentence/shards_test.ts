import { join } from "node:path";
import { combineDatasets } from "./combine.ts";
import { DatasetError, openDataset, verifyDataset, writeShard } from "./shards.ts";
import { crc32, hex32 } from "./_fs.ts";
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

  await t.step("a write error (missing folder, full disk) names the shard file", async () => {
    const p = join(dir, "gone", "shard-00000.bin");
    let msg = "";
    try {
      await writeShard(p, [[1, 2]], "u16", 8292);
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!msg.startsWith(`${p}: cannot write`)) throw new Error(msg);
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

/** `p` settles within `ms` (a hang fails the test instead of blocking it). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still waiting after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

Deno.test("faults: verify(), FIFOs, symlink loops, confined shard paths, combine", async (t) => {
  const root = await Deno.makeTempDir({ prefix: "shards_faults_" });
  const sents = [[1, 2, 3, 4], [5, 6], [8191, 8192, 8291, 0, 7, 7], [9, 9, 9, 9]];
  const fresh = async (name: string) => {
    const d = join(root, name);
    await makeDataset(d, sents, 3);
    return d;
  };
  try {
    await t.step("verify() checks every shard up front, streaming, naming the file", async () => {
      const d = await fresh("v");
      const ds = await openDataset(d);
      const seen: number[] = [];
      const r = await ds.verify({ chunkBytes: 4, onShard: (i) => seen.push(i) });
      if (r.shards !== 2 || r.bytes !== 32 || seen.join() !== "0,1") throw new Error("counts");
      // A flipped byte in the LAST shard: found before anything is read for training.
      const f = join(d, "shard-00001.bin");
      const b = await Deno.readFile(f);
      b[5] ^= 0x10;
      await Deno.writeFile(f, b);
      const ds2 = await openDataset(d); // sizes are right: opening does not notice
      for (const chunkBytes of [4, 6, 1 << 20]) {
        await rejects(ds2.verify({ chunkBytes }), /corrupt: CRC-32 is [0-9a-f]{8}, the index/, f);
      }
      await rejects(verifyDataset(d), /corrupt: CRC-32/, f);
      // An id outside the vocabulary with a matching CRC (a wrong index) is found too.
      const ix = join(d, "index.json");
      const text = await Deno.readTextFile(ix);
      const bad = new Uint8Array(b.length).fill(0xff); // u16 65535 >= 8292
      await Deno.writeFile(f, bad);
      await Deno.writeTextFile(
        ix,
        text.replace(
          /"crc32":"[0-9a-f]{8}"(?=[^\n]*"sentenceTokens")/,
          `"crc32":"${hex32(crc32(bad))}"`,
        ),
      );
      await rejects(verifyDataset(d, { chunkBytes: 2 }), /corrupt: token 0 is 65535/, f);
    });

    await t.step("a shard or index that is a FIFO is refused, without hanging", async () => {
      const d = await fresh("fifo");
      const f = join(d, "shard-00000.bin");
      await Deno.remove(f);
      const mk = await new Deno.Command("mkfifo", { args: [f] }).output();
      if (!mk.success) return; // no mkfifo here
      await rejects(within(openDataset(d), 5000, "open"), /not a regular file/, f);
      const ix = join(d, "index.json");
      await Deno.remove(ix);
      await new Deno.Command("mkfifo", { args: [ix] }).output();
      await rejects(within(openDataset(d), 5000, "open index"), /not a regular file/, ix);
    });

    await t.step("a symlink loop is reported as one, not as missing", async () => {
      const d = await fresh("loop");
      const f = join(d, "shard-00000.bin");
      await Deno.remove(f);
      await Deno.symlink(join(d, "loop-b"), f);
      await Deno.symlink(f, join(d, "loop-b"));
      await rejects(openDataset(d), /symbolic links/, f);
      const ix = join(d, "index.json");
      await Deno.remove(ix);
      await Deno.symlink(ix, ix + ".2");
      await Deno.symlink(ix + ".2", ix);
      await rejects(openDataset(d), /symbolic links/, ix);
    });

    await t.step("shard paths are confined to the dataset folder", async () => {
      const d = await fresh("confined");
      const ix = join(d, "index.json");
      const text = await Deno.readTextFile(ix);
      await Deno.writeTextFile(join(root, "outside.bin"), "x".repeat(24));
      for (
        const [file, why] of [
          ["../outside.bin", /climbs out of the folder/],
          [join(root, "outside.bin"), /is an absolute path/],
          ["a//shard-00000.bin", /empty path segment/],
        ] as const
      ) {
        await Deno.writeTextFile(ix, text.replace('"shard-00000.bin"', JSON.stringify(file)));
        await rejects(openDataset(d), why, ix);
      }
      // A record naming a "datasets" entry the index does not have.
      await Deno.writeTextFile(
        ix,
        text.replace('"shard-00000.bin"', '"shard-00000.bin","dataset":0'),
      );
      await rejects(openDataset(d), /shards\[0\]\.dataset is 0/, ix);
    });

    await t.step("combine: explicit dataset references; corrupt inputs are refused", async () => {
      const a = await fresh("ca"), b = await fresh("cb"), out = join(root, "combined");
      const ix = await combineDatasets([a, b], out);
      if (JSON.stringify(ix.datasets) !== '["../ca","../cb"]') {
        throw new Error(`datasets ${JSON.stringify(ix.datasets)}`);
      }
      if (ix.shards.some((r) => r.file.includes("/") || r.dataset === undefined)) {
        throw new Error("records must name their dataset, files stay bare");
      }
      const ds = await openDataset(out);
      if (ds.shardPath(2) !== join(b, "shard-00000.bin")) throw new Error(ds.shardPath(2));
      const got: number[][] = [];
      for await (const s of ds.sentencesIter()) got.push([...s]);
      if (JSON.stringify(got) !== JSON.stringify([...sents, ...sents])) throw new Error("data");
      await ds.verify();
      // Combining a combined dataset with another resolves to the original folders.
      const c = await fresh("cc");
      const ix2 = await combineDatasets([out, c], join(root, "combined2"));
      if (JSON.stringify(ix2.datasets) !== '["../ca","../cb","../cc"]') {
        throw new Error(`nested ${JSON.stringify(ix2.datasets)}`);
      }
      // A corrupt input: refused, and no index is written.
      const f = join(b, "shard-00001.bin");
      const bytes = await Deno.readFile(f);
      bytes[0] ^= 1;
      await Deno.writeFile(f, bytes);
      await rejects(combineDatasets([a, b], join(root, "combined3")), /corrupt: CRC-32/, f);
      if (await Deno.stat(join(root, "combined3", "index.json")).catch(() => null)) {
        throw new Error("an index was written for a corrupt input");
      }
    });
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
