/**
 * `deno task bench [--json] [--filter TEXT] [--reps N] [--rounds N] [--torch]`: runs every case in
 * tools/bench/*.ts on this machine's adapter. `--torch` also runs tools/bench_torch.py (PyTorch on
 * the CPU, same shapes and `--reps`) in the same run when python3 with torch is present, each
 * PyTorch case right after ours (tools/bench/_torch.ts), and prints the ratios. `--rounds N` runs
 * the whole list N times and keeps each case's best round, so a slow phase of a shared machine
 * does not decide a figure. See {@link HELP} for the fields.
 * @module
 */
import { parseArgs } from "node:util";
import "@lvm/gpu/pin"; // lavapipe: its compute threads one per core
import { getGpu } from "@lvm/gpu";
import {
  type BenchCase,
  type BenchResult,
  formatResult,
  runCase,
  warmUp,
} from "./bench/_harness.ts";
import { torchKey, TorchServer } from "./bench/_torch.ts";

const HELP =
  `usage: deno task bench [--json] [--filter TEXT] [--reps N] [--rounds N] [--torch [--markdown]]

  --filter TEXT  only cases whose "name shape" contains TEXT
  --reps N       timed runs per case, best kept (default: the case's own, else 5)
  --rounds N     run the whole selection N times and keep each case's best round (default 1);
                 progress lines go to stderr
  --json         one JSON object per line on stdout (log lines go to stderr)
  --torch        also run tools/bench_torch.py (PyTorch, CPU) on the same cases and compare,
                 each PyTorch case right after ours (interpreter: $PYTHON, default python3)
  --markdown     with --torch: end with the README's performance table (every case PyTorch
                 also ran: ours, PyTorch, ratio), to paste as it is
  --profile N    after timing a case, run it once more with every dispatch timed on the GPU
                 (timestamp queries) and list its N slowest kernels (profile, profile_ms);
                 on lavapipe the timestamps can miss much of a kernel's time (see the README)
  --profile-runs R  with --profile: R profiled runs, the one of least GPU time kept (a GPU's
                 clock moves between runs: one profiled run read 2x apart across cases on an H200)
  --warmup S     first keep the GPU busy for S seconds (1024^3 matmuls), so that a card idling
                 at a low clock is at its working clock for the first case (default 0)

Fields: name, shape; ms = milliseconds per op (the best run's time / per); per = ops per timed
run (a run may record several small ops before its one GPU sync); run_ms = the best run's time;
gflops / gbps / per_s (+ unit) = throughput of a run's napkin-math FLOPs, bytes or items;
dispatches_per_token / dispatches_per_step = GPU dispatches of one decode step or train step; mem_mb
where a case measures memory (MiB); note = the napkin math; with --rounds N > 1, rounds = N and
ms_worst = the slowest round's ms (the spread a single run could have shown) and ms_rounds = each
round's ms in order; with --profile N,
profile_ms = the GPU time of the profiled run's dispatches and profile = its N slowest kernels
({kernel: the pipeline's key, dispatches, ms}).
With --torch, each PyTorch line is paired with ours by name + shape: ratio_vs_torch (and its alias
speed_vs_torch) = torch ms / our ms = our speed / torch's speed: > 1 means we are faster (of each
side's best round); with --rounds N > 1, ratio_rounds = each round's ratio (the PyTorch case runs
right after ours in every round), also a "per round" column of --markdown's table.`;

function parse() {
  try {
    return parseArgs({
      args: Deno.args,
      options: {
        json: { type: "boolean", default: false },
        filter: { type: "string" },
        reps: { type: "string" },
        rounds: { type: "string", default: "1" },
        torch: { type: "boolean", default: false },
        markdown: { type: "boolean", default: false },
        profile: { type: "string" },
        "profile-runs": { type: "string" },
        warmup: { type: "string", default: "0" },
        help: { type: "boolean", short: "h", default: false },
      },
    });
  } catch (e) {
    console.error(`${(e as Error).message}\n\n${HELP}`);
    Deno.exit(2);
  }
}
const { values } = parse();
if (values.help) {
  console.log(HELP);
  Deno.exit(0);
}
const reps = values.reps === undefined ? undefined : Number(values.reps);
const profile = values.profile === undefined ? undefined : Number(values.profile);
if (profile !== undefined && !(Number.isInteger(profile) && profile >= 1)) {
  console.error(`--profile must be a positive integer, found ${JSON.stringify(values.profile)}`);
  Deno.exit(2);
}
if (reps !== undefined && (!Number.isInteger(reps) || reps < 1)) {
  console.error(`--reps must be a positive integer, found ${JSON.stringify(values.reps)}`);
  Deno.exit(2);
}

