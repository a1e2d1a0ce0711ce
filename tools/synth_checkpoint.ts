/**
 * `deno run -A tools/synth_checkpoint.ts --preset 7b --out DIR [--dtype BF16] [--shard-gb 5]`:
 * writes a Hugging Face LLaMA checkpoint of a preset's exact shapes with random weights
 * (config.json + model-0000k-of-0000n.safetensors + model.safetensors.index.json), streaming one
 * tensor at a time so a 13 GB checkpoint needs only one tensor in memory. It stands in for the
 * released LVM 7B (same layout, same dtype) where the real weights cannot be downloaded: loading
 * it with `deno task infer generate --model DIR --dtype f16` measures what the 7B costs here
 * (memory, load time, tokens/s); the numbers it generates mean nothing.
 *
 * Values: RMSNorm weights 1, everything else uniform in +-0.02 (std ~0.0115), from a fixed seed.
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { shardFileName } from "@lvm/weights";
import { SafetensorsWriter } from "@lvm/weights/fs";
import { configToHf, paramSpecs, preset } from "@lvm/transformer";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    preset: { type: "string", default: "7b" },
    out: { type: "string" },
    dtype: { type: "string", default: "BF16" },
    "shard-gb": { type: "string", default: "5" },
  },
});
if (!values.out) {
  console.error("usage: deno run -A tools/synth_checkpoint.ts --preset NAME --out DIR");
  Deno.exit(2);
}
const dtype = values.dtype as "F32" | "F16" | "BF16";
if (!["F32", "F16", "BF16"].includes(dtype)) throw new RangeError(`--dtype ${dtype}: F32|F16|BF16`);
const config = preset(values.preset!);
const specs = paramSpecs(config);
const elem = dtype === "F32" ? 4 : 2;
const maxShard = Number(values["shard-gb"]) * 1e9;

// Shards in parameter order, each at most maxShard bytes (as saveLlama groups them).
const groups: (typeof specs)[] = [[]];
let bytes = 0;
for (const s of specs) {
  const b = s.shape.reduce((a, d) => a * d, 1) * elem;
  if (groups.at(-1)!.length && bytes + b > maxShard) {
    groups.push([]);
    bytes = 0;
  }
  groups.at(-1)!.push(s);
  bytes += b;
}

let state = 0x9e3779b9;
function fill(a: Float32Array, norm: boolean): Float32Array {
  if (norm) return a.fill(1);
  for (let i = 0; i < a.length; i++) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    a[i] = ((state >>> 0) / 4294967296 - 0.5) * 0.04;
  }
  return a;
}

await Deno.mkdir(values.out, { recursive: true });
const weightMap: Record<string, string> = {};
let total = 0;
const t0 = performance.now();
for (let k = 0; k < groups.length; k++) {
  const file = groups.length === 1 ? "model.safetensors" : shardFileName(k + 1, groups.length);
  const w = await SafetensorsWriter.create(
    join(values.out, file),
    groups[k].map((s) => ({ name: s.name, dtype, shape: s.shape })),
    { format: "pt" },
  );
  for (const s of groups[k]) {
    const n = s.shape.reduce((a, d) => a * d, 1);
    await w.write(s.name, fill(new Float32Array(n), s.shape.length === 1));
    weightMap[s.name] = file;
    total += n * elem;
  }
  await w.close();
  console.error(
    `wrote ${file} (${groups[k].length} tensors) at ${
      ((performance.now() - t0) / 1000).toFixed(0)
    } s`,
  );
}
if (groups.length > 1) {
  const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((n) => [n, weightMap[n]]));
  await Deno.writeTextFile(
    join(values.out, "model.safetensors.index.json"),
    JSON.stringify({ metadata: { total_size: total }, weight_map: sorted }, null, 2) + "\n",
  );
}
const torchDtype = { F32: "float32", F16: "float16", BF16: "bfloat16" }[dtype];
await Deno.writeTextFile(
  join(values.out, "config.json"),
  JSON.stringify(configToHf(config, torchDtype), null, 2) + "\n",
);
console.error(
  `${values.out}: preset ${values.preset}, ${specs.length} tensors, ${
    (total / 1e9).toFixed(2)
  } GB in ${groups.length} file(s)`,
);
