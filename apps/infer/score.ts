/**
 * `deno task infer score --model DIR --tokens 5,17,3,... [--json] [--dtype f32|f16|q8|q4]`:
 * log p(token_i | tokens before it) for every position i > 0 (natural log, softmax over the full
 * vocabulary), their negative mean (nll) and exp(nll) (perplexity), from one pass of the model over
 * the sequence. A model whose weights are not finite is an error (exit 1) naming it.
 * @module
 */
import { checkVocab, type Command, parseFlags, parseTokens, required, UsageError } from "@lvm/cli";
import { readConfig } from "@lvm/transformer/fs";
import { dtypeFlag, loadModel, MODEL_TOKENS_OPTIONS } from "./_cli.ts";

const usage =
  `usage: deno task infer score --model DIR --tokens IDS [--json] [--dtype f32|f16|q8|q4]

  --model DIR     Hugging Face LLaMA directory (config.json + model.safetensors or shards)
  --tokens IDS    the sequence: 5,17,3 or "5 17 3" or [5,17,3], or @FILE holding any of those
  --json          print {"logprobs": [...], "nll": x, "perplexity": y}
  --dtype D       weight storage on the GPU: f32 (default), f16, q8 or q4 (GGML Q8_0 /
                  Q4_0 blocks, quantized while loading)`;

/** The `score` subcommand. */
export const score: Command = {
  summary: "log-probabilities, NLL and perplexity of a token sequence",
  usage,
  async run(args) {
    const { values } = parseFlags({ args, options: MODEL_TOKENS_OPTIONS });
    const model = required("model", values.model, "DIR");
    const ids = parseTokens(required("tokens", values.tokens, "IDS"));
    const dtype = dtypeFlag(values.dtype);
    if (ids.length < 2) throw new UsageError("--tokens: scoring needs at least 2 token ids");
    const log = (s: string) => values.json || console.error(s);
    const config = await readConfig(model);
    checkVocab(ids, config.vocab, model);
    if (ids.length > config.maxPositions) {
      throw new RangeError(
        `--tokens: ${ids.length} ids exceed the model's ${config.maxPositions} positions`,
      );
    }
    const lvm = await loadModel(model, dtype, log);
    try {
      const { logprobs, nll, perplexity } = await lvm.scoreTokens(ids);
      if (values.json) console.log(JSON.stringify({ logprobs, nll, perplexity }));
      else {
        console.log(
          `scored ${logprobs.length} tokens: nll ${nll.toFixed(6)}, perplexity ${
            perplexity.toFixed(4)
          }`,
        );
      }
    } finally {
      lvm.release();
    }
    return 0;
  },
};
