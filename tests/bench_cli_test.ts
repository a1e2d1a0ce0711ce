/**
 * `deno task bench`'s command line: `--rounds N` keeps each case's best round and reports the
 * slowest as `ms_worst`; bad `--rounds`/`--reps` values stop it with a message naming the flag.
 * Runs one small CPU case (crc32 over 32 MiB), so it checks the plumbing, not any speed.
 * @module
 */
import { assert, assertEquals } from "@lvm/util/testing";

const ROOT = new URL("..", import.meta.url).pathname;

async function bench(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-webgpu", "tools/bench.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
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
