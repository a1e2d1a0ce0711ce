/**
 * The `model` and `eval` commands end to end, as a user runs them: a training process interrupted
 * with SIGINT saves a checkpoint and exits 130 (SIGTERM: the same, exit 143), `--resume` finishes
 * the run and the loss chart is drawn, `eval --json` scores the result; a diverging run stops
 * without saving poisoned checkpoints and resumes with a lower --lr; a second run on a folder in
 * use is refused; and the usage errors, in process.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { configToHf } from "@lvm/transformer";
import { assert, assertEquals, MINI, patternDataset, patternSentences } from "@lvm/train/testing";
import { writeTestDataset } from "@lvm/sentence/testing";
import { main } from "./main.ts";

const MAIN = new URL("./main.ts", import.meta.url).pathname;

/** Command-line words: each part split at spaces (the temp paths here have none). */
const w = (...parts: (string | number)[]) => parts.flatMap((p) => String(p).split(" "));

/** Spawns the CLI; `onStderr` sees each stderr line as it arrives. */
async function cli(args: string[], onStderr?: (line: string, child: Deno.ChildProcess) => void) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const err: string[] = [];
  const readErr = (async () => {
    let buf = "";
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let i;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        err.push(line);
        onStderr?.(line, child);
      }
    }
    if (buf) err.push(buf);
  })();
  const out = new TextDecoder().decode(await new Response(child.stdout).arrayBuffer());
  await readErr;
  const { code } = await child.status;
  return { code, out, err: err.join("\n") };
}

