import { join } from "node:path";
import { makeImage } from "@lvm/image";
import { decodeVideo, ffmpegAvailable, savePng } from "@lvm/image/fs";
import { buildDataset, type BuildOptions, type BuildProgress } from "./build.ts";
import { keyItem } from "./builders.ts";
import { crc32, crc32Range } from "./_fs.ts";
import { combineDatasets } from "./combine.ts";
import { planKind } from "./kinds.ts";
import { assembleSentence, makeLayout } from "./layout.ts";
import { DatasetError, openDataset } from "./shards.ts";
import { ItemLoader, renderVariant, sobelEdges } from "./sources.ts";
import {
  BlockMeanTestTokenizer,
  type TestInputs,
  writeCorruptAvi,
  writeTestInputs,
} from "./testing.ts";

const R = 32;
/** Builds on this thread (a worker's start-up costs more than these tiny images); the workers
 * step below checks the pool separately. */
const build = (o: BuildOptions) => buildDataset({ workers: 0, ...o }); // test tokenizer resolution: 2x2 blocks = 4 tokens per image

async function readAll(dir: string): Promise<number[][]> {
  const out: number[][] = [];
  for await (const s of (await openDataset(dir)).sentencesIter()) out.push([...s]);
  return out;
}

/** The sentences a build must produce, computed image by image without cache or batching. */
async function oracle(o: Omit<BuildOptions, "outDir" | "tokenizer">): Promise<number[][]> {
  const tok = new BlockMeanTestTokenizer(R);
  const { table, plan, options } = await planKind(o.kind, o.inputs, o);
  const layout = makeLayout({
    tokensPerImage: tok.tokensPerImage,
    codebookSize: 8192,
    imagesPerSentence: plan.imagesPerSentence,
    ...o.layout,
  });
  const loader = new ItemLoader(table);
  const render = {
    resolution: R,
    seed: options.seed,
    mask: (options.mask ?? "random") as "random" | "center",
  };
  const out: number[][] = [];
  const n = plan.imagesPerSentence;
  for (let s = 0; s < plan.count; s++) {
    const blocks: Int32Array[] = [];
    for (const key of plan.keys.subarray(s * n, s * n + n)) {
      blocks.push(tok.encodeOne(renderVariant(await loader.load(keyItem(key)), key, render)));
    }
    out.push([...assembleSentence(layout, blocks)]);
  }
  await loader.close();
  return out;
}

async function filesOf(dir: string): Promise<Map<string, Uint8Array>> {
  const m = new Map<string, Uint8Array>();
  for await (const e of Deno.readDir(dir)) {
    if (e.isFile) m.set(e.name, await Deno.readFile(join(dir, e.name)));
  }
  return m;
}

function sameFiles(a: Map<string, Uint8Array>, b: Map<string, Uint8Array>) {
  const ka = [...a.keys()].sort().join(), kb = [...b.keys()].sort().join();
  if (ka !== kb) throw new Error(`files differ: [${ka}] vs [${kb}]`);
  for (const [k, x] of a) {
    const y = b.get(k)!;
    if (x.length !== y.length || x.some((v, i) => v !== y[i])) throw new Error(`${k} differs`);
  }
}

function eq(a: unknown, b: unknown, msg = "") {
  const x = JSON.stringify(a), y = JSON.stringify(b);
  if (x !== y) {
    throw new Error(`${msg}\n  got      ${x.slice(0, 400)}\n  expected ${y.slice(0, 400)}`);
  }
}

