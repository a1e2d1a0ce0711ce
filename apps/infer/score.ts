/**
 * `deno task infer score --model DIR --tokens 5,17,3,... [--json] [--dtype f32|f16]`: log p(token_i |
 * tokens before it) for every position i > 0 (natural log, softmax over the full vocabulary), their
 * negative mean (nll) and exp(nll) (perplexity), from one pass of the model over the sequence.
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu } from "@lvm/gpu";
import { perplexity } from "@lvm/sampler";
import { DecodeSession, loadLlama, readConfig } from "@lvm/transformer";
import { checkVocab, type Command, loadProgress, parseTokens, UsageError } from "./_cli.ts";

const usage = `usage: deno task infer score --model DIR --tokens IDS [--json] [--dtype f32|f16]

  --model DIR     Hugging Face LLaMA directory (config.json + model.safetensors or shards)
  --tokens IDS    the sequence: 5,17,3 or "5 17 3" or [5,17,3], or @FILE holding any of those
  --json          print {"logprobs": [...], "nll": x, "perplexity": y}
  --dtype D       weight storage on the GPU: f32 (default) or f16`;

/** The `score` subcommand. */
export const score: Command = {
  summary: "log-probabilities, NLL and perplexity of a token sequence",
  usage,
  async run(args) {
    const { values } = parseArgs({
      args,
      options: {
        model: { type: "string" },
        tokens: { type: "string" },
        json: { type: "boolean", default: false },
        dtype: { type: "string", default: "f32" },
      },
      strict: true,
    });
    if (!values.model) throw new UsageError("--model DIR is required");
    if (!values.tokens) throw new UsageError("--tokens IDS is required");
    if (values.dtype !== "f32" && values.dtype !== "f16") {
      throw new UsageError(`--dtype ${values.dtype}: expected f32 or f16`);
    }
    const ids = parseTokens(values.tokens);
    if (ids.length < 2) throw new UsageError("--tokens: scoring needs at least 2 token ids");
    const log = (s: string) => values.json || console.error(s);
    const config = await readConfig(values.model);
    checkVocab(ids, config.vocab, values.model);
    if (ids.length > config.maxPositions) {
      throw new RangeError(
        `--tokens: ${ids.length} ids exceed the model's ${config.maxPositions} positions`,
      );
    }
    const gpu = await getGpu();
    log(`loading ${values.model} (${values.dtype}) on ${gpu.describe()}`);
    const model = await loadLlama(gpu, values.model, {
      dtype: values.dtype,
      onTensor: loadProgress(log),
    });
    const session = new DecodeSession(model, { maxTokens: ids.length });
    const logprobs = Array.from(await session.logprobs(ids));
    const { nll, perplexity: ppl } = perplexity(logprobs);
    if (values.json) {
      console.log(JSON.stringify({ logprobs, nll, perplexity: ppl }));
    } else {
      console.log(
        `scored ${logprobs.length} tokens: nll ${nll.toFixed(6)}, perplexity ${ppl.toFixed(4)}`,
      );
    }
    session.release();
    model.release();
    return 0;
  },
};
