/**
 * The real-GPU tools, run here on whatever adapter this machine has, narrowed to seconds: the
 * tiled matmul's tile sweep (`tools/tune_tiled.ts --quick`) and `tools/gpu_check.sh` end to end
 * (one test file in each kind, two test files at once, the quick sweep, two bench filters), so a
 * rare GPU lease is not spent on a broken script. They check the plumbing and the results' shape,
 * not any speed.
 * @module
 */
import { assert, assertEquals } from "@lvm/util/testing";

const ROOT = new URL("..", import.meta.url).pathname;
const text = (b: Uint8Array) => new TextDecoder().decode(b);
const tuneTiled = (...args: string[]) =>
  new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--unstable-webgpu", "tools/tune_tiled.ts", ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();

Deno.test("tune_tiled --quick: every tile and the default, checked against the naive kernel", async () => {
  const out = await tuneTiled("--quick", "--json");
  assertEquals(out.code, 0, text(out.stderr));
  const rows = text(out.stdout).split("\n").filter((l) => l.startsWith("{")).map((l) =>
    JSON.parse(l)
  );
  // 2 shapes x (2 tiles + the default)
  assertEquals(rows.length, 6, text(out.stdout));
  for (const r of rows) {
    assert(r.rel_err < 1e-5, `${r.tile} ${r.shape}: rel_err ${r.rel_err}`);
    assert(r.ms > 0 && r.gflops > 0, JSON.stringify(r));
  }
  assertEquals(rows.filter((r) => r.default).length, 2);
  assert(/GFLOP\/s of the tiled matmul/.test(text(out.stderr)), text(out.stderr));
  const bad = await tuneTiled("--per", "0");
  assert(!bad.success && /--per must be a positive integer, got 0/.test(text(bad.stderr)));
});

Deno.test("gpu_check.sh: tests in both kinds, the sweep and the bench into one JSON file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpu_check_test" });
  try {
    const out = await new Deno.Command("bash", {
      args: ["tools/gpu_check.sh", dir],
      cwd: ROOT,
      env: {
        NO_COLOR: "1",
        DENO: Deno.execPath(),
        GPU_CHECK_TESTS: "packages/kernels/ops/rope_test.ts packages/kernels/ops/swiglu_test.ts",
        GPU_CHECK_JOBS: "2",
        GPU_CHECK_TUNE: "quick",
        GPU_CHECK_BENCH_FILTER: "crc32|add then silu",
        GPU_CHECK_PROFILE: "2",
        GPU_CHECK_WARMUP: "0.2",
        GPU_CHECK_REPS: "1",
        GPU_CHECK_ROUNDS: "2",
        GPU_CHECK_TEST_TIMEOUT: "300",
        GPU_CHECK_BENCH_TIMEOUT: "300",
      },
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(out.code, 0, text(out.stderr));
    const r = JSON.parse(await Deno.readTextFile(`${dir}/gpu_check.json`));
    assert(r.adapter && typeof r.adapter.description === "string", JSON.stringify(r.adapter));
    assertEquals(r.tests.map((t: { kind: string }) => t.kind), ["gpu", "cpu"]);
    assertEquals([r.settings.GPU_CHECK_JOBS, r.settings.GPU_CHECK_KINDS], ["2", null]);
    for (const t of r.tests) {
      assertEquals([t.exit, t.passed, t.failed], [0, 2, 0], JSON.stringify(t));
    }
    assertEquals(r.tune.length, 6);
    assertEquals(r.bench_exit, 0);
    const names = r.bench.map((b: { name: string }) => b.name);
    assert(names.includes("crc32") && names.includes("add then silu"), names.join(", "));
    // --rounds 2: each case's best of two rounds, with the rounds it kept the best of.
    assertEquals(r.bench.map((b: { rounds?: number }) => b.rounds), [2, 2]);
    assertEquals([r.settings.GPU_CHECK_REPS, r.settings.GPU_CHECK_ROUNDS], ["1", "2"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