const warmup = Number(values.warmup);
if (!(warmup >= 0)) {
  console.error(
    `--warmup must be a number of seconds >= 0, found ${JSON.stringify(values.warmup)}`,
  );
  Deno.exit(2);
}

const rounds = Number(values.rounds);
if (!Number.isInteger(rounds) || rounds < 1) {
  console.error(`--rounds must be a positive integer, found ${JSON.stringify(values.rounds)}`);
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
const gpu = await getGpu();
const selected = cases.filter((c) =>
  (!values.filter || `${c.name} ${c.shape}`.includes(values.filter)) &&
  (!c.kinds || c.kinds.includes(gpu.kind))
);

const log = (s: string) => values.json ? console.error(s) : console.log(s);
log(`adapter: ${gpu.describe()}`);
log(`machine: ${navigator.hardwareConcurrency} logical cores, ${Deno.build.os}-${Deno.build.arch}`);
const pinning = gpu.pinning.pinned
  ? `driver compute threads pinned to cores ${gpu.pinning.cpus.join(",")}`
  : `driver compute threads not pinned (${gpu.pinning.skipped})`;
log(pinning);
if (profile !== undefined && !gpu.features.has("timestamp-query")) {
  log(`--profile skipped: ${gpu.describe()} lacks the "timestamp-query" feature`);
}
const profileKernels = gpu.features.has("timestamp-query") ? profile : undefined;
const profileRuns = Number(values["profile-runs"] ?? 1);
if (!(Number.isInteger(profileRuns) && profileRuns >= 1)) {
  console.error(
    `--profile-runs must be a positive integer, found ${JSON.stringify(values["profile-runs"])}`,
  );
  Deno.exit(2);
}
if (warmup > 0) log(`warm-up: ${await warmUp(gpu, warmup)} products of 1024^3 in ${warmup} s`);
/**
 * Keeps, per name + shape, the result with the lowest ms; notes the slowest ms in `ms_worst` and
 * every round's ms, in order, in `ms_rounds`.
 */
function keepBest(best: Map<string, BenchResult>, r: BenchResult): void {
  const key = `${r.name}\u0000${r.shape}`, old = best.get(key);
  if (!old) {
    best.set(key, rounds > 1 ? { ...r, ms_rounds: [r.ms] } : r);
    return;
  }
  const worst = Math.max(old.ms, r.ms, (old.ms_worst as number | undefined) ?? 0);
  const msRounds = [...(old.ms_rounds as number[]), r.ms];
  best.set(key, { ...(r.ms < old.ms ? r : old), rounds, ms_worst: worst, ms_rounds: msRounds });
}

/** Each round's ratio (torch ms / our ms), where both sides ran that round; [] for one round. */
function roundRatios(ours: BenchResult, torch: BenchResult): number[] {
  const a = (ours.ms_rounds ?? []) as number[], b = (torch.ms_rounds ?? []) as number[];
  return a.slice(0, b.length).map((ms, i) => +(b[i] / ms).toFixed(3));
}

/** Prints one of our results: a JSON line with --json, else the text line. */
function emit(r: BenchResult): void {
  if (values.json) {
    console.log(JSON.stringify({ ...r, backend: "webgpu", adapter: gpu.describe() }));
  } else console.log(formatResult(r));
}

/** The pause after each PyTorch case before our next one (see below). */
const TORCH_SETTLE_MS = 500;

const oursBest = new Map<string, BenchResult>();
const torchBest = new Map<string, BenchResult>();
let torch: TorchServer | null = null;
if (values.torch) {
  try {
    torch = TorchServer.start(reps);
  } catch (e) {
    log(`PyTorch comparison skipped: ${(e as Error).message}`);
  }
}
for (let round = 1; round <= rounds; round++) {
  const torchRan = new Set<string>(); // PyTorch's cases run this round
  for (const c of selected) {
    const r = await runCase(gpu, c, reps, { profile: profileKernels, profileRuns });
    keepBest(oursBest, r);
    // One round: each result as it comes; more: progress lines now, the best of each at the end.
    if (rounds === 1) emit(r);
    else console.error(`round ${round}/${rounds}: ${formatResult(r)}`);
    // PyTorch's case right after ours (see tools/bench/_torch.ts).
    const key = torchKey(r.name, r.shape);
    if (!torch || torchRan.has(key)) continue;
    torchRan.add(key);
    try {
      const t = await torch.run(key);
      if (!t) continue;
      // PyTorch's idle threads spin for a while before they sleep (OpenBLAS ~2^28 cycles, GNU
      // OpenMP its spin count): let them settle before our next case takes the cores.
      await new Promise((r) => setTimeout(r, TORCH_SETTLE_MS));
      keepBest(torchBest, t);
      if (rounds > 1) {
        console.error(
          `round ${round}/${rounds}: ${formatResult({ ...t, name: `torch:${t.name}` })}`,
        );
      }
    } catch (e) {
      log(
        `${(e as Error).message}: is python3-torch installed for ${
          Deno.env.get("PYTHON") || "python3"
        }? (PYTHON=... picks another); the rest runs without PyTorch`,
      );
      torch = null;
    }
  }
}
await torch?.close();
const results = [...oursBest.values()];
if (rounds > 1) results.forEach(emit);

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
  // With several rounds, each round's ratio too: the spread one run could have shown.
  const perRound = rounds > 1;
  const rows = pairs.map(({ ours, torch, ratio }) => [
    `${ours.name} ${ours.shape}`,
    headline(ours),
    headline(torch),
    `${ratio.toFixed(2)}x`,
    ...(perRound ? [roundRatios(ours, torch).map((x) => x.toFixed(2)).join(" / ")] : []),
  ]);
  const head = ["case", "ours", "PyTorch", "ratio", ...(perRound ? ["per round"] : [])];
  const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(w[i])).join(" | ")} |`;
  return [line(head), `| ${w.map((n) => "-".repeat(n)).join(" | ")} |`, ...rows.map(line)].join(
    "\n",
  );
}

if (values.torch) {
  const pairs: { ours: BenchResult; torch: BenchResult; ratio: number }[] = [];
  for (const t of torchBest.values()) {
    // Ours compared with it (torchKey): the same case first, then any other that maps to it (the
    // GPU-sampled greedy decode, against PyTorch's greedy loop: the table shows both). Both sides
    // report ms per op, so a pair compares the same op even where `per` differs.
    const key = `${t.name} ${t.shape}`;
    const mine = results.filter((r) => torchKey(r.name, r.shape) === key && r.ms > 0)
      .sort((a, b) => Number(b.name === t.name) - Number(a.name === t.name));
    for (const ours of mine) pairs.push({ ours, torch: t, ratio: +(t.ms / ours.ms).toFixed(3) });
    const same = mine[0]?.name === t.name ? mine[0] : undefined;
    const ratio = same ? +(t.ms / same.ms).toFixed(3) : undefined;
    const perRound = same && rounds > 1 ? roundRatios(same, t) : undefined;
    if (values.json) {
      console.log(
        JSON.stringify({
          ...t,
          backend: "torch",
          ratio_vs_torch: ratio,
          speed_vs_torch: ratio,
          ...(perRound ? { ratio_rounds: perRound } : {}),
        }),
      );
    } else {
      console.log(
        `${formatResult({ ...t, name: `torch:${t.name}` })}${
          ratio !== undefined ? `  ours/torch speed ${ratio}x` : ""
        }${perRound ? ` (per round ${perRound.join(" / ")})` : ""}`,
      );
    }
  }
  if (values.markdown) {
    log(
      `\n${gpu.describe()}, ${navigator.hardwareConcurrency} logical cores, ${pinning}; ` +
        `ratio = our speed / PyTorch's\n`,
    );
    log(markdownTable(pairs));
  }
} else if (values.markdown) {
  log("--markdown needs --torch (the table pairs each case with PyTorch's)");
}
