/**
 * What block quantization costs a trained model: loads a Hugging Face LLaMA directory at f32 and at
 * each `--dtypes` (default q8, q4), runs the first `--sentences` sentences of a token dataset
 * through a full forward, and prints per dtype the perplexity (exp of the mean next-token NLL over
 * every position), its change against f32, and the share of positions whose greedy (arg-max) next
 * token is the f32 model's. Issue 13's bar: q8 within 0.5% and q4 within 5% of f32's perplexity.
 * `--decode` scores through one-token KV-cache decode steps instead (a DecodeSession fed the
 * sentence a token at a time: the GEMV kernels generation runs, where a q4 model quantizes x to 8
 * bits per block like llama.cpp; `--exact-q4` turns that off), slower: use fewer sentences.
 *
 *   deno run -A tools/quant_check.ts --model out/shipped/old/lvm_m_300/checkpoint-300 \
 *     --data out/shipped/ds/heldout [--sentences 16] [--dtypes f16,q8,q4] [--decode [--exact-q4]] [--json]
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "@lvm/gpu";
import { openDataset } from "@lvm/sentence";
import { DecodeSession, type Llama, WEIGHT_DTYPES, type WeightDType } from "@lvm/transformer";
import { loadLlama } from "@lvm/transformer/fs";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    model: { type: "string" },
    data: { type: "string" },
    sentences: { type: "string", default: "16" },
    dtypes: { type: "string", default: "q8,q4" },
    json: { type: "boolean", default: false },
    decode: { type: "boolean", default: false },
    "exact-q4": { type: "boolean", default: false },
  },
});
const dtypes = values.dtypes!.split(",") as WeightDType[];
const S = Number(values.sentences);
if (
  !values.model || !values.data || !(S >= 1) ||
  dtypes.some((d) => !WEIGHT_DTYPES.includes(d) || d === "f32")
) {
  console.error(
    "usage: deno run -A tools/quant_check.ts --model DIR --data DATASET [--sentences N] " +
      "[--dtypes f16,q8,q4] [--decode [--exact-q4]] [--json]",
  );
  Deno.exit(2);
}
const log = (s: string) => values.json ? console.error(s) : console.log(s);

// The first S sentences of the dataset.
const ds = await openDataset(values.data);
const sentences: Int32Array[] = [];
for await (const s of ds.sentencesIter()) {
  sentences.push(s);
  if (sentences.length === S) break;
}
const tokens = sentences.reduce((n, s) => n + s.length - 1, 0);

/** Adds row `t`'s NLL of `next` to the sum and records its arg-max; returns the NLL. */
function score(row: Float32Array, next: number): { nll: number; best: number } {
  let best = 0;
  for (let v = 1; v < row.length; v++) if (row[v] > row[best]) best = v;
  let z = 0;
  for (let v = 0; v < row.length; v++) z += Math.exp(row[v] - row[best]);
  return { nll: Math.log(z) + row[best] - row[next], best };
}

/** Mean NLL of every next token, and the arg-max id at every position, of every sentence. */
async function run(model: Llama): Promise<{ nll: number; argmax: Int32Array }> {
  const V = model.config.vocab;
  let sum = 0;
  const argmax = new Int32Array(tokens);
  let o = 0;
  for (const s of sentences) {
    const T = s.length;
    if (values.decode) {
      const session = new DecodeSession(model, { maxTokens: T });
      try {
        let row = await session.prefill([s[0]]);
        for (let t = 0; t + 1 < T; t++) {
          if (t > 0) row = await session.step(s[t]);
          const r = score(row, s[t + 1]);
          sum += r.nll;
          argmax[o++] = r.best;
        }
      } finally {
        session.release();
      }
      continue;
    }
    const { logits } = model.forward({ B: 1, T, inputs: s });
    const chunks = await model.gpu.readMany(logits!);
    logits!.forEach((t) => t.release());
    const all = new Float32Array(T * V);
    let r = 0;
    for (const c of chunks) {
      all.set(c, r);
      r += c.length;
    }
    for (let t = 0; t + 1 < T; t++) {
      const r = score(all.subarray(t * V, (t + 1) * V), s[t + 1]);
      sum += r.nll;
      argmax[o++] = r.best;
    }
  }
  return { nll: sum / tokens, argmax };
}

const gpu = await getGpu();
log(
  `${gpu.describe()}; ${values.model}; ${S} sentences, ${tokens} scored tokens` +
    (values.decode ? `, through decode steps${values["exact-q4"] ? " (exact q4)" : ""}` : ""),
);
const results: Record<string, unknown>[] = [];
let ref: { nll: number; argmax: Int32Array } | null = null;
for (const dtype of ["f32", ...dtypes] as WeightDType[]) {
  const t0 = performance.now();
  const model = await loadLlama(gpu, values.model, {
    dtype,
    quantizeActivations: !values["exact-q4"],
  });
  const r = await run(model);
  const bytes = model.weightBytes;
  model.release();
  ref ??= r;
  let same = 0;
  for (let i = 0; i < tokens; i++) if (r.argmax[i] === ref.argmax[i]) same++;
  const ppl = Math.exp(r.nll), ppl32 = Math.exp(ref.nll);
  const row = {
    dtype,
    perplexity: +ppl.toFixed(4),
    change_pct: +(100 * (ppl / ppl32 - 1)).toFixed(3),
    greedy_same: +(same / tokens).toFixed(4),
    weight_mb: +(bytes / 2 ** 20).toFixed(2),
    seconds: +((performance.now() - t0) / 1000).toFixed(1),
  };
  results.push(row);
  if (values.json) console.log(JSON.stringify(row));
  else {
    log(
      `${dtype.padEnd(4)} perplexity ${row.perplexity} (${
        row.change_pct >= 0 ? "+" : ""
      }${row.change_pct}% vs f32), greedy tokens unchanged ${
        (100 * row.greedy_same).toFixed(2)
      }%, weights ${row.weight_mb} MiB, ${row.seconds} s`,
    );
  }
}
