/**
 * Do the GGUF files `deno task infer quantize` writes mean in llama.cpp what the model means here?
 * A developer tool, not run in CI (it needs `npm:node-llama-cpp@3.21.1`, whose prebuilt CPU
 * llama.cpp Deno fetches from the npm registry on first use, and a WebGPU adapter for our side):
 *
 *   deno run -A --no-lock tools/llama_cpp_check.ts [--model DIR] [--types f32,f16,q8_0,q4_0]
 *     [--prompt 48] [--new 32] [--seed 1] [--keep DIR] [--json FILE]
 *
 * Without `--model` it makes a random LLaMA (hidden 128, 4 heads / 2 KV heads, 4 layers, vocab 512,
 * weights scaled so its next-token distributions are peaked, not uniform: near-ties would make
 * greedy agreement meaningless). For each type it writes the GGUF (`convertLlamaToGguf`), loads it
 * in llama.cpp, feeds a fixed random prompt of image codes, and compares with our transformer
 * (`@lvm/transformer`, on the GPU, f32) on the original weights and on the same GGUF read back
 * through `openWeights` (so the file's own rounding is separated from llama.cpp's arithmetic):
 *
 * - `maxLogprobDiff`: max over prompt positions and the whole vocabulary of |log p_ours - log p_llama|
 * - `maxTokenLogprobDiff`: the same for the log-probability of the actual next prompt token
 * - `top1Agreement`: positions whose arg-max agrees, of the prompt's
 * - `greedy`: our greedy continuation of `--new` ids (arg-max over the whole vocabulary) against
 *   llama.cpp's, and how many agree before the first difference
 * - for q8_0 / q4_0 files also `vsOursQuantizedDecode`: ours loading the file at `--dtype q8|q4`
 *   (its blocks kept packed, x quantized per block at q4 as llama.cpp does) and run token by token
 *   through KV-cache decode steps, the kernels generation uses
 *
 * Prints one line per type and a JSON report (`--json FILE` writes it). The figures measured
 * here are in the README (GGUF); on this 2-core machine with lavapipe a run takes ~8 minutes.
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import {
  configFromHf,
  configToHf,
  DecodeSession,
  Llama,
  loadLlamaFrom,
  makeConfig,
  paramSpecs,
} from "@lvm/transformer";
import { loadLlama, readConfig } from "@lvm/transformer/fs";
import type { GgmlType } from "@lvm/weights";
import { convertLlamaToGguf, openLlamaGguf, writeSafetensors } from "@lvm/weights/fs";
import { Rng } from "@lvm/util";

// node-llama-cpp is imported by a computed specifier, so `deno check tools/` and the lock file
// never reach for it (CI is offline); run this tool with --no-lock. Only what is used is typed.
const NODE_LLAMA_CPP = "npm:node-llama-cpp@3.21.1";
type Probabilities = Map<number, number>;
interface LlamaSequence {
  controlledEvaluate(
    input: [number, { generateNext: { probabilities: true } }][],
  ): Promise<({ next?: { probabilities?: Probabilities } } | undefined)[]>;
}
interface LlamaCpp {
  loadModel(o: { modelPath: string }): Promise<{
    createContext(o: Record<string, unknown>): Promise<{
      getSequence(): LlamaSequence;
      dispose(): Promise<void>;
    }>;
    dispose(): Promise<void>;
  }>;
  dispose(): Promise<void>;
}
const { getLlama, LlamaLogLevel } = await import(NODE_LLAMA_CPP) as {
  getLlama(o: Record<string, unknown>): Promise<LlamaCpp>;
  LlamaLogLevel: { error: unknown };
};

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    types: { type: "string", default: "f32,f16,q8_0,q4_0" },
    prompt: { type: "string", default: "48" },
    new: { type: "string", default: "32" },
    seed: { type: "string", default: "1" },
    keep: { type: "string" },
    json: { type: "string" },
  },
});
const TYPES = values.types.split(",").map((t) => t.trim().toUpperCase() as GgmlType);
const PROMPT = Number(values.prompt), NEW = Number(values.new), SEED = Number(values.seed);
const work = values.keep ?? await Deno.makeTempDir({ prefix: "llama-cpp-check-" });
await Deno.mkdir(work, { recursive: true });

/** A random LLaMA whose logits spread over several units (std ~2): peaked distributions. */
async function randomModel(dir: string): Promise<void> {
  const config = makeConfig({
    hidden: 128,
    layers: 4,
    heads: 4,
    kvHeads: 2,
    ffn: 256,
    vocab: 512,
    imageCodes: 500,
    maxPositions: 256,
  });
  const rng = new Rng(SEED);
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  for (const { name, shape } of paramSpecs(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Float32Array(n);
    const std = shape.length === 1
      ? 0.1
      : name.includes("embed")
      ? 1
      : name === "lm_head.weight"
      ? 2 / Math.sqrt(shape[1])
      : 1 / Math.sqrt(shape[1]);
    for (let i = 0; i < n; i++) data[i] = (shape.length === 1 ? 1 : 0) + std * rng.normal();
    tensors[name] = { dtype: "F32", shape, data };
  }
  await Deno.mkdir(dir, { recursive: true });
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(configToHf(config)));
}

