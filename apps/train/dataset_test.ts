import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ffmpegAvailable } from "@lvm/image/fs";
import { formatJsonlLine } from "@lvm/sentence";
import { writeCorruptAvi, writeTestInputs } from "@lvm/sentence/testing";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const MAIN = "apps/train/main.ts";
const HARNESS = "apps/train/_test_tokenizer_cli.ts"; // the same CLI with the test tokenizer

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function cli(script: string, ...args: string[]): Promise<Run> {
  return await cliEnv({}, script, ...args);
}

async function cliEnv(
  env: Record<string, string>,
  script: string,
  ...args: string[]
): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", ...env },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

function expect(r: Run, code: number, re?: RegExp, where: "stdout" | "stderr" = "stderr") {
  if (r.code !== code || (re && !re.test(r[where]))) {
    throw new Error(
      `expected exit ${code}${
        re ? ` and ${where} ~ ${re}` : ""
      }, got ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`,
    );
  }
}

async function sameTree(a: string, b: string) {
  const names = async (d: string) => {
    const n: string[] = [];
    for await (const e of Deno.readDir(d)) n.push(e.name);
    return n.sort();
  };
  const na = await names(a), nb = await names(b);
  if (na.join() !== nb.join()) throw new Error(`${a} [${na}] vs ${b} [${nb}]`);
  for (const n of na) {
    const x = await Deno.readFile(join(a, n)), y = await Deno.readFile(join(b, n));
    if (x.length !== y.length || x.some((v, i) => v !== y[i])) throw new Error(`${n} differs`);
  }
}

/** A small colorization build through the test tokenizer, `epochs` passes over the inputs. */
function colorizationArgs(inputs: string[], epochs: number): string[] {
  return [
    "dataset",
    "--tokenizer",
    "test:32",
    "--kind",
    "colorization",
    "--input",
    ...inputs,
    "--images",
    "4",
    "--epochs",
    String(epochs),
    "--shard-sentences",
    "2",
    "--chunk-images",
    "6",
    "--batch",
    "4",
  ]; // deno-fmt-ignore
}

