/**
 * `deno task bench`'s command line: `--rounds N` keeps each case's best round and reports the
 * slowest as `ms_worst`; bad `--rounds`/`--reps` values stop it with a message naming the flag;
 * `--torch` asks PyTorch's side (here a stand-in for `bench_torch.py --serve`) for each case right
 * after ours. Runs one small CPU case (crc32 over 32 MiB), so it checks the plumbing, not any speed.
 * @module
 */
import { assert, assertEquals } from "@lvm/util/testing";

const ROOT = new URL("..", import.meta.url).pathname;

function bench(...args: string[]) {
  return benchEnv({}, ...args);
}

/** `deno task bench` with these environment variables added (e.g. PYTHON). */
async function benchEnv(env: Record<string, string>, ...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-webgpu", "tools/bench.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1", ...env },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("bench --rounds: best round kept, the slowest reported", async () => {
  const r = await bench("--filter", "crc32", "--reps", "1", "--rounds", "3", "--json");
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  assertEquals(lines.length, 1, "one line per case, after all rounds");
  const [c] = lines;
  assertEquals([c.name, c.shape, c.rounds], ["crc32", "32 MiB", 3]);
  assert(c.ms > 0 && c.ms_worst >= c.ms, `ms ${c.ms} <= ms_worst ${c.ms_worst}`);
  const progress = r.stderr.split("\n").filter((l) => /^round \d\/3: crc32/.test(l));
  assertEquals(progress.length, 3, "a progress line per round on stderr");
  // The kept result is the fastest round's: no progress line shows a lower time.
  const times = progress.map((l) => Number(/ ([\d.]+) ms/.exec(l)![1]));
  assertEquals(Math.min(...times), c.ms);
  assertEquals(Math.max(...times), c.ms_worst);
});

Deno.test("bench: a bad --rounds, --reps, --profile or --warmup names the flag", async () => {
  const bad = [["--rounds", "0"], ["--rounds", "two"], ["--reps", "1.5"], ["--profile", "0"]];
  for (const [flag, value] of bad) {
    const r = await bench("--filter", "crc32", flag, value);
    assertEquals(r.code, 2, `${flag} ${value}: ${r.stderr}`);
    assert(r.stderr.includes(`${flag} must be a positive integer`), r.stderr);
  }
  const w = await bench("--filter", "crc32", "--warmup", "soon");
  assertEquals(w.code, 2, w.stderr);
  assert(w.stderr.includes("--warmup must be a number of seconds >= 0"), w.stderr);
  // An unknown flag, or a value parseArgs cannot take: its message and the usage, exit 2.
  for (const args of [["--round", "2"], ["--reps", "-1"]]) {
    const r = await bench(...args);
    assertEquals(r.code, 2, `${args}: ${r.stderr}`);
    assert(r.stderr.includes("usage: deno task bench"), r.stderr);
  }
});

Deno.test("bench --profile N: the profiled run's slowest kernels", async () => {
  const r = await bench("--filter", "add then silu", "--reps", "1", "--profile", "1", "--json");
  assertEquals(r.code, 0, r.stderr);
  const [c] = r.stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
  assertEquals([c.name, c.profile.length], ["add then silu", 1]);
  const [k] = c.profile;
  assert(typeof k.kernel === "string" && k.kernel.length > 0, JSON.stringify(k));
  assert(k.dispatches >= 1 && k.ms >= 0 && k.ms <= c.profile_ms, JSON.stringify(c));
});

Deno.test("bench --warmup S: matmuls for S seconds before the first case", async () => {
  const r = await bench("--filter", "crc32", "--reps", "1", "--warmup", "0.3", "--json");
  assertEquals(r.code, 0, r.stderr);
  const m = r.stderr.match(/warm-up: (\d+) products of 1024\^3 in 0.3 s/);
  assert(m && Number(m[1]) >= 4, r.stderr);
  assertEquals(r.stdout.split("\n").filter((l) => l.startsWith("{")).length, 1);
});

