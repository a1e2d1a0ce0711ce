/**
 * `deno task bench [--json] [--filter TEXT] [--reps N] [--torch]`: runs every case in tools/bench/*.ts
 * on this machine's adapter. `--torch` also runs tools/bench_torch.py (PyTorch on the CPU, same
 * shapes) in the same run when python3 with torch is present, and prints the ratios.
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "@lvm/kernels";
import { type BenchCase, type BenchResult, formatResult, runCase } from "./bench/_harness.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    json: { type: "boolean", default: false },
    filter: { type: "string" },
    reps: { type: "string", default: "5" },
    torch: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});
if (values.help) {
  console.log("usage: deno task bench [--json] [--filter TEXT] [--reps N] [--torch]");
  Deno.exit(0);
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
  const r = await runCase(gpu, c, Number(values.reps));
  results.push(r);
  if (values.json) {
    console.log(JSON.stringify({ ...r, backend: "webgpu", adapter: gpu.describe() }));
  } else console.log(formatResult(r));
}

if (values.torch) {
  const script = new URL("./bench_torch.py", import.meta.url).pathname;
  try {
    const out = await new Deno.Command("python3", {
      args: [script, ...(values.filter ? ["--filter", values.filter] : [])],
      stdout: "piped",
      stderr: "inherit",
    }).output();
    const lines = new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.startsWith("{"));
    for (const line of lines) {
      const t = JSON.parse(line) as BenchResult;
      const ours = results.find((r) => r.name === t.name && r.shape === t.shape);
      const ratio = ours ? +(t.ms / ours.ms).toFixed(3) : undefined;
      if (values.json) {
        console.log(JSON.stringify({ ...t, backend: "torch", ratio_vs_torch: ratio }));
      } else {
        console.log(
          `${formatResult({ ...t, name: `torch:${t.name}` })}${
            ratio ? `  ours/torch speed ${ratio}x` : ""
          }`,
        );
      }
    }
    if (!out.success) log("bench_torch.py failed (is python3-torch installed?)");
  } catch (e) {
    log(`PyTorch comparison skipped: ${(e as Error).message}`);
  }
}
