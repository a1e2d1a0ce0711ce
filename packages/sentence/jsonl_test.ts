import { join } from "node:path";
import {
  exportJsonl,
  formatJsonlLine,
  importJsonl,
  JSONL_MAX_LINE_BYTES,
  parseJsonlLine,
  readLines,
} from "./jsonl.ts";
import { DatasetError, openDataset } from "./shards.ts";
import { rng } from "@lvm/util";

/** Random sentences: `n` sentences of `images` x 256 codes (or variable lengths). */
function sentences(n: number, seed: number, variable = false): Int32Array[] {
  const r = rng(seed);
  return Array.from({ length: n }, () => {
    const len = variable ? 256 * (1 + Math.floor(r() * 4)) : 1024;
    return Int32Array.from({ length: len }, () => Math.floor(r() * 8192));
  });
}

Deno.test("official JSONL", async (t) => {
  const dir = await Deno.makeTempDir();

  await t.step("a line is json.dumps({'tokens': b64encode(int32 LE)})", () => {
    // Python: json.dumps({"tokens": b64encode(np.array([1, 256, 8191], np.int32).tobytes()).decode()})
    const line = formatJsonlLine([1, 256, 8191]);
    if (line !== '{"tokens": "AQAAAAABAAD/HwAA"}\n') throw new Error(line);
    if (parseJsonlLine(line.trim()).join() !== "1,256,8191") throw new Error("parse");
  });

  for (const variable of [false, true]) {
    await t.step(
      `JSONL -> shards -> JSONL is byte-exact (${variable ? "variable" : "fixed"} lengths)`,
      async () => {
        const src = join(dir, `in-${variable}.jsonl`);
        const sents = sentences(23, variable ? 2 : 1, variable);
        await Deno.writeTextFile(src, sents.map(formatJsonlLine).join(""));
        const out = join(dir, `ds-${variable}`);
        const ix = await importJsonl(src, out, { shardSentences: 5 });
        if (ix.counts.sentences !== 23 || ix.shards.length !== 5) {
          throw new Error(JSON.stringify(ix.counts));
        }
        if (ix.layout.imagesPerSentence !== (variable ? 0 : 4)) {
          throw new Error(`images ${ix.layout.imagesPerSentence}`);
        }
        const back = join(dir, `out-${variable}.jsonl`);
        if ((await exportJsonl(out, back)) !== 23) throw new Error("count");
        const a = await Deno.readFile(src), b = await Deno.readFile(back);
        if (a.length !== b.length || a.some((v, i) => v !== b[i])) throw new Error("bytes differ");
      },
    );
  }

  await t.step("shards -> JSONL -> shards keeps every shard byte", async () => {
    const a = join(dir, "ds-false"), jl = join(dir, "again.jsonl"), b = join(dir, "ds-again");
    await exportJsonl(a, jl);
    await importJsonl(jl, b, { shardSentences: 5 });
    const A = await openDataset(a), B = await openDataset(b);
    for (let i = 0; i < A.shards; i++) {
      const x = await Deno.readFile(A.shardPath(i)), y = await Deno.readFile(B.shardPath(i));
      if (x.length !== y.length || x.some((v, k) => v !== y[k])) {
        throw new Error(`shard ${i} differs`);
      }
      if (A.index.shards[i].crc32 !== B.index.shards[i].crc32) throw new Error("crc");
    }
  });

  await t.step("special tokens: declared on import, checked per line, round trip", async () => {
    // [begin] img [sep] img [sep] img [end], 4 tokens per image, ids 8200..8202 reserved.
    const layout = { tokensPerImage: 4, beginId: 8200, separatorId: 8201, endId: 8202 };
    const sent = (i: number) => [8200, i, 1, 2, 3, 8201, 4, 5, 6, i, 8201, 8191, 0, 7, i, 8202];
    const src = join(dir, "special.jsonl");
    await Deno.writeTextFile(src, [0, 1, 2, 3, 4].map((i) => formatJsonlLine(sent(i))).join(""));
    const out = join(dir, "ds-special");
    const ix = await importJsonl(src, out, { shardSentences: 2, layout });
    const L = ix.layout;
    if (
      L.beginId !== 8200 || L.separatorId !== 8201 || L.endId !== 8202 ||
      L.imagesPerSentence !== 3 || ix.counts.images !== 15 || ix.counts.tokens !== 80
    ) throw new Error(JSON.stringify([L, ix.counts]));
    const back = join(dir, "special-out.jsonl");
    await exportJsonl(out, back);
    if ((await Deno.readTextFile(back)) !== (await Deno.readTextFile(src))) {
      throw new Error("round trip differs");
    }
    const bad: [number[], Partial<typeof layout> & { imagesPerSentence?: number }, RegExp][] = [
      // separator missing (a code in its place)
      [
        [8200, 0, 1, 2, 3, 9, 4, 5, 6, 7, 8201, 8, 9, 10, 11, 8202],
        {},
        /line 2: token 5 is 9, expected the separator 8201 under the declared layout \(4 tokens per image, begin 8200, separator 8201, end 8202\)/,
      ],
      // no end token: not a whole number of images
      [sent(0).slice(0, 15), {}, /line 2: 15 tokens is not a whole number of images/],
      // a reserved id where an image code belongs
      [
        [8200, 0, 8201, 2, 3, 8201, 4, 5, 6, 7, 8201, 8, 9, 10, 11, 8202],
        {},
        /line 2: image 0 code 1 is 8201, expected an image code in \[0, 8192\)/,
      ],
      // declared images per sentence
      [
        sent(0),
        { imagesPerSentence: 2 },
        /line 1: 3 images, the declared layout has 2 per sentence/,
      ],
    ]; // deno-fmt-ignore
    for (const [line, extra, re] of bad) {
      const f = join(dir, "special-bad.jsonl");
      await Deno.writeTextFile(f, formatJsonlLine(sent(0)) + formatJsonlLine(line));
      let err: unknown;
      try {
        await importJsonl(f, join(dir, "bad"), { overwrite: true, layout: { ...layout, ...extra } });
      } catch (e) {
        err = e;
      }
      if (!(err instanceof DatasetError) || !re.test(err.message) || !err.message.includes(f)) {
        throw new Error(`expected ${re}, got ${err}`);
      }
    }
  });

  await t.step("bad lines are errors naming file and line", async () => {
    const cases: [string, RegExp][] = [
      ['{"tokens": "AQAAAA=="}\nnot json\n', /line 2: not valid JSON/],
      ['{"ids": "AQAAAA=="}\n', /line 1: expected \{"tokens"/],
      ['{"tokens": "AQAA"}\n', /line 1: 3 bytes is not a whole number of int32 ids/],
      ['{"tokens": "@@@@"}\n', /line 1: "tokens" is not valid base64/],
      ['{"tokens": "ZCAAAA=="}\n', /line 1: token 0 is 8292, outside the vocabulary \[0, 8292\)/],
    ];
    for (const [text, re] of cases) {
      const f = join(dir, "bad.jsonl");
      await Deno.writeTextFile(f, text);
      let err: unknown;
      try {
        await importJsonl(f, join(dir, "bad"), { overwrite: true });
      } catch (e) {
        err = e;
      }
      if (!(err instanceof DatasetError) || !re.test(err.message) || !err.message.includes(f)) {
        throw new Error(`expected ${re}, got ${err}`);
      }
    }
  });

  await t.step("an output folder holding a dataset is refused without overwrite", async () => {
    let msg = "";
    try {
      await importJsonl(join(dir, "in-false.jsonl"), join(dir, "ds-false"));
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!/already holds a dataset/.test(msg)) throw new Error(msg);
  });

  await Deno.remove(dir, { recursive: true });
});

Deno.test("JSONL reader: linear in line length, bounded lines, regular files only", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "jsonl_lines_" });
  const collect = async (f: string, max?: number) => {
    const out: string[] = [];
    for await (const [l, n] of readLines(f, max)) {
      if (n !== out.length + 1) throw new Error(`line number ${n}`);
      out.push(l);
    }
    return out;
  };
  try {
    await t.step(
      "lines across read pieces (and UTF-8 split between them) come back whole",
      async () => {
        const r = rng(3);
        const lines = Array.from(
          { length: 300 },
          (_, i) => "é€".repeat(Math.floor(r() * 8000)) + `#${i}` + "x".repeat(i % 10 ? 0 : 60_000),
        );
        const f = join(dir, "many.txt");
        await Deno.writeTextFile(f, lines.join("\n"));
        const got = await collect(f);
        if (
          got.length !== lines.length || got.some((l, i) => l !== lines[i])
        ) {
          throw new Error("lines differ");
        }
      },
    );
    await t.step("an 8 MB line is read in one linear pass (was quadratic)", async () => {
      const f = join(dir, "long.txt");
      const big = new Uint8Array(8 << 20).fill(0x61);
      big[big.length - 1] = 10;
      await Deno.writeFile(f, big);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const guard = new Promise<never>((_, rej) => {
        timer = setTimeout(() => rej(new Error("a long line still takes minutes")), 60_000);
      });
      const got = await Promise.race([collect(f), guard]).finally(() => clearTimeout(timer));
      if (got.length !== 1 || got[0].length !== big.length - 1) throw new Error("long line");
    });
    await t.step("a line over the limit is a clear error naming the file and line", async () => {
      const f = join(dir, "over.jsonl");
      await Deno.writeTextFile(f, formatJsonlLine([1, 2]) + formatJsonlLine(new Int32Array(1000)));
      for (const max of [100, 3000]) {
        let msg = "";
        try {
          await importJsonl(f, join(dir, `out-${max}`), { maxLineBytes: max });
        } catch (e) {
          if (!(e instanceof DatasetError)) throw e;
          msg = e.message;
        }
        if (!msg.startsWith(`${f}: line 2: longer than ${max} bytes`)) throw new Error(msg);
      }
      if (JSONL_MAX_LINE_BYTES !== 64 << 20) throw new Error("default limit");
    });
    await t.step("a FIFO or a folder is refused, not waited on", async () => {
      const fifo = join(dir, "pipe.jsonl");
      if (!(await new Deno.Command("mkfifo", { args: [fifo] }).output()).success) {
        throw new Error(`mkfifo ${fifo} failed (coreutils)`);
      }
      for (const f of [fifo, dir]) {
        let msg = "";
        try {
          await importJsonl(f, join(dir, "out-fifo"), { overwrite: true });
        } catch (e) {
          msg = (e as Error).message;
        }
        if (!msg.startsWith(`${f}: not a regular file`)) throw new Error(msg);
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
