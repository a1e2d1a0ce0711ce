/**
 * Loads a Hugging Face LLaMA checkpoint the way `deno task infer` does and reports what it costs on
 * this machine: load time, host memory (RSS; on a CPU adapter the "GPU" buffers live there too),
 * GPU bytes, a prefill and a few decode steps. For checking that a big checkpoint (the released 7B,
 * or one made by tools/synth_checkpoint.ts) fits:
 *
 *   deno run -A tools/synth_checkpoint.ts --preset 7b --out /tmp/synth7b
 *   deno run -A tools/load_check.ts /tmp/synth7b [--dtype f32|f16|q8|q4] [--prompt 16] [--steps 4]
 *
 * Peak RSS is the kernel's high-water mark (`VmHWM`, Linux), so it includes the load's transients.
 * Decode is also given in CPU seconds per token (user + system of every thread of the process,
 * llvmpipe's workers included), which a shared machine disturbs far less than the wall clock.
 * `--json` adds one JSON line with every figure at the end.
 *
 * Measured on the 2-core CI-class machine (lavapipe, quiet; 2026-12-04, after the Q4_0 integer-dot
 * GEMV and the 8-rows-side-by-side block textures), synthetic 7B (13.09 GB BF16):
 *   f16: load 166 s, peak 14.54 GB (13.09 GB weights), decode 3.17 s/token (4.55 CPU-s/token)
 *   q4:  load 64 s, peak 4.70 GB (3.68 GB weights), decode 0.665 s/token (1.02 CPU-s/token)
 *   q4 from its Q4_0 GGUF (`infer quantize --type q4_0`): load 18 s, peak 4.67 GB, 0.65 s/token
 *   q8 (machine at load ~3): load 200 s, peak 9.78 GB (6.95 GB weights), 1.48 s/token (1.43 CPU-s)
 * The README's "Quantized weights" table has these figures and the history.
 * @module
 */
import { parseArgs } from "node:util";
import process from "node:process";
import { getGpu } from "@lvm/gpu";
import { DecodeSession, WEIGHT_DTYPES, type WeightDType } from "@lvm/transformer";
import { loadLlama } from "@lvm/transformer/fs";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    dtype: { type: "string", default: "f16" },
    prompt: { type: "string", default: "16" },
    steps: { type: "string", default: "4" },
    json: { type: "boolean", default: false },
  },
});
const dir = positionals[0];
const dtype = values.dtype as WeightDType;
if (!dir || !WEIGHT_DTYPES.includes(dtype)) {
  console.error(
    "usage: deno run -A tools/load_check.ts MODEL_DIR [--dtype f32|f16|q8|q4] [--prompt N] " +
      "[--steps N] [--json]",
  );
  Deno.exit(2);
}
const P = Number(values.prompt), S = Number(values.steps);
const gb = (b: number) => (b / 1e9).toFixed(2);
const rss = () => gb(Deno.memoryUsage().rss);
/** Peak resident set (VmHWM) in bytes, or NaN where /proc is not there. */
function peakRss(): number {
  try {
    const m = Deno.readTextFileSync("/proc/self/status").match(/VmHWM:\s+(\d+) kB/);
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}
const gpu = await getGpu();
console.log(`${gpu.describe()}; loading ${dir} as ${values.dtype}`);
let t = performance.now();
let last = t;
const model = await loadLlama(gpu, dir, {
  dtype,
  onTensor: (name, i, n) => {
    const now = performance.now();
    if (now - last < 10_000 && i < n - 1) return;
    last = now;
    console.log(`  ${i + 1}/${n} ${name}: rss ${rss()} GB at ${((now - t) / 1000).toFixed(0)} s`);
  },
});
const load = (performance.now() - t) / 1000;
const peakLoad = peakRss();
console.log(
  `loaded in ${load.toFixed(1)} s: rss ${rss()} GB (peak ${gb(peakLoad)} GB), weights ${
    gb(model.weightBytes)
  } GB, GPU buffers ${gb(gpu.pool.allocatedBytes)} GB`,
);
const session = new DecodeSession(model, { maxTokens: P + S + 1 });
const ids = Array.from({ length: P }, (_, i) => (i * 37) % model.config.imageCodes);
t = performance.now();
await session.prefill(ids);
const prefill = (performance.now() - t) / 1000;
console.log(`prefill ${P} tokens: ${prefill.toFixed(1)} s, rss ${rss()} GB`);
await session.step(ids[0]); // the first step compiles the decode kernels: not timed
t = performance.now();
const c0 = process.cpuUsage();
for (let i = 0; i < S; i++) await session.step(ids[(i + 1) % P]);
const per = (performance.now() - t) / 1000 / S;
const c1 = process.cpuUsage(c0);
const cpuPer = (c1.user + c1.system) / 1e6 / S; // every thread of the process: llvmpipe's too
console.log(
  `decode: ${per.toFixed(2)} s/token (${(1 / per).toFixed(2)} tokens/s), CPU ${
    cpuPer.toFixed(2)
  } s/token, rss ${rss()} GB, peak ${gb(peakRss())} GB`,
);
if (values.json) {
  console.log(JSON.stringify({
    dir,
    dtype,
    load_s: +load.toFixed(1),
    peak_rss_load_gb: +gb(peakLoad),
    peak_rss_gb: +gb(peakRss()),
    weight_gb: +gb(model.weightBytes),
    gpu_buffers_gb: +gb(gpu.pool.allocatedBytes),
    prefill_s: +prefill.toFixed(2),
    decode_s_per_token: +per.toFixed(3),
    decode_cpu_s_per_token: +cpuPer.toFixed(3),
  }));
}
session.release();