const model = values.model ?? join(work, "random-model");
if (!values.model) await randomModel(model);
const config = await readConfig(model);
const V = config.vocab;
const rng = new Rng(SEED + 1);
const prompt = Array.from({ length: PROMPT }, () => rng.int(config.imageCodes));
const gpu = await getGpu();
console.error(
  `model ${model} (vocab ${V}); prompt ${PROMPT} ids, ${NEW} greedy; ${gpu.describe()}`,
);

/** Log-softmax of each row of (rows, V) logits. */
function logSoftmax(logits: Float32Array, rows: number): Float64Array {
  const out = new Float64Array(rows * V);
  for (let r = 0; r < rows; r++) {
    let m = -Infinity;
    for (let v = 0; v < V; v++) m = Math.max(m, logits[r * V + v]);
    let s = 0;
    for (let v = 0; v < V; v++) s += Math.exp(logits[r * V + v] - m);
    const lse = m + Math.log(s);
    for (let v = 0; v < V; v++) out[r * V + v] = logits[r * V + v] - lse;
  }
  return out;
}

const argmax = (row: ArrayLike<number>) => {
  let best = 0;
  for (let v = 1; v < row.length; v++) if (row[v] > row[best]) best = v;
  return best;
};

/** Our log-probabilities at every prompt position and our greedy continuation. */
async function ours(
  m: Llama,
): Promise<{ logp: Float64Array; greedy: number[]; margins: number[] }> {
  const run = async (ids: number[]) => {
    const { logits } = m.forward({ B: 1, T: ids.length, inputs: Int32Array.from(ids) }, {});
    const all = await gpu.readF32(logits![0]);
    logits!.forEach((t) => t.release());
    return all;
  };
  const logp = logSoftmax(await run(prompt), PROMPT);
  const seq = [...prompt], greedy: number[] = [], margins: number[] = [];
  for (let i = 0; i < NEW; i++) {
    const row = (await run(seq)).subarray((seq.length - 1) * V, seq.length * V);
    const next = argmax(row);
    greedy.push(next);
    margins.push(row[next] - Math.max(...row.filter((_, v) => v !== next)));
    seq.push(next);
  }
  return { logp, greedy, margins };
}

/**
 * The same through our decode path on the file's own blocks: the model loaded with `dtype` q8/q4
 * (Q8_0/Q4_0 kept packed; at q4 x quantized to 8 bits per block in the GEMV, as llama.cpp does),
 * fed one token at a time by a DecodeSession (the GEMV kernels generation runs).
 */
async function oursDecode(
  m: Llama,
): Promise<{ logp: Float64Array; greedy: number[]; margins: number[] }> {
  const s = new DecodeSession(m, { maxTokens: PROMPT + NEW + 1 });
  const rows = new Float32Array(PROMPT * V);
  let row = await s.prefill([prompt[0]]);
  rows.set(row, 0);
  for (let i = 1; i < PROMPT; i++) {
    row = await s.step(prompt[i]);
    rows.set(row, i * V);
  }
  const greedy: number[] = [], margins: number[] = [];
  for (let i = 0; i < NEW; i++) {
    const next = argmax(row);
    greedy.push(next);
    margins.push(row[next] - Math.max(...row.filter((_, v) => v !== next)));
    row = await s.step(next);
  }
  s.release();
  return { logp: logSoftmax(rows, PROMPT), greedy, margins };
}

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });

/** llama.cpp's log-probabilities at every prompt position and its greedy continuation. */
async function theirs(file: string): Promise<{ logp: Float64Array; greedy: number[] }> {
  const lm = await llama.loadModel({ modelPath: file });
  // An f32 KV cache and no flash attention: llama.cpp's defaults (an f16 cache) would add their
  // own rounding to what is compared.
  const ctx = await lm.createContext({
    contextSize: PROMPT + NEW + 8,
    batchSize: PROMPT + NEW + 8,
    flashAttention: false,
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
  });
  const seq = ctx.getSequence();
  const probs = { generateNext: { probabilities: true as const } };
  const toLogp = (p: Map<number, number> | undefined, into: Float64Array, row: number) => {
    into.fill(-Infinity, row * V, (row + 1) * V); // ids left out of the map have probability 0
    for (const [id, q] of p ?? []) into[row * V + id] = Math.log(q);
  };
  const res = await seq.controlledEvaluate(prompt.map((t) => [t, probs]));
  const logp = new Float64Array(PROMPT * V);
  for (let i = 0; i < PROMPT; i++) toLogp(res[i]?.next?.probabilities, logp, i);
  const greedy: number[] = [];
  let row = new Float64Array(V);
  row.set(logp.subarray((PROMPT - 1) * V));
  for (let i = 0; i < NEW; i++) {
    const next = argmax(row);
    greedy.push(next);
    const [r] = await seq.controlledEvaluate([[next, probs]]);
    row = new Float64Array(V);
    toLogp(r?.next?.probabilities, row, 0);
  }
  await ctx.dispose();
  await lm.dispose();
  return { logp, greedy };
}