Deno.test("buildDataset()", async (t) => {
  const root = await Deno.makeTempDir();
  const inp: TestInputs = await writeTestInputs(join(root, "in"));
  const out = (name: string) => join(root, name);
  const cases: [string, string[], Partial<BuildOptions>][] = [
    ["sequence", [inp.frames, inp.gif], { imagesPerSentence: 4, epochs: 2 }],
    ["pairs", [inp.x, inp.y], { imagesPerSentence: 4, epochs: 2 }],
    ["colorization", [inp.images], { imagesPerSentence: 4, epochs: 2 }],
    ["inpainting", [inp.images], { imagesPerSentence: 4, epochs: 2 }],
    ["rotation", [inp.images], { imagesPerSentence: 4, epochs: 3 }],
    ["flip", [inp.images], { imagesPerSentence: 2, epochs: 1 }],
    ["invert", [inp.images], { imagesPerSentence: 2 }],
    ["zoom", [inp.images], { imagesPerSentence: 2 }],
    ["edges", [inp.images, inp.x], { imagesPerSentence: 4, epochs: 2 }],
    ["multitask", inp.modalities, { imagesPerSentence: 7, epochs: 2 }],
    ["classes", [inp.classes], { imagesPerSentence: 3, epochs: 2 }],
  ];

  for (const [kind, inputs, extra] of cases) {
    await t.step(
      `${kind}: the planned sentences exactly, each image tokenized once, in batches`,
      async () => {
        const tok = new BlockMeanTestTokenizer(R);
        const o = { kind, inputs, seed: 7, ...extra };
        const res = await build({
          ...o,
          outDir: out(kind),
          tokenizer: tok,
          shardSentences: 3,
          chunkImages: 5,
          batchImages: 4,
        });
        const want = await oracle(o);
        if (!want.length) throw new Error("the fixture gives no sentence");
        eq(await readAll(out(kind)), want, kind);
        const ix = res.index!;
        eq(ix.counts.sentences, want.length);
        eq(ix.layout.imagesPerSentence, kind === "multitask" ? 6 : extra.imagesPerSentence);
        eq(ix.tokenizer.id, tok.id);
        if (tok.batches.some((b) => b > 4)) throw new Error(`batches ${tok.batches}`);
        const distinct = new Set((await planKind(kind, inputs, o)).plan.keys).size;
        eq(tok.encoded, distinct, "each distinct image encoded once");
        if (await Deno.stat(join(out(kind), ".build")).catch(() => null)) {
          throw new Error(".build left behind");
        }
      },
    );
  }

  await t.step("sequence semantics: frames k, k+s, ... of one source", async () => {
    const got = await readAll(out("sequence"));
    const frameRows = got.filter((s) => s.every((v) => v < 32)); // frames folder: code = frame index
    if (!frameRows.length) throw new Error("no frame-folder sentence");
    for (const s of frameRows) {
      const frames = [0, 1, 2, 3].map((i) => s.slice(i * 4, i * 4 + 4));
      for (const f of frames) if (new Set(f).size !== 1) throw new Error(`not a solid frame: ${f}`);
      const k = frames.map((f) => f[0]);
      eq(k.map((v, i) => v - k[0] - i), [0, 0, 0, 0], `consecutive frames ${k}`);
    }
  });

  await t.step("special tokens from the reserved range", async () => {
    const o = {
      kind: "classes",
      inputs: [inp.classes],
      imagesPerSentence: 3,
      layout: { beginId: 8200, separatorId: 8201, endId: 8202 },
    };
    await build({ ...o, outDir: out("special"), tokenizer: new BlockMeanTestTokenizer(R) });
    const got = await readAll(out("special"));
    eq(got, await oracle(o));
    for (const s of got) {
      eq(s.length, 1 + 3 * 4 + 2 + 1);
      eq([s[0], s[5], s[10], s[15]], [8200, 8201, 8201, 8202]);
    }
  });

  // The colorization build the resume and abort tests stop and resume, in shards, chunks and
  // batches small enough to stop it between any two of them.
  const colorization = {
    kind: "colorization",
    inputs: [inp.images, inp.x],
    imagesPerSentence: 4,
    epochs: 3,
    seed: 1,
  };
  const colorSizes = { shardSentences: 2, chunkImages: 7, batchImages: 3 };

  await t.step("an interrupted build resumes to the same bytes, redoing nothing", async () => {
    const o = colorization, sizes = colorSizes;
    const full = new BlockMeanTestTokenizer(R);
    await build({ ...o, ...sizes, outDir: out("full"), tokenizer: full });

    const tok = new BlockMeanTestTokenizer(R);
    const dir = out("resumed");
    const r1 = await build({
      ...o,
      ...sizes,
      outDir: dir,
      tokenizer: tok,
      stopAfter: { chunks: 2 },
    });
    eq([r1.complete, tok.encoded], [false, 14], "stopped after 2 chunks");
    const r2 = await build({
      ...o,
      ...sizes,
      outDir: dir,
      tokenizer: tok,
      stopAfter: { shards: 2 },
    });
    eq([r2.complete, r2.resumed.chunks], [false, 2]);
    eq(tok.encoded, full.encoded, "no image encoded twice");
    const r3 = await build({ ...o, ...sizes, outDir: dir, tokenizer: tok });
    eq([r3.complete, r3.resumed.shards, r3.imagesEncoded], [true, 2, 0]);
    sameFiles(await filesOf(dir), await filesOf(out("full")));

    const r4 = await build({ ...o, ...sizes, outDir: dir, tokenizer: tok });
    eq([r4.alreadyComplete, r4.imagesEncoded], [true, 0], "a finished build is not redone");
  });

  await t.step(
    "an aborted build (signal) resumes to the same bytes; a corrupt shard is redone",
    async () => {
      const o = colorization, sizes = colorSizes;
      const dir = out("aborted");
      const ac = new AbortController();
      const tok = new BlockMeanTestTokenizer(R);
      let err: unknown;
      try {
        await build({
          ...o,
          ...sizes,
          outDir: dir,
          tokenizer: tok,
          signal: ac.signal,
          onProgress: (p) => p.imagesDone >= 9 && ac.abort(),
        }); // deno-fmt-ignore
      } catch (e) {
      err = e;
    }
      if (!(err instanceof DOMException) || err.name !== "AbortError") {
        throw new Error(
          `expected AbortError, got ${err}`,
        );
      }
      await build({ ...o, ...sizes, outDir: dir, tokenizer: tok, stopAfter: { shards: 3 } });
      // Damage a finished shard: it is detected and rebuilt from the code cache.
      const f = join(dir, "shard-00001.bin");
      const b = await Deno.readFile(f);
      b[0] ^= 1;
      await Deno.writeFile(f, b);
      await build({ ...o, ...sizes, outDir: dir, tokenizer: tok });
      sameFiles(await filesOf(dir), await filesOf(out("full")));
    },
  );

  await t.step(
    "resume verifies codes.bin in bounded pieces; a damaged chunk is redone",
    async () => {
      // crc32Range: any piece size gives the CRC of the range; a short file gives null.
      const f = join(root, "crc.bin");
      const bytes = Uint8Array.from({ length: 1000 }, (_, i) => (i * 2654435761) >>> 24);
      await Deno.writeFile(f, bytes);
      const fh = await Deno.open(f);
      for (const chunkBytes of [1, 7, 800, 4096]) {
        eq(await crc32Range(fh, 100, 800, { chunkBytes }), crc32(bytes.subarray(100, 900)));
      }
      eq(await crc32Range(fh, 900, 200), null, "past the end");
      fh.close();

      const dir = out("damaged");
      const tok = new BlockMeanTestTokenizer(R);
      await build({
        ...colorization,
        ...colorSizes,
        outDir: dir,
        tokenizer: tok,
        stopAfter: { chunks: 3 },
      });
      const codes = join(dir, ".build", "codes.bin");
      const b = await Deno.readFile(codes);
      b[7 * 4 * 2 + 5] ^= 1; // chunk 1 (7 images x 4 codes x 2 bytes per chunk)
      await Deno.writeFile(codes, b);
      const r = await build({ ...colorization, ...colorSizes, outDir: dir, tokenizer: tok });
      eq(r.resumed.chunks, 1, "chunk 0 kept, chunks 1.. redone");
      eq(tok.encoded, 21 + (36 - 7), "chunks 1 and 2 encoded again");
      sameFiles(await filesOf(dir), await filesOf(out("full")));
    },
  ); // deno-fmt-ignore

  await t.step(
    "interrupted at any point (scanning, hashing, verifying, encoding, writing): resumable, same bytes",
    async () => {
      const PHASES = [
        "scanning",
        "checking the input files",
        "verifying the finished work",
        "encoding images",
        "writing shards",
        "writing the index",
      ];
      /** A signal that turns aborted at its `k`-th check (counts checks when k = Infinity). */
      const abortAt = (k: number) => {
        let n = 0;
        const signal = {
          get aborted() {
            return ++n >= k;
          },
          addEventListener() {},
          removeEventListener() {},
        } as unknown as AbortSignal;
        return { signal, checks: () => n };
      };
      const run = (dir: string, extra: Partial<BuildOptions> = {}) =>
        build({
          ...colorization,
          ...colorSizes,
          outDir: dir,
          tokenizer: new BlockMeanTestTokenizer(R),
          ...extra,
        });
      // Every run below resumes a build stopped after 2 chunks (so it has finished work to verify).
      const stoppedBuild = (dir: string) => run(dir, { stopAfter: { chunks: 2 } });
      const counter = abortAt(Infinity);
      await stoppedBuild(out("count-checks"));
      await run(out("count-checks"), { signal: counter.signal });
      const total = counter.checks();
      if (total < 60) throw new Error(`only ${total} checks`);
      const template = out("abort-template");
      await stoppedBuild(template);
      const firstOf = new Map<string, number>();
      for (let k = 1; k <= total; k++) {
        const dir = out(`abort-at-${k}`);
        await Deno.mkdir(join(dir, ".build"), { recursive: true });
        for (const f of ["state.json", "codes.bin"]) {
          await Deno.copyFile(join(template, ".build", f), join(dir, ".build", f));
        }
        let err: unknown = null;
        try {
          await run(dir, { signal: abortAt(k).signal });
        } catch (e) {
          err = e;
        }
        if (!(err instanceof DOMException) || err.name !== "AbortError") {
          throw new Error(`abort at check ${k}/${total}: expected an AbortError, got ${err}`);
        }
        const m = err.message.match(
          new RegExp(
            `^build interrupted while (${PHASES.join("|")})\\b.*; ` +
              "finished chunks and shards are kept: run the same build again to resume$",
          ),
        );
        if (!m) throw new Error(`abort at check ${k}: message "${err.message}"`);
        const first = !firstOf.has(m[1]);
        if (first) firstOf.set(m[1], k);
        for await (const e of Deno.readDir(dir)) {
          if (e.name.endsWith(".tmp")) throw new Error(`abort at check ${k}: ${e.name} left`);
          if (e.name === "index.json") throw new Error(`abort at check ${k}: index written`);
        }
        // Resume (the first interruption of each phase, and every 5th).
        if (first || k % 5 === 0 || k === total) {
          const r = await run(dir);
          eq(r.resumed.chunks >= 2, true, `abort at ${k}: finished chunks kept`);
          sameFiles(await filesOf(dir), await filesOf(out("full")));
        }
        await Deno.remove(dir, { recursive: true });
      }
      eq([...firstOf.keys()], PHASES, "every phase, in order");
    },
  );

  await t.step("abort while writing shards: the finished shards are kept, not redone", async () => {
    const dir = out("abort-writing");
    const ac = new AbortController();
    let err: unknown = null;
    try {
      await build({
        ...colorization,
        ...colorSizes,
        outDir: dir,
        tokenizer: new BlockMeanTestTokenizer(R),
        signal: ac.signal,
        onProgress: (p) => p.phase === "assemble" && p.shardsDone === 2 && ac.abort(),
      });
    } catch (e) {
      err = e;
    }
    if (!(err instanceof DOMException) || !/interrupted while writing shards/.test(err.message)) {
      throw new Error(`expected an interruption while writing shards, got ${err}`);
    }
    const names = [...(await filesOf(dir)).keys()].sort();
    eq(names, ["shard-00000.bin", "shard-00001.bin"]);
    // Temp files of a build killed outright (a second Ctrl-C) go on the next run.
    await Deno.writeTextFile(join(dir, "shard-00002.bin.4242.tmp"), "partial");
    await Deno.writeTextFile(join(dir, ".build", "state.json.4242.tmp"), "{");
    const tok = new BlockMeanTestTokenizer(R);
    const r = await build({ ...colorization, ...colorSizes, outDir: dir, tokenizer: tok });
    eq([r.resumed.shards, r.imagesEncoded, tok.encoded], [2, 0, 0]);
    sameFiles(await filesOf(dir), await filesOf(out("full")));
  });

  await t.step("a resume after an input file changed (size or mtime) is refused", async () => {
    const src = join(root, "changing");
    await Deno.mkdir(src);
    for (let i = 0; i < 9; i++) {
      await Deno.copyFile(join(inp.images, `i${i}.png`), join(src, `i${i}.png`));
    }
    const o = { kind: "invert", inputs: [src], imagesPerSentence: 2, chunkImages: 3 };
    const dir = out("changing");
    const tok = new BlockMeanTestTokenizer(R);
    await build({ ...o, outDir: dir, tokenizer: tok, stopAfter: { chunks: 1 } });
    const expectRefused = async (re: RegExp) => {
      let err: unknown = null;
      try {
        await build({ ...o, outDir: dir, tokenizer: tok });
      } catch (e) {
        err = e;
      }
      if (!(err instanceof DatasetError) || !re.test(err.message)) {
        throw new Error(`expected ${re}, got ${err}`);
      }
    };
    const unfinished =
      /\.build[\\/]state\.json: the input files changed \(size or modification time\) since this unfinished build started, so resuming would mix codes of old and new files \(pass --overwrite to start it over, or choose a fresh --out\)/;
    // Same size, new modification time.
    const f = join(src, "i4.png");
    await Deno.utime(f, 1e9, 1e9);
    await expectRefused(unfinished);
    // New content (and size), the old modification time.
    await savePng(f, makeImage(5, 3, new Float32Array(45).fill(0.25)));
    await Deno.utime(f, 1e9, 1e9);
    await expectRefused(unfinished);
    const r = await build({ ...o, outDir: dir, tokenizer: tok, overwrite: true });
    eq([r.complete, r.resumed.chunks], [true, 0]);
    await Deno.utime(f, 2e9, 2e9);
    await expectRefused(
      /index\.json: the input files changed \(size or modification time\) since this dataset was built \(pass --overwrite to rebuild it, or choose a fresh --out\)/,
    );
  }); // deno-fmt-ignore

  await t.step("images/s and ETA measure encoding only (not planning or verifying)", async () => {
    // A clock that jumps 500 s after the start (a slow scan) and moves 1 s per tokenizer batch.
    let calls = 0, t1 = 0;
    const clock = () => (calls++ === 0 ? 0 : 5e5 + t1);
    const inner = new BlockMeanTestTokenizer(R);
    const tok = Object.assign(Object.create(inner), {
      encode: (imgs: never[]) => {
        t1 += 1000;
        return inner.encode(imgs);
      },
    });
    const seen: BuildProgress[] = [];
    const r = await build({
      ...colorization,
      ...colorSizes,
      outDir: out("rate"),
      tokenizer: tok,
      clock,
      onProgress: (p) => {
        if (p.phase !== "encode") return;
        const batches = t1 / 1000;
        eq(p.imagesPerSec, p.imagesDone / batches, `rate after ${batches} batches`);
        eq(p.etaSec, (p.imagesTotal - p.imagesDone) / p.imagesPerSec, "eta");
        seen.push(p);
      },
    });
    eq(seen.length > 5, true, "progress reported");
    eq(seen.at(-1)!.imagesDone, 36);
    eq([r.encodeSeconds, r.seconds], [t1 / 1000, 500 + t1 / 1000]);
  });

  await t.step("edges: the Sobel magnitude of the gray image, exactly", () => {
    const g = 0.2989 + 0.587 + 0.114; // gray of white
    const close = (got: Float32Array, want: number[], what: string) => {
      want.forEach((w, i) => {
        if (Math.abs(got[i] - w) > 1e-6) throw new Error(`${what}[${i}]: ${got[i]} != ${w}`);
      });
    };
    // A unit step between columns 2 and 3 of a 6x2 image: 1 * g on both sides of it.
    const step = makeImage(6, 2);
    for (let c = 0; c < 3; c++) {
      for (let y = 0; y < 2; y++) step.data.fill(1, c * 12 + y * 6 + 3, c * 12 + y * 6 + 6);
    }
    const e = sobelEdges(step);
    eq([e.width, e.height], [6, 2]);
    for (let c = 0; c < 3; c++) {
      close(
        e.data.subarray(c * 12, c * 12 + 12),
        [0, 0, g, g, 0, 0, 0, 0, g, g, 0, 0],
        `step c${c}`,
      );
    }
    // One red pixel in the middle of 3x3 (gray 0.2989): borders replicated.
    const dot = makeImage(3, 3);
    dot.data[4] = 1;
    const r = 0.2989, d = (Math.SQRT2 / 4) * r;
    close(sobelEdges(dot).data.subarray(0, 9), [d, r / 2, d, r / 2, 0, r / 2, d, r / 2, d], "dot");
    // A bright corner (right column and bottom row): gx = gy = 3g at the centre, clipped to 1.
    const corner = makeImage(3, 3);
    for (let c = 0; c < 3; c++) for (const k of [2, 5, 6, 7, 8]) corner.data[c * 9 + k] = 1;
    eq(sobelEdges(corner).data[4], 1, "clipped");
    // In a build: [image, edges(image)] pairs.
    const img = makeImage(32, 32);
    const key = 5 * 16 + 10;
    close(
      renderVariant(img, key, { resolution: 32, seed: 0 }).data,
      new Array(3 * 32 * 32).fill(0),
      "black has no edges",
    );
  }); // deno-fmt-ignore

  await t.step("the number of decoding workers does not change the bytes", async () => {
    const o = {
      kind: "rotation",
      inputs: [inp.images, inp.x, inp.gif],
      imagesPerSentence: 4,
      epochs: 2,
      seed: 2,
    };
    for (const w of [0, 3]) {
      await build({
        ...o,
        outDir: out(`workers${w}`),
        tokenizer: new BlockMeanTestTokenizer(R),
        workers: w,
        batchImages: 5,
      });
    }
    sameFiles(await filesOf(out("workers0")), await filesOf(out("workers3")));
    eq(await readAll(out("workers3")), await oracle(o));
  });

  await t.step(
    "another build into the same folder is refused; --overwrite replaces it",
    async () => {
      const tok = new BlockMeanTestTokenizer(R);
      let msg = "";
      try {
        await build({
          kind: "invert",
          inputs: [inp.images],
          imagesPerSentence: 2,
          outDir: out("full"),
          tokenizer: tok,
        });
      } catch (e) {
        msg = (e as Error).message;
      }
      if (!/holds a different dataset.*--overwrite/.test(msg)) throw new Error(msg);
      const r = await build({
        kind: "invert",
        inputs: [inp.images],
        imagesPerSentence: 2,
        outDir: out("full"),
        tokenizer: tok,
        overwrite: true,
      }); // deno-fmt-ignore
      eq(r.index!.provenance.kind, "invert");
    },
  );

  await t.step("--part I/N: disjoint parts that combine into the whole build", async () => {
    const o = {
      kind: "pairs",
      inputs: [inp.x, inp.y, inp.y, inp.x],
      imagesPerSentence: 2,
      epochs: 2,
      seed: 3,
    };
    await build({
      ...o,
      outDir: out("whole"),
      tokenizer: new BlockMeanTestTokenizer(R),
      shardSentences: 4,
    });
    const whole = await readAll(out("whole"));
    const ranges: number[][] = [];
    for (const i of [3, 1, 2]) {
      const r = await build({
        ...o,
        part: [i, 3],
        outDir: out(`part${i}`),
        tokenizer: new BlockMeanTestTokenizer(R),
        shardSentences: 4,
      }); // deno-fmt-ignore
      ranges[i] = r.index!.provenance.sentenceRange as number[];
    }
    eq([ranges[1][0], ranges[1][1] === ranges[2][0], ranges[2][1] === ranges[3][0], ranges[3][1]], [
      0,
      true,
      true,
      whole.length,
    ]);
    let msg = "";
    try {
      await combineDatasets([out("part1"), out("part3")], out("combined"));
    } catch (e) {
      msg = (e as Error).message;
    }
    if (!/part 2\/3 of the same build is missing/.test(msg)) throw new Error(msg);
    const ix = await combineDatasets([out("part3"), out("part1"), out("part2")], out("combined"));
    eq(await readAll(out("combined")), whole, "parts 1..3 = the whole build, in order");
    eq(ix.counts.sentences, whole.length);
    // Shards are referenced, not copied: each record names its part's folder (explicit in
    // "datasets") and a bare file name inside it.
    eq(ix.datasets, ["../part1", "../part2", "../part3"]);
    if (!ix.shards.every((s) => s.dataset !== undefined && /^shard-\d+\.bin$/.test(s.file))) {
      throw new Error("shards are referenced, not copied");
    }
    let copied = 0;
    for await (const e of Deno.readDir(out("combined"))) if (e.name.endsWith(".bin")) copied++;
    eq(copied, 0);
    // Mixtures: datasets of different kinds combine too (variable images per sentence).
    const mix = await combineDatasets([out("combined"), out("special")], out("mixture")).catch((
      e,
    ) => e);
    if (!(mix instanceof Error) || !/layout/.test(mix.message)) {
      throw new Error("special-token layouts must not mix");
    }
    const mix2 = await combineDatasets([out("combined"), out("multitask")], out("mixture"));
    eq([mix2.layout.imagesPerSentence, mix2.counts.sentences], [
      0,
      whole.length + (await readAll(out("multitask"))).length,
    ]);
  });

  const ffmpeg = await ffmpegAvailable();
  await t.step({
    name: "sequence from a video (ffmpeg), streamed, matches the image package's decoder",
    ignore: !ffmpeg,
    fn: async () => {
      const video = join(root, "clip.avi");
      const gen = await new Deno.Command("ffmpeg", {
        args: [
          "-v",
          "error",
          "-f",
          "lavfi",
          "-i",
          "testsrc=size=48x36:rate=10:duration=4",
          "-c:v",
          "mjpeg",
          "-q:v",
          "3",
          video,
        ],
        stderr: "piped",
      }).output(); // deno-fmt-ignore
      if (!gen.success) throw new Error(new TextDecoder().decode(gen.stderr));
      const tok = new BlockMeanTestTokenizer(R);
      // 40 frames, stride 3, 4 images: span 10, 4 windows per epoch.
      const o = {
        kind: "sequence",
        inputs: [video],
        imagesPerSentence: 4,
        stride: 3,
        epochs: 2,
        seed: 5,
      };
      await build({ ...o, outDir: out("video"), tokenizer: tok, batchImages: 5 });
      const got = await readAll(out("video"));
      const frames = await decodeVideo(video, { width: R, height: R });
      eq(frames.length, 40);
      const { plan } = await planKind("sequence", [video], o);
      eq(got.length, plan.count);
      eq(plan.count, 8);
      const want = [];
      for (let s = 0; s < plan.count; s++) {
        const blocks = [...plan.keys.subarray(s * 4, s * 4 + 4)].map((k) =>
          tok.encodeOne(frames[keyItem(k)])
        );
        want.push([
          ...assembleSentence(makeLayout({ tokensPerImage: 4, imagesPerSentence: 4 }), blocks),
        ]);
      }
      eq(got, want);
    },
  });

  await t.step({
    name: "a video ffmpeg cannot decode stops the build with ffmpeg's words, naming it",
    ignore: !ffmpeg,
    fn: async () => {
      const dir = join(root, "bad-video");
      await Deno.mkdir(dir);
      const bad = await writeCorruptAvi(join(dir, "broken.avi"), { frameCount: false });
      const counted = await writeCorruptAvi(join(root, "broken-counted.avi"), { frames: 20 });
      const tok = new BlockMeanTestTokenizer(R);
      for (
        const [input, re] of [
          [
            dir,
            /broken\.avi: undecodable video: ffmpeg exit 1 while counting frames \(.*(No JPEG data|Invalid data)/,
          ],
          [
            counted,
            /broken-counted\.avi: undecodable video: ffmpeg exit 1 before frame 0 of 20 probed \(.*(No JPEG data|Invalid data)/,
          ],
        ] as const
      ) {
        let msg = "";
        try {
          await build({
            kind: "sequence",
            inputs: [input],
            imagesPerSentence: 4,
            stride: 1,
            outDir: out("bad-video"),
            tokenizer: tok,
            overwrite: true,
          });
        } catch (e) {
          msg = (e as Error).message;
        }
        if (!re.test(msg) || !msg.includes(input === dir ? bad : counted)) {
          throw new Error(`expected ${re}, got "${msg}"`);
        }
      }
    },
  }); // deno-fmt-ignore

  await t.step("inputs that cannot be used are clear errors", async () => {
    const tok = new BlockMeanTestTokenizer(R);
    const cases: [string, string[], RegExp][] = [
      ["pairs", [inp.x], /two by two/],
      ["sequence", [join(root, "nope")], /nope: input not found/],
      ["sequence", [join(inp.images, "i0.png")], /not a video .* GIF or folder of frames/],
      ["classes", [inp.images], /no class sub-folders/],
      ["mystery", [inp.images], /unknown kind "mystery"/],
    ];
    for (const [kind, inputs, re] of cases) {
      let msg = "";
      try {
        await build({ kind, inputs, outDir: out("err"), tokenizer: tok });
      } catch (e) {
        msg = (e as Error).message;
      }
      if (!re.test(msg)) throw new Error(`${kind}: expected ${re}, got "${msg}"`);
    }
  });

  await Deno.remove(root, { recursive: true });
});