Deno.test("train model / eval (CLI)", async (t) => {
  const { root, data } = await patternDataset(48, 16);
  const config = join(root, "mini.json");
  await Deno.writeTextFile(config, JSON.stringify(configToHf(MINI)));
  const out = join(root, "run");
  const jsonLog = join(root, "log.jsonl");
  let stoppedAt = 0;

  await t.step("Ctrl-C saves a checkpoint and exits 130", async () => {
    let sent = false;
    const r = await cli([
      ...w("model --data", data, "--config", config, "--out", out, "--json-log", jsonLog),
      ...w("--steps 500 --batch 2 --seq 16 --lr 1e-2 --warmup 1 --log-every 1"),
      ...w("--eval-every 0 --save-every 0"),
    ], (line, child) => {
      if (!sent && /step 2\/500/.test(line)) {
        sent = true;
        child.kill("SIGINT");
      }
    });
    assertEquals(r.code, 130, r.err);
    assert(/grad norm [\d.]+ · [\d,]+ tokens\/s · elapsed .* · ETA /.test(r.err), r.err);
    const m = /interrupted at step (\d+); checkpoint (\S+);/.exec(r.err);
    assert(m, r.err);
    stoppedAt = Number(m[1]);
    assert(stoppedAt >= 2 && stoppedAt < 500, `stopped at ${stoppedAt}`);
    assertEquals((await Deno.readTextFile(join(out, "latest"))).trim(), `checkpoint-${stoppedAt}`);
  });

  await t.step("--resume continues the run to --steps", async () => {
    const steps = stoppedAt + 2;
    const r = await cli(w("model --out", out, "--resume --steps", steps, "--json-log", jsonLog));
    assertEquals(r.code, 0, r.err);
    assert(
      r.err.includes(`resumed ${join(out, `checkpoint-${stoppedAt}`)} at step ${stoppedAt}`),
      r.err,
    );
    assert(r.out.includes(`trained ${steps} steps`), r.out);
    const lines = (await Deno.readTextFile(jsonLog)).trim().split("\n").map((l) => JSON.parse(l));
    const trainSteps = lines.filter((l) => l.type === "train").map((l) => l.step);
    assertEquals(trainSteps, Array.from({ length: steps }, (_, i) => i + 1));
    assert(lines.every((l) => l.type !== "train" || Number.isFinite(l.loss)), "finite losses");
    assertEquals(lines.filter((l) => l.type === "save").map((l) => l.step), [stoppedAt, steps]);
    // The loss chart beside the checkpoints, a PNG; the run released its lock.
    const png = await Deno.readFile(join(out, "loss.png"));
    assertEquals(Array.from(png.subarray(1, 4)), [0x50, 0x4e, 0x47]);
    assert(!existsSync(join(out, "train.lock")), "lock left behind");
  });

  await t.step(
    "a second run on a folder in use is refused; SIGTERM saves, exits 143; the run resumes",
    async () => {
      const run = join(root, "term");
      const held: { second?: Promise<{ code: number; text: string }> } = {};
      let pid = 0;
      const r = await cli([
        ...w("model --data", data, "--config", config, "--out", run),
        ...w("--steps 500 --batch 2 --seq 16 --lr 1e-2 --warmup 1 --log-every 1"),
        ...w("--eval-every 0 --save-every 0"),
      ], (line, child) => {
        if (!held.second && /step 2\/500/.test(line)) {
          pid = child.pid;
          // While it trains, another run on the same --out (in this process) must be refused and
          // leave it alone; then SIGTERM stops the first.
          held.second = (async () => {
            const lines: string[] = [];
            const err = console.error;
            console.error = (...a: unknown[]) => lines.push(a.join(" "));
            try {
              const args = w("model --data", data, "--config", config, "--out", run);
              const code = await main([...args, ...w("--steps 3 --seq 16 --quiet")]);
              return { code, text: lines.join("\n") };
            } finally {
              console.error = err;
              child.kill("SIGTERM");
            }
          })();
        }
      });
      assert(held.second, r.err);
      const refused = await held.second;
      assertEquals(refused.code, 1, refused.text);
      assert(refused.text.includes(`this run folder is in use by pid ${pid} on `), refused.text);
      assertEquals(r.code, 143, r.err);
      assert(r.err.includes("terminate signal: finishing this step and saving"), r.err);
      const m = /interrupted at step (\d+); checkpoint (\S+);/.exec(r.err);
      assert(m, r.err);
      const at = Number(m[1]);
      assertEquals((await Deno.readTextFile(join(run, "latest"))).trim(), `checkpoint-${at}`);
      assert(!existsSync(join(run, "train.lock")), "lock left behind");
      const quiet = "--quiet";
      assertEquals(await main(w("model --out", run, "--resume --steps", at + 1, quiet)), 0);
      assertEquals((await Deno.readTextFile(join(run, "latest"))).trim(), `checkpoint-${at + 1}`);
    },
  );

  await t.step("eval --json prints loss, perplexity, tokens and image_perplexity", async () => {
    const r = await cli(w("eval --model", out, "--data", data, "--split all --seq 16 --json"));
    assertEquals(r.code, 0, r.err);
    const j = JSON.parse(r.out);
    assertEquals(j.tokens, 48 * 16 - 1);
    assert(j.loss > 0 && j.loss < Math.log(8292), `loss ${j.loss}`);
    assert(Math.abs(j.perplexity - Math.exp(j.loss)) < 1e-6 * j.perplexity, "perplexity");
    // Sentences of 16 tokens = 8 two-token images: every one is an example.
    assertEquals([j.examples, j.image_tokens, j.skipped], [48, 2, 0]);
    assert(j.image_perplexity >= Math.exp(j.image_nll) * (1 - 1e-9), "mean of exp >= exp of mean");
  });

  await t.step("--preset takes the dataset's vocabulary unless --preset-vocab", async () => {
    // Codes 0..1599 + 100 reserved ids: the pattern's ids (100..1543) are all codes.
    const small = join(root, "small-vocab");
    await writeTestDataset(small, patternSentences(8, 16), 8, 1700, 1600);
    const config = async (dir: string) =>
      JSON.parse(await Deno.readTextFile(join(dir, "checkpoint-1", "config.json")));
    const common = "--steps 1 --batch 1 --seq 16 --eval-every 0 --quiet";
    const a = join(root, "vocab-data"), b = join(root, "vocab-preset");
    assertEquals(await main(w("model --data", small, "--preset tiny --out", a, common)), 0);
    const ca = await config(a);
    assertEquals([ca.vocab_size, ca.image_codes, ca.hidden_size], [1700, 1600, 128]);
    assertEquals(
      await main(w("model --data", small, "--preset tiny --preset-vocab --out", b, common)),
      0,
    );
    const cb = await config(b);
    assertEquals([cb.vocab_size, cb.image_codes], [8292, 8192]);
  });

  await t.step("a diverging run keeps its good checkpoints; --resume --lr continues", async () => {
    // The issue's repro (on the 2-layer model): lr 30, the loss read every 12 steps, a save
    // every 2.
    const run = join(root, "diverge");
    const lines: string[] = [];
    const err = console.error;
    console.error = (...a: unknown[]) => lines.push(a.join(" "));
    let code;
    try {
      code = await main([
        ...w("model --data", data, "--config", config, "--out", run, "--steps 24 --save-every 2"),
        ...w("--seq 128 --batch 1 --log-every 12 --eval-every 0 --lr 30 --warmup 12 --quiet"),
      ]);
    } finally {
      console.error = err;
    }
    const text = lines.join("\n");
    assertEquals(code, 1, text);
    const m = /training diverged: .* The last good checkpoint is (\S+) \(latest points at it\)/
      .exec(text);
    assert(m, text);
    assert(text.includes("--resume takes a new --lr"), text);
    const latest = (await Deno.readTextFile(join(run, "latest"))).trim();
    assertEquals(join(run, latest), m[1]);
    assert(!existsSync(join(run, "train.lock")), "lock left behind");
    // Every checkpoint left is finite.
    for (const e of Deno.readDirSync(run)) {
      if (!e.name.startsWith("checkpoint-")) continue;
      const st = JSON.parse(await Deno.readTextFile(join(run, e.name, "trainer_state.json")));
      const losses = st.log_history.map((h: { loss: number }) => h.loss);
      assert(losses.every((l: unknown) => typeof l === "number" && Number.isFinite(l)), e.name);
    }
    // --resume takes a new learning rate (and records it).
    const step = Number(latest.split("-")[1]);
    console.error = (...a: unknown[]) => lines.push(a.join(" "));
    let r;
    try {
      r = await main(w("model --out", run, "--resume --lr 1e-3 --steps", step + 1, "--quiet"));
    } finally {
      console.error = err;
    }
    assert(r === 0 || r === 1, `exit ${r}`); // weights lr 30 left finite may still diverge
    const now = (await Deno.readTextFile(join(run, "latest"))).trim();
    const st = JSON.parse(await Deno.readTextFile(join(run, now, "trainer_state.json")));
    if (r === 0) assertEquals([now, st.config.schedule.lr], [`checkpoint-${step + 1}`, 1e-3]);
    else assertEquals(now, latest);
  });

  await t.step(
    "a run folder in use by a live process is refused; a dead one's lock is not",
    async () => {
      const run = join(root, "locked");
      await Deno.mkdir(run);
      const lock = (pid: number) =>
        Deno.writeTextFile(
          join(run, "train.lock"),
          JSON.stringify({ pid, host: Deno.hostname(), started: "2026-12-03T10:00:00Z" }),
        );
      await lock(1); // a live process (init)
      const lines: string[] = [];
      const err = console.error;
      console.error = (...a: unknown[]) => lines.push(a.join(" "));
      const args = w("model --data", data, "--config", config, "--out", run, "--steps 1 --seq 16");
      let code;
      try {
        code = await main([...args, "--quiet"]);
      } finally {
        console.error = err;
      }
      assertEquals(code, 1, lines.join("\n"));
      assert(
        lines.join("\n").includes(`${run}: this run folder is in use by pid 1 on `),
        lines.join(),
      );
      assert(!existsSync(join(run, "checkpoint-1")), "the refused run wrote a checkpoint");
      // A lock whose process is gone (an exited child's pid) is taken over.
      const child = new Deno.Command(Deno.execPath(), { args: ["eval", "0"] }).spawn();
      await child.status;
      await lock(child.pid);
      assertEquals(await main([...args, "--quiet"]), 0);
      assert(existsSync(join(run, "checkpoint-1")) && !existsSync(join(run, "train.lock")), "run");
    },
  );

  await t.step("usage errors exit 2 and say what to do", async () => {
    const quiet = console.error;
    const lines: string[] = [];
    console.error = (...a: unknown[]) => lines.push(a.join(" "));
    try {
      const said = (text: string) => assert(lines.join("\n").includes(text), lines.join("\n"));
      assertEquals(await main(w("model --data", data, "--steps 3")), 2);
      said("--out DIR is required");
      assertEquals(await main(w("model --out", join(root, "none"), "--resume")), 2);
      said("holds no checkpoint");
      assertEquals(await main(w("model --out", out, "--resume --seed 1")), 2);
      said("--seed cannot change");
      assertEquals(await main(w("model --out", join(root, "x"), "--data", data, "--steps 0")), 2);
      said("--steps 0: expected >= 1");
      assertEquals(await main(w("model --out", root, "--data", data, "--steps 2 --preset no")), 2);
      said('Unknown model preset "no"');
      assertEquals(await main(w("eval --model", join(root, "none"), "--data", data)), 2);
      said("holds no config.json and no checkpoint");
      assertEquals(
        await main(w("model --data", data, "--config", config, "--out", out, "--steps 3")),
        2,
      );
      said("pass --resume to continue that run or --overwrite");
    } finally {
      console.error = quiet;
    }
  });
  await Deno.remove(root, { recursive: true });
});
