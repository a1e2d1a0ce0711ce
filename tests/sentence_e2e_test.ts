// End to end through @lvm/sentence: images -> build (test tokenizer) -> official JSONL -> import ->
// loader rows. Checks that every stage keeps the same token stream.
import { join } from "node:path";
import {
  buildDataset,
  exportJsonl,
  importJsonl,
  openDataset,
  parseJsonlLine,
  TokenLoader,
} from "@lvm/sentence";
import { BlockMeanTestTokenizer, writeTestInputs } from "@lvm/sentence/testing";

Deno.test("sentence pipeline end to end", async (t) => {
  const tmp = await Deno.makeTempDir();
  const inp = await writeTestInputs(join(tmp, "in"));
  const built = join(tmp, "built"), jsonl = join(tmp, "d.jsonl"), imported = join(tmp, "imported");

  await t.step("build -> JSONL -> import keeps shard bytes and layout", async () => {
    const tok = new BlockMeanTestTokenizer(32);
    const res = await buildDataset({
      kind: "inpainting",
      inputs: [inp.images, inp.x],
      imagesPerSentence: 4,
      epochs: 2,
      mask: "center",
      outDir: built,
      tokenizer: tok,
      shardSentences: 5,
    }); // deno-fmt-ignore
    const n = await exportJsonl(built, jsonl);
    if (n !== res.index!.counts.sentences) throw new Error(`${n} lines`);
    const ix = await importJsonl(jsonl, imported, {
      shardSentences: 5,
      layout: { tokensPerImage: 4 },
    });
    if (ix.layout.imagesPerSentence !== 4) throw new Error(`layout ${JSON.stringify(ix.layout)}`);
    const a = await openDataset(built), b = await openDataset(imported);
    for (let i = 0; i < a.shards; i++) {
      if (a.index.shards[i].crc32 !== b.index.shards[i].crc32) {
        throw new Error(`shard ${i} differs`);
      }
    }
  });

  await t.step("the loader's unshuffled packed stream is the JSONL's tokens in order", async () => {
    const lines = (await Deno.readTextFile(jsonl)).trim().split("\n").map((
      l,
    ) => [...parseJsonlLine(l)]);
    const stream = lines.flat();
    const T = 7;
    const l = await TokenLoader.open(imported, {
      rowTokens: T,
      batchRows: 3,
      split: "all",
      shuffle: false,
      epochs: 1,
    });
    const got: number[] = [];
    for (let b = await l.next(); b; b = await l.next()) got.push(...b.inputs);
    if (got.slice(0, stream.length).join() !== stream.join()) throw new Error("stream differs");
    // Every sentence is [masked(a), a, masked(b), b] (4 codes per image): each masked image
    // carries a centre hole, so its codes differ from its original's.
    if (lines.length < 4) throw new Error(`${lines.length} sentences`);
    lines.forEach((s, i) => {
      if (s.length !== 16) throw new Error(`sentence ${i}: ${s.length} tokens, expected 16`);
      for (const p of [0, 8]) {
        const masked = s.slice(p, p + 4).join(), original = s.slice(p + 4, p + 8).join();
        if (masked === original) {
          throw new Error(`sentence ${i} image ${p / 4}: no mask visible (${masked})`);
        }
      }
    });
  });

  await Deno.remove(tmp, { recursive: true });
});
