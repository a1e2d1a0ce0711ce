/**
 * `deno task bench [--json] [--filter TEXT] [--reps N] [--torch]`: runs every case in tools/bench/*.ts
 * on this machine's adapter. `--torch` also runs tools/bench_torch.py (PyTorch on the CPU, same
 * shapes, same `--filter` and `--reps`) in the same run when python3 with torch is present, and
 * prints the ratios. See {@link HELP} for the fields.
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "@lvm/gpu";
import { type BenchCase, type BenchResult, formatResult, runCase } from "./bench/_harness.ts";

const HELP = `usage: deno task bench [--json] [--filter TEXT] [--reps N] [--torch [--markdown]]

  --filter TEXT  only cases whose "name shape" contains TEXT
  --reps N       timed runs per case, best kept (default: the case's own, else 5)
  --json         one JSON object per line on stdout (log lines go to stderr)
  --torch        also run tools/bench_torch.py (PyTorch, CPU) on the same cases and compare
                 (interpreter: $PYTHON, default python3)
  --markdown     with --torch: end with the README's performance table (every case PyTorch
                 also ran: ours, PyTorch, ratio), to paste as it is

Fields: name, shape; ms = milliseconds per op (the best run's time / per); per = ops per timed
run (a run may record several small ops before its one GPU sync); run_ms = the best run's time;
gflops / gbps / per_s (+ unit) = throughput of a run's napkin-math FLOPs, bytes or items;
dispatches_per_token / dispatches_per_step = GPU dispatches of one decode step or train step; mem_mb
where a case measures memory (MiB); note = the napkin math.
With --torch, each PyTorch line is paired with ours by name + shape: ratio_vs_torch (and its alias
speed_vs_torch) = torch ms / our ms = our speed / torch's speed: > 1 means we are faster.`;

const { values } = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "boolean", default: false },
    filter: { type: "string" },
    reps: { type: "string" },
    torch: { type: "boolean", default: false },
    markdown: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}
const reps = values.reps === undefined ? undefined : Number(values.reps);
if (reps !== undefined && (!Number.isInteger(reps) || reps < 1)) {
  console.error(`--reps must be a positive integer, found ${JSON.stringify(values.reps)}`);
  Deno.exit(2);
}

const dir = new URL("./bench/", import.meta.url);
const files = [...Deno.readDirSync(dir)]
  .filter((e) => e.isFile && e.name.endsWith(".ts") && !e.name.startsWith("_"))
  .map((e) => e.name)
  .sort();
const cases: BenchCase[] = [];
for (const f of files) {
  const mod = await import(new URL(f, dir).href);
  cases.push(...(mod.benches as BenchCase[]));
}
const selected = cases.filter((c) =>
  !values.filter || `${c.name} ${c.shape}`.includes(values.filter)
);

const gpu = await getGpu();
const log = (s: string) => values.json ? console.error(s) : console.log(s);
log(`adapter: ${gpu.describe()}`);
log(`machine: ${navigator.hardwareConcurrency} logical cores, ${Deno.build.os}-${Deno.build.arch}`);
const results: BenchResult[] = [];
for (const c of selected) {
  const r = await runCase(gpu, c, reps);
  results.push(r);
  if (values.json) {
    console.log(JSON.stringify({ ...r, backend: "webgpu", adapter: gpu.describe() }));
  } else console.log(formatResult(r));
}

/** A result's headline rate as the README's table gives it: items/s, else GB/s, else GFLOP/s. */
function headline(r: BenchResult): string {
  if (r.per_s !== undefined) {
    const v = r.per_s >= 100 ? r.per_s.toFixed(0) : r.per_s.toPrecision(3);
    return `${v} ${r.unit}/s`;
  }
  if (r.gbps !== undefined) return `${r.gbps.toFixed(1)} GB/s`;
  if (r.gflops !== undefined) return `${r.gflops.toFixed(1)} GFLOP/s`;
  return `${r.ms.toFixed(2)} ms`;
}

/** The README's performance table: one row per case both sides ran, in run order. */
function markdownTable(pairs: { ours: BenchResult; torch: BenchResult; ratio: number }[]): string {
  const rows = pairs.map(({ ours, torch, ratio }) => [
    `${ours.name} ${ours.shape}`,
    headline(ours),
    headline(torch),
    `${ratio.toFixed(2)}x`,
  ]);
  const head = ["case", "ours", "PyTorch", "ratio"];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(w[i])).join(" | ")} |`;
  return [line(head), `| ${w.map((n) => "-".repeat(n)).join(" | ")} |`, ...rows.map(line)].join(
    "\n",
  );
}

if (values.torch) {
  const pairs: { ours: BenchResult; torch: BenchResult; ratio: number }[] = [];
  const script = new URL("./bench_torch.py", import.meta.url).pathname;
  const args = [
    script,
    ...(values.filter ? ["--filter", values.filter] : []),
    ...(reps !== undefined ? ["--reps", String(reps)] : []),
  ];
  try {
    // PYTHON picks the interpreter (e.g. /usr/bin/python3 where a pyenv python3 lacks torch).
    const python = Deno.env.get("PYTHON") || "python3";
    const out = await new Deno.Command(python, { args, stdout: "piped", stderr: "inherit" })
      .output();
    const lines = new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.startsWith("{"));
    for (const line of lines) {
      const t = JSON.parse(line) as BenchResult;
      // Both sides report ms per op, so the pair compares the same op even where `per` differs.
      const ours = results.find((r) => r.name === t.name && r.shape === t.shape);
      const ratio = ours && ours.ms > 0 ? +(t.ms / ours.ms).toFixed(3) : undefined;
      if (ours && ratio !== undefined) pairs.push({ ours, torch: t, ratio });
      // PyTorch's decode loop (greedy, arg-max on the CPU per token) is also the reference for
      // our GPU-sampled greedy chain of the same prompt and length: the table shows both.
      const gpuSampled = t.name === "transformer decode" &&
        results.find((r) =>
          r.name === "transformer decode gpu-sampled" && r.shape === `${t.shape} greedy`
        );
      if (gpuSampled && gpuSampled.ms > 0) {
        pairs.push({ ours: gpuSampled, torch: t, ratio: +(t.ms / gpuSampled.ms).toFixed(3) });
      }
      if (values.json) {
        console.log(
          JSON.stringify({
            ...t,
            backend: "torch",
            ratio_vs_torch: ratio,
            speed_vs_torch: ratio,
          }),
        );
      } else {
        console.log(
          `${formatResult({ ...t, name: `torch:${t.name}` })}${
            ratio !== undefined ? `  ours/torch speed ${ratio}x` : ""
          }`,
        );
      }
    }
    if (!out.success) {
      log(
        `bench_torch.py failed (is python3-torch installed for ${python}? PYTHON=... picks another)`,
      );
    }
  } catch (e) {
    log(`PyTorch comparison skipped: ${(e as Error).message}`);
  }
  if (values.markdown) {
    log(
      `\n${gpu.describe()}, ${navigator.hardwareConcurrency} logical cores; ` +
        `ratio = our speed / PyTorch's\n`,
    );
    log(markdownTable(pairs));
  }
} else if (values.markdown) {
  log("--markdown needs --torch (the table pairs each case with PyTorch's)");
}
