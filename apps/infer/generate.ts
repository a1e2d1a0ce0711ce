/**
 * `deno task infer generate --model DIR --tokens IDS --max-new-tokens N [--greedy] [--temperature T]
 * [--top-k K] [--top-p P] [--seed S] [--json]`: continues a token sequence by exactly N ids with a KV
 * cache, never emitting ids at or above the model's image-code count (no early stop: LVM's eos id 2
 * is an image code). Sampling defaults are the official LVM code's: temperature 1, top-k 50, top-p 1.
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "@lvm/gpu";
import { DEFAULT_TOP_K, generateTokens, Sampler } from "@lvm/sampler";
import { DecodeSession, loadLlama, readConfig } from "@lvm/transformer";
import {
  checkVocab,
  type Command,
  loadProgress,
  numberOption,
  parseTokens,
  UsageError,
} from "./_cli.ts";

const usage =
  `usage: deno task infer generate --model DIR --tokens IDS [--max-new-tokens N] [options]

  --model DIR           Hugging Face LLaMA directory (config.json + model.safetensors or shards)
  --tokens IDS          the prompt: 5,17,3 or "5 17 3" or [5,17,3], or @FILE holding any of those
  --max-new-tokens N    ids to generate (default 256: one image)
  --greedy              arg-max instead of sampling
  --temperature T       softmax temperature (default 1)
  --top-k K             keep the K most likely ids (default ${DEFAULT_TOP_K}; 0 = all)
  --top-p P             nucleus sampling threshold (default 1 = off)
  --seed S              sampling seed (default 0)
  --cpu-sampling        pick each id on the CPU (default: on the GPU, chained, when greedy or top-p 1)
  --json                print {"tokens": [...]} (the new ids only)
  --dtype D             weight storage on the GPU: f32 (default) or f16`;

/** The `generate` subcommand. */
export const generate: Command = {
  summary: "continue a token sequence with the KV cache (greedy or sampled)",
  usage,
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        model: { type: "string" },
        tokens: { type: "string" },
        "max-new-tokens": { type: "string" },
        greedy: { type: "boolean", default: false },
        temperature: { type: "string" },
        "top-k": { type: "string" },
        "top-p": { type: "string" },
        seed: { type: "string" },
        json: { type: "boolean", default: false },
        "cpu-sampling": { type: "boolean", default: false },
        dtype: { type: "string", default: "f32" },
      },
      strict: true,
    });
    if (!values.model) throw new UsageError("--model DIR is required");
    if (!values.tokens) throw new UsageError("--tokens IDS is required");
    if (values.dtype !== "f32" && values.dtype !== "f16") {
      throw new UsageError(`--dtype ${values.dtype}: expected f32 or f16`);
    }
    const n = numberOption("--max-new-tokens", values["max-new-tokens"], 256, {
      integer: true,
      min: 0,
    });
    const temperature = numberOption("--temperature", values.temperature, 1, { min: 1e-6 });
    const topK = numberOption("--top-k", values["top-k"], DEFAULT_TOP_K, { integer: true, min: 0 });
    const topP = numberOption("--top-p", values["top-p"], 1, { min: 1e-9, max: 1 });
    const seed = numberOption("--seed", values.seed, 0, {
      integer: true,
      min: 0,
      max: 2 ** 32 - 1,
    });
    const prompt = parseTokens(values.tokens);
    const log = (s: string) => values.json || console.error(s);

    const c = await readConfig(values.model);
    checkVocab(prompt, c.vocab, values.model);
    const need = prompt.length + Math.max(n - 1, 0);
    if (need > c.maxPositions) {
      throw new RangeError(
        `${prompt.length} prompt ids + ${n} new exceed the model's ${c.maxPositions} positions`,
      );
    }
    const gpu = await getGpu();
    log(`loading ${values.model} (${values.dtype}) on ${gpu.describe()}`);
    const model = await loadLlama(gpu, values.model, {
      dtype: values.dtype,
      onTensor: loadProgress(log),
    });
    const sampler = new Sampler(
      { greedy: values.greedy, temperature, topK, topP, suppressFrom: c.imageCodes },
      seed,
    );
    const session = new DecodeSession(model, { maxTokens: Math.max(need, 1) });
    const t0 = performance.now();
    const tokens = await generateTokens(session, prompt, n, sampler, (_id, i) => {
      if (!values.json && (i + 1) % 64 === 0) log(`  ${i + 1}/${n} tokens`);
    }, { cpuSampling: values["cpu-sampling"] });
    const s = (performance.now() - t0) / 1000;
    if (values.json) console.log(JSON.stringify({ tokens }));
    else {
      log(
        `generated ${tokens.length} tokens in ${s.toFixed(2)} s (${
          (tokens.length / s).toFixed(1)
        } tokens/s)`,
      );
      console.log(tokens.join(","));
    }
    session.release();
    model.release();
    return 0;
  },
};
