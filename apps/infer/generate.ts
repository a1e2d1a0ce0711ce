/**
 * `deno task infer generate --model DIR --tokens IDS --max-new-tokens N [--greedy] [--temperature T]
 * [--top-k K] [--top-p P] [--seed S] [--json]`: continues a token sequence by exactly N ids with a KV
 * cache, never emitting ids at or above the model's image-code count (no early stop: LVM's eos id 2
 * is an image code). Sampling defaults are the official LVM code's: temperature 1, top-k 50, top-p 1.
 * @module
 */
import {
  checkVocab,
  type Command,
  nonNegativeInt,
  parseFlags,
  parseTokens,
  required,
} from "@lvm/cli";
import { readConfig } from "@lvm/transformer/fs";
import {
  dtypeFlag,
  loadModel,
  MODEL_TOKENS_OPTIONS,
  SAMPLING_OPTIONS,
  SAMPLING_USAGE,
  samplingChoice,
} from "./_cli.ts";

const usage =
  `usage: deno task infer generate --model DIR --tokens IDS [--max-new-tokens N] [options]

  --model DIR           Hugging Face LLaMA directory (config.json + model.safetensors or shards)
  --tokens IDS          the prompt: 5,17,3 or "5 17 3" or [5,17,3], or @FILE holding any of those
  --max-new-tokens N    ids to generate (default 256: one image)
${SAMPLING_USAGE}
  --json                print {"tokens": [...]} (the new ids only)
  --dtype D             weight storage on the GPU: f32 (default), f16, q8 or q4 (GGML
                        Q8_0 / Q4_0 blocks, quantized while loading)`;

/** The `generate` subcommand. */
export const generate: Command = {
  summary: "continue a token sequence with the KV cache (greedy or sampled)",
  usage,
  async run(args) {
    const { values } = parseFlags({
      args,
      options: {
        ...MODEL_TOKENS_OPTIONS,
        "max-new-tokens": { type: "string" },
        ...SAMPLING_OPTIONS,
      },
    });
    const model = required("model", values.model, "DIR");
    const tokens = required("tokens", values.tokens, "IDS");
    const dtype = dtypeFlag(values.dtype);
    const n = nonNegativeInt("max-new-tokens", values["max-new-tokens"], 256);
    const sampling = samplingChoice(values);
    const prompt = parseTokens(tokens);
    const log = (s: string) => values.json || console.error(s);

    checkVocab(prompt, (await readConfig(model)).vocab, model);
    const lvm = await loadModel(model, dtype, log);
    try {
      const t0 = performance.now();
      const ids = await lvm.generate(prompt, n, {
        ...sampling,
        onToken: (_id, i) => {
          if (!values.json && (i + 1) % 64 === 0) log(`  ${i + 1}/${n} tokens`);
        },
      });
      const s = (performance.now() - t0) / 1000;
      if (values.json) console.log(JSON.stringify({ tokens: ids }));
      else {
        log(
          `generated ${ids.length} tokens in ${s.toFixed(2)} s (${
            (ids.length / s).toFixed(1)
          } tokens/s)`,
        );
        console.log(ids.join(","));
      }
    } finally {
      lvm.release();
    }
    return 0;
  },
};