Deno.test("train dataset (CLI)", async (t) => {
  const tmp = await Deno.makeTempDir();
  const inp = await writeTestInputs(join(tmp, "in"));
  const o = (n: string) => join(tmp, n);
  const colorization = (epochs: number) => colorizationArgs([inp.images, inp.x], epochs);

  await t.step("usage errors exit 2 and say what is wrong", async () => {
    expect(await cli(MAIN), 2, /usage: deno task train <command>/);
    expect(await cli(MAIN, "fly"), 2, /unknown command "fly"/);
    expect(await cli(MAIN, "dataset"), 2, /nothing to do/);
    expect(
      await cli(MAIN, "dataset", "--stats", "a", "--export-jsonl", "b"),
      2,
      /choose one of.*export \+ stats/,
    );
    expect(
      await cli(
        MAIN,
        "dataset",
        "--kind",
        "pairs",
        "--tokenizer",
        "t",
        "--input",
        "a",
        "--out",
        "o",
        "--part",
        "0/3",
      ),
      2,
      /--part 0\/3: expected I\/N/,
    );
    expect(
      await cli(
        MAIN,
        "dataset",
        "--kind",
        "paint",
        "--tokenizer",
        "t",
        "--input",
        "a",
        "--out",
        "o",
      ),
      2,
      /--kind paint: expected one of sequence, pairs/,
    );
    expect(await cli(MAIN, "dataset", "--bogus"), 2, /Unknown option '--bogus'/);
    expect(await cli(MAIN, "dataset", "--help"), 0, /--import-jsonl FILE --out DIR/, "stdout");
  });

  await t.step(
    "--tokenizer DIR goes through @lvm/tokenizer (clear error when it cannot load)",
    async () => {
      const r = await cli(
        MAIN,
        "dataset",
        "--tokenizer",
        o("no-such-tokenizer"),
        "--kind",
        "pairs",
        "--input",
        inp.x,
        inp.y,
        "--out",
        o("x"),
      );
      expect(
        r,
        1,
        /error: \S*no-such-tokenizer[\\/]config\.json: cannot read the tokenizer config \(No such file/,
      );
    },
  );

  await t.step(
    "--import-jsonl / --export-jsonl round trip byte-exact; --stats text and --json",
    async () => {
      const lines = Array.from(
        { length: 9 },
        (_, i) => formatJsonlLine(Array.from({ length: 512 }, (_, k) => (i * 977 + k * 13) % 8192)),
      );
      await Deno.writeTextFile(o("in.jsonl"), lines.join(""));
      expect(
        await cli(
          MAIN,
          "dataset",
          "--import-jsonl",
          o("in.jsonl"),
          "--out",
          o("imp"),
          "--shard-sentences",
          "4",
        ),
        0,
        /9 sentences, 4608 tokens, 3 shards \(u16\)/,
        "stdout",
      );
      expect(
        await cli(MAIN, "dataset", "--export-jsonl", o("imp"), "--out", o("out.jsonl")),
        0,
        /9 sentences/,
        "stdout",
      );
      if ((await Deno.readTextFile(o("out.jsonl"))) !== lines.join("")) {
        throw new Error("JSONL round trip differs");
      }
      const s = await cli(MAIN, "dataset", "--stats", o("imp"));
      expect(s, 0, /sentences\s+9\s+images 18\s+tokens 4,608/, "stdout");
      const j = JSON.parse((await cli(MAIN, "dataset", "--stats", o("imp"), "--json")).stdout);
      if (j.sentences !== 9 || j.layout.imagesPerSentence !== 2 || j.origin !== "import") {
        throw new Error(JSON.stringify(j));
      }
    },
  );

  await t.step(
    "--import-jsonl with special tokens (--begin/--separator/--end): checked, round trip",
    async () => {
      // [8200] img [8201] img [8202], 3 tokens per image.
      const lines = Array.from(
        { length: 5 },
        (_, i) => formatJsonlLine([8200, i, 1, 2, 8201, 3, 4, i, 8202]),
      );
      await Deno.writeTextFile(o("sp.jsonl"), lines.join(""));
      const flags = ["--tokens-per-image", "3", "--begin", "8200", "--separator", "8201"];
      expect(
        await cli(
          MAIN,
          "dataset",
          "--import-jsonl",
          o("sp.jsonl"),
          "--out",
          o("sp"),
          ...flags,
          "--end",
          "8202",
        ),
        0,
        /5 sentences, 45 tokens, 1 shards \(u16\); special tokens begin 8200, separator 8201, end 8202/,
        "stdout",
      ); // deno-fmt-ignore
      const j = JSON.parse((await cli(MAIN, "dataset", "--stats", o("sp"), "--json")).stdout);
      if (
        j.images !== 10 || j.layout.imagesPerSentence !== 2 || j.layout.endId !== 8202 ||
        j.reservedTokens !== 15
      ) throw new Error(JSON.stringify(j));
      expect(
        await cli(MAIN, "dataset", "--export-jsonl", o("sp"), "--out", o("sp-out.jsonl")),
        0,
        /5 sentences/,
        "stdout",
      );
      if ((await Deno.readTextFile(o("sp-out.jsonl"))) !== lines.join("")) {
        throw new Error("JSONL round trip with special tokens differs");
      }
      // Without --end the last token of every line is an image code out of place.
      expect(
        await cli(MAIN, "dataset", "--import-jsonl", o("sp.jsonl"), "--out", o("sp2"), ...flags),
        1,
        /sp\.jsonl: line 1: 9 tokens is not a whole number of images under the declared layout \(3 tokens per image, begin 8200, separator 8201\)/,
      );
      expect(
        await cli(
          MAIN,
          "dataset",
          "--import-jsonl",
          o("sp.jsonl"),
          "--out",
          o("sp2"),
          "--begin",
          "12",
        ),
        2,
        /--begin: expected a reserved id in \[8192, 8292\)/,
      ); // deno-fmt-ignore
    },
  );

  await t.step("build with progress; interrupted build resumes to the same bytes", async () => {
    const args = colorization(3);
    const full = await cli(HARNESS, ...args, "--out", o("full"));
    expect(
      full,
      0,
      /wrote .*full: 27 sentences, 108 images, 432 tokens, 14 shards \(u16\)/,
      "stdout",
    );
    expect(full, 0, /\[dataset\] .*images\/s · shards \d+\/14 · ETA/);
    expect(
      await cli(HARNESS, ...args, "--out", o("part"), "--stop-after-chunks", "1"),
      3,
      /stopped early/,
    );
    expect(
      await cli(HARNESS, ...args, "--out", o("part"), "--stop-after-shards", "3"),
      3,
      /stopped early/,
    );
    expect(
      await cli(HARNESS, ...args, "--out", o("part")),
      0,
      /resumed 6 chunks, 3 shards/,
      "stdout",
    );
    await sameTree(o("part"), o("full"));
    expect(
      await cli(HARNESS, ...args, "--out", o("part")),
      0,
      /already holds this dataset/,
      "stdout",
    );
    const other = await cli(HARNESS, ...args, "--seed", "5", "--out", o("part"));
    expect(other, 1, /holds a different dataset .*--overwrite/);
    // An input changed since: refused, with what to do.
    await Deno.utime(join(inp.images, "i3.png"), 1e9, 1e9);
    expect(
      await cli(HARNESS, ...args, "--out", o("part")),
      1,
      /the input files changed \(size or modification time\) since this dataset was built \(pass --overwrite to rebuild it, or choose a fresh --out\)/,
    );
  });

  await t.step(
    "SIGTERM stops a build between steps (exit 143); the same command resumes",
    async () => {
      const args = ["run", "-A", HARNESS, ...colorization(200), "--out", o("term")];
      const child = new Deno.Command(Deno.execPath(), {
        args,
        cwd: ROOT,
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).spawn();
      const stdout = new Response(child.stdout).text();
      const dec = new TextDecoder();
      let err = "";
      const reader = child.stderr.getReader();
      // Signal once the build reports a whole chunk's codes (6 images: --chunk-images 6) written,
      // so there is something to resume however slow the machine (at the first progress line, 4
      // images in, a loaded machine stopped before the first chunk was committed), then drain.
      const encoded = () =>
        [...err.matchAll(/\[dataset\] \w+ +images (\d+)\//g)].some((m) => Number(m[1]) >= 6);
      while (!encoded()) {
        const { value, done } = await reader.read();
        if (done) break;
        err += dec.decode(value);
      }
      child.kill("SIGTERM");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        err += dec.decode(value);
      }
      const st = await child.status;
      await stdout;
      expect(
        { code: st.code, stdout: "", stderr: err },
        143,
        /SIGTERM: stopping after the current step/,
      );
      expect(
        await cli(HARNESS, ...args.slice(3)),
        0,
        /resumed \d+ chunks/,
        "stdout",
      );
    },
  );

  await t.step("--part I/N and --combine", async () => {
    const args = [
      "dataset",
      "--tokenizer",
      "test:32",
      "--kind",
      "classes",
      "--input",
      inp.classes,
      "--images",
      "2",
      "--epochs",
      "2",
      "--quiet",
    ];
    expect(await cli(HARNESS, ...args, "--out", o("whole")), 0);
    for (const i of [1, 2]) {
      expect(await cli(HARNESS, ...args, "--part", `${i}/2`, "--out", o(`p${i}`)), 0);
    }
    expect(
      await cli(MAIN, "dataset", "--combine", o("p1"), o("p2"), "--out", o("comb")),
      0,
      /no tokens copied/,
      "stdout",
    );
    await cli(MAIN, "dataset", "--export-jsonl", o("whole"), "--out", o("whole.jsonl"));
    await cli(MAIN, "dataset", "--export-jsonl", o("comb"), "--out", o("comb.jsonl"));
    const a = await Deno.readTextFile(o("whole.jsonl")),
      b = await Deno.readTextFile(o("comb.jsonl"));
    if (a !== b || a.split("\n").length < 5) {
      throw new Error("the combined parts are not the whole build");
    }
    expect(
      await cli(MAIN, "dataset", "--combine", o("p2"), "--out", o("comb2")),
      1,
      /part 1\/2 of the same build is missing/,
    );
    // A corrupt part is refused by --combine (every input shard is verified), naming the file.
    const shard = join(o("p2"), "shard-00000.bin");
    const bytes = await Deno.readFile(shard);
    bytes[0] ^= 0x01;
    await Deno.writeFile(shard, bytes);
    expect(
      await cli(MAIN, "dataset", "--combine", o("p1"), o("p2"), "--out", o("comb3")),
      1,
      new RegExp(`${shard.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: corrupt: CRC-32`),
    );
  });

  const hasFfmpeg = await ffmpegAvailable();
  await t.step({
    name: "an undecodable video is an error naming it, with ffmpeg's last lines",
    ignore: !hasFfmpeg,
    fn: async () => {
      await Deno.mkdir(o("videos"));
      const bad = await writeCorruptAvi(join(o("videos"), "broken.avi"), { frameCount: false });
      const r = await cli(
        HARNESS,
        "dataset",
        "--tokenizer",
        "test:32",
        "--kind",
        "sequence",
        "--input",
        o("videos"),
        "--out",
        o("vb"),
      ); // deno-fmt-ignore
      expect(r, 1);
      const want = `${bad}: undecodable video: ffmpeg exit 1 while counting frames (`;
      if (!r.stderr.includes(want) || !/No JPEG data found|Invalid data found/.test(r.stderr)) {
        throw new Error(`expected "${want}..." with ffmpeg's words, got\n${r.stderr}`);
      }
    },
  });
  if (!hasFfmpeg) console.warn("dataset_test: ffmpeg not found, the corrupt-video step is skipped");

  await t.step("a video without ffmpeg on PATH is a clear error", async () => {
    await Deno.writeFile(o("clip.avi"), new Uint8Array(64));
    const r = await cliEnv(
      { PATH: o("no-bin") },
      HARNESS,
      ...[
        "dataset",
        "--tokenizer",
        "test:32",
        "--kind",
        "sequence",
        "--input",
        o("clip.avi"),
        "--out",
        o("v"),
      ],
    );
    expect(r, 1, /clip\.avi: .*ffmpeg.*install ffmpeg/);
  });

  await Deno.remove(tmp, { recursive: true });
});