/** How two runs compare (see the module doc); `a` is ours (its greedy margins are known). */
function compare(
  a: { logp: Float64Array; greedy: number[]; margins: number[] },
  b: { logp: Float64Array; greedy: number[] },
) {
  let maxLogprobDiff = 0, maxTokenLogprobDiff = 0, top1 = 0;
  for (let i = 0; i < PROMPT; i++) {
    const ra = a.logp.subarray(i * V, (i + 1) * V), rb = b.logp.subarray(i * V, (i + 1) * V);
    for (let v = 0; v < V; v++) maxLogprobDiff = Math.max(maxLogprobDiff, Math.abs(ra[v] - rb[v]));
    if (i + 1 < PROMPT) {
      const t = prompt[i + 1];
      maxTokenLogprobDiff = Math.max(maxTokenLogprobDiff, Math.abs(ra[t] - rb[t]));
    }
    if (argmax(ra) === argmax(rb)) top1++;
  }
  let agree = 0;
  while (agree < NEW && a.greedy[agree] === b.greedy[agree]) agree++;
  return {
    maxLogprobDiff: Number(maxLogprobDiff.toPrecision(3)),
    maxTokenLogprobDiff: Number(maxTokenLogprobDiff.toPrecision(3)),
    top1Agreement: `${top1}/${PROMPT}`,
    greedyAgreeBeforeFirstDiff: `${agree}/${NEW}`,
    greedySame: a.greedy.filter((t, i) => t === b.greedy[i]).length,
    // our top-1 minus top-2 log-probability where the continuations part: a near-tie when it is
    // below maxLogprobDiff
    marginAtFirstDiff: agree < NEW ? Number(a.margins[agree].toPrecision(3)) : null,
  };
}

const original = await loadLlama(gpu, model);
const ref = await ours(original);
original.release();
const report: Record<string, unknown> = {
  model,
  vocab: V,
  prompt: PROMPT,
  newTokens: NEW,
  adapter: gpu.describe(),
  llamaCpp: "node-llama-cpp 3.21.1 (CPU)",
  types: {} as Record<string, unknown>,
};
for (const type of TYPES) {
  const file = join(work, `model-${type.toLowerCase()}.gguf`);
  const conv = await convertLlamaToGguf(model, file, { type });
  const their = await theirs(file);
  const src = await openLlamaGguf(file);
  const fromFile = await loadLlamaFrom(gpu, configFromHf(src.config(), file), src);
  src.close();
  const same = await ours(fromFile);
  fromFile.release();
  // Q8_0 / Q4_0 files: also through our quantized decode kernels on the stored blocks.
  const qdtype = type === "Q8_0" ? "q8" : type === "Q4_0" ? "q4" : null;
  let quant: ReturnType<typeof compare> | undefined;
  if (qdtype) {
    const q = await loadLlama(gpu, file, { dtype: qdtype });
    quant = compare(await oursDecode(q), their);
    q.release();
  }
  const r = {
    bytes: conv.bytes,
    notes: conv.notes,
    vsOriginal: compare(ref, their),
    vsSameFileHere: compare(same, their),
    oursFileVsOriginal: compare(ref, same),
    ...(quant ? { vsOursQuantizedDecode: quant } : {}),
    greedy: { ours: ref.greedy, llamaCpp: their.greedy },
  };
  (report.types as Record<string, unknown>)[type] = r;
  console.log(
    `${type.padEnd(5)} ${String(conv.bytes).padStart(9)} B | llama.cpp vs ours (original): ` +
      `max |dlogp| ${r.vsOriginal.maxLogprobDiff}, tokens ${r.vsOriginal.maxTokenLogprobDiff}, ` +
      `top-1 ${r.vsOriginal.top1Agreement}, greedy ${r.vsOriginal.greedyAgreeBeforeFirstDiff}` +
      ` (margin there ${r.vsOriginal.marginAtFirstDiff}) | ` +
      `vs ours (same file): max |dlogp| ${r.vsSameFileHere.maxLogprobDiff}, greedy ${r.vsSameFileHere.greedyAgreeBeforeFirstDiff}` +
      ` (margin there ${r.vsSameFileHere.marginAtFirstDiff})` +
      (quant
        ? ` | vs ours (--dtype ${qdtype} decode): max |dlogp| ${quant.maxLogprobDiff}, top-1 ` +
          `${quant.top1Agreement}, greedy ${quant.greedyAgreeBeforeFirstDiff}`
        : ""),
  );
}
await llama.dispose();
if (values.json) await Deno.writeTextFile(values.json, JSON.stringify(report, null, 2) + "\n");
else console.log(JSON.stringify(report));
if (!values.keep) await Deno.remove(work, { recursive: true });
