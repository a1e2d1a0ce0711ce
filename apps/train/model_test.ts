/**
 * The `model` and `eval` commands end to end, as a user runs them: a training process interrupted
 * with SIGINT saves a checkpoint and exits 130, `--resume` finishes the run, `eval --json` scores
 * the result; and the usage errors, in process.
 */
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
  });

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
      assertEquals(await main(w("model --out", out, "--resume --lr 1")), 2);
      said("--lr cannot change");
      assertEquals(await main(w("model --out", join(root, "x"), "--data", data, "--steps 0")), 2);
      said("--steps 0: expected a value in [1,");
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
