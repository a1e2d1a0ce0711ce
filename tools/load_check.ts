/**
 * Loads a Hugging Face LLaMA checkpoint the way `deno task infer` does and reports what it costs on
 * this machine: load time, host memory (RSS; on a CPU adapter the "GPU" buffers live there too),
 * GPU bytes, a prefill and a few decode steps. For checking that a big checkpoint (the released 7B,
 * or one made by tools/synth_checkpoint.ts) fits:
 *
 *   deno run -A tools/synth_checkpoint.ts --preset 7b --out /tmp/synth7b
 *   deno run -A tools/load_check.ts /tmp/synth7b [--dtype f16] [--prompt 16] [--steps 4]
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "@lvm/gpu";
import { DecodeSession } from "@lvm/transformer";
import { loadLlama } from "@lvm/transformer/fs";

const { values, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    dtype: { type: "string", default: "f16" },
    prompt: { type: "string", default: "16" },
    steps: { type: "string", default: "4" },
  },
});
const dir = positionals[0];
if (!dir || (values.dtype !== "f16" && values.dtype !== "f32")) {
  console.error(
    "usage: deno run -A tools/load_check.ts MODEL_DIR [--dtype f16|f32] [--prompt N] [--steps N]",
  );
  Deno.exit(2);
}
const P = Number(values.prompt), S = Number(values.steps);
const gb = (b: number) => (b / 1e9).toFixed(2);
const rss = () => gb(Deno.memoryUsage().rss);
const gpu = await getGpu();
console.log(`${gpu.describe()}; loading ${dir} as ${values.dtype}`);
let t = performance.now();
let last = t;
const model = await loadLlama(gpu, dir, {
  dtype: values.dtype,
  onTensor: (name, i, n) => {
    const now = performance.now();
    if (now - last < 10_000 && i < n - 1) return;
    last = now;
    console.log(`  ${i + 1}/${n} ${name}: rss ${rss()} GB at ${((now - t) / 1000).toFixed(0)} s`);
  },
});
const load = (performance.now() - t) / 1000;
console.log(
  `loaded in ${load.toFixed(1)} s: rss ${rss()} GB, GPU buffers ${gb(gpu.pool.allocatedBytes)} GB`,
);
const session = new DecodeSession(model, { maxTokens: P + S });
const ids = Array.from({ length: P }, (_, i) => (i * 37) % model.config.imageCodes);
t = performance.now();
await session.prefill(ids);
console.log(
  `prefill ${P} tokens: ${((performance.now() - t) / 1000).toFixed(1)} s, rss ${rss()} GB`,
);
t = performance.now();
for (let i = 0; i < S; i++) await session.step(ids[i % P]);
const per = (performance.now() - t) / 1000 / S;
console.log(
  `decode: ${per.toFixed(2)} s/token (${(1 / per).toFixed(2)} tokens/s), rss ${rss()} GB`,
);
session.release();