/** A stand-in for `python3 tools/bench_torch.py --serve` (the test machine has no PyTorch). */
async function fakePython(body: string): Promise<string> {
  const path = await Deno.makeTempFile({ prefix: "fake_python_", suffix: ".sh" });
  await Deno.writeTextFile(path, `#!/usr/bin/env bash\n${body}\n`);
  await Deno.chmod(path, 0o755);
  return path;
}

Deno.test("bench --torch: each PyTorch case runs right after ours, the ratio pairs them", async () => {
  // Answers every key on stdin with a result for crc32 (ms 2.5) and nothing for the others; logs
  // each key it was asked for, so the order of the two sides shows in stderr.
  const python = await fakePython(`
[ "$2" = "--serve" ] || { echo "expected --serve, got $*" >&2; exit 3; }
while IFS= read -r key; do
  echo "asked: $key" >&2
  if [ "$key" = "crc32 32 MiB" ]; then
    echo '{"name": "crc32", "shape": "32 MiB", "ms": 2.5, "per": 1, "run_ms": 2.5}'
  fi
  echo "{\\"done\\": \\"$key\\"}"
done`);
  try {
    const { code, stdout, stderr } = await benchEnv(
      { PYTHON: python },
      ...["--filter", "crc32", "--reps", "1", "--rounds", "2", "--torch", "--json", "--markdown"],
    );
    assertEquals(code, 0, stderr);
    // Per round: ours, then PyTorch asked for the same key, then PyTorch's progress line.
    const order = stderr.split("\n").filter((l) => /^(round \d\/2: (torch:)?crc32|asked: )/.test(l))
      .map((l) => l.replace(/^round (\d)\/2: (torch:)?crc32.*/, "r$1 $2").trim());
    assertEquals(order, [
      "r1",
      "asked: crc32 32 MiB",
      "r1 torch:",
      "r2",
      "asked: crc32 32 MiB",
      "r2 torch:",
    ]);
    const lines = stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    const ours = lines.find((l) => l.backend === "webgpu");
    const torch = lines.find((l) => l.backend === "torch");
    assertEquals([torch.name, torch.shape, torch.ms], ["crc32", "32 MiB", 2.5]);
    assertEquals(torch.ratio_vs_torch, +(2.5 / ours.ms).toFixed(3));
    // Every round's time and ratio, in round order: ours from the progress lines.
    const ourRounds = stderr.split("\n").filter((l) => /^round \d\/2: crc32/.test(l))
      .map((l) => Number(/ ([\d.]+) ms/.exec(l)![1]));
    assertEquals(ours.ms_rounds, ourRounds);
    assertEquals(torch.ms_rounds, [2.5, 2.5]);
    const perRound = ourRounds.map((ms) => +(2.5 / ms).toFixed(3));
    assertEquals(torch.ratio_rounds, perRound);
    // --markdown's table (on stderr with --json) has them as its last column.
    const row = stderr.split("\n").find((l) => l.startsWith("| crc32 32 MiB"));
    assert(/\| per round +\|$/.test(stderr.split("\n").find((l) => l.startsWith("| case"))!));
    assert(row?.endsWith(`| ${perRound.map((x) => x.toFixed(2)).join(" / ")} |`), row);
  } finally {
    await Deno.remove(python);
  }
});

Deno.test("bench --torch: a PyTorch side that fails is named, ours still reported", async () => {
  const python = await fakePython(`echo "No module named torch" >&2; exit 1`);
  try {
    const { code, stdout, stderr } = await benchEnv(
      { PYTHON: python },
      ...["--filter", "crc32", "--reps", "1", "--torch", "--json"],
    );
    assertEquals(code, 0, stderr);
    assert(stderr.includes(`bench_torch.py ended (exit code 1)`), stderr);
    assert(stderr.includes(`is python3-torch installed for ${python}?`), stderr);
    const lines = stdout.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l));
    assertEquals(lines.map((l) => [l.name, l.backend]), [["crc32", "webgpu"]]);
  } finally {
    await Deno.remove(python);
  }
});
