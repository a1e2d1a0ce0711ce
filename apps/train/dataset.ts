/**
 * `deno task train dataset`: build, import, export, combine and summarize token-shard datasets.
 * The work is done by @lvm/sentence; this file picks the mode and maps its flags to the package
 * call (the flags are in _dataset_args.ts, the build in _dataset_build.ts).
 * @module
 */
import { type Command, positiveInt, UsageError } from "@lvm/cli";
import {
  combineDatasets,
  datasetStats,
  exportJsonl,
  formatStats,
  type ImageTokenizer,
  importJsonl,
  makeLayout,
} from "@lvm/sentence";
import { layoutFlags, parseDatasetArgs, USAGE, type Values } from "./_dataset_args.ts";
import { build } from "./_dataset_build.ts";
import { openTokenizer as defaultOpenTokenizer } from "./_tokenizer.ts";

/** Dependencies of the dataset command (tests replace the tokenizer with a test double). */
export interface DatasetDeps {
  openTokenizer(dir: string): Promise<ImageTokenizer> | ImageTokenizer;
}

/** `--import-jsonl FILE --out DIR`: the official JSONL format into token shards. */
async function importMode(v: Values, out: string): Promise<number> {
  const layout = {
    ...layoutFlags(v),
    tokensPerImage: positiveInt("tokens-per-image", v["tokens-per-image"], 256),
    codebookSize: positiveInt("codebook-size", v["codebook-size"], 8192),
    imagesPerSentence: positiveInt("images", v.images, undefined),
  };
  try {
    makeLayout(layout);
  } catch (e) {
    const flags: Record<string, string> = {
      separatorId: "--separator",
      beginId: "--begin",
      endId: "--end",
      vocabSize: "--vocab-size",
    };
    throw new UsageError(
      (e as Error).message.replace(/^layout\.(\w+)/, (_, k) => flags[k] ?? `--${k}`),
    );
  }
  const ix = await importJsonl(v["import-jsonl"]!, out, {
    layout,
    shardSentences: positiveInt("shard-sentences", v["shard-sentences"], 4096),
    tokenizerId: v["tokenizer-id"],
    overwrite: v.overwrite,
  });
  const L = ix.layout, c = ix.counts;
  const specials = [["begin", L.beginId], ["separator", L.separatorId], ["end", L.endId]]
    .filter(([, id]) => id !== null).map(([k, id]) => `${k} ${id}`);
  console.log(
    `wrote ${out}: ${c.sentences} sentences, ${c.tokens} tokens, ${c.shards} shards (${ix.dtype})` +
      (specials.length ? `; special tokens ${specials.join(", ")}` : ""),
  );
  return 0;
}

/** Makes the `dataset` command with the given tokenizer loader. */
export function makeDatasetCommand(
  deps: DatasetDeps = { openTokenizer: defaultOpenTokenizer },
): Command {
  return {
    summary: "build / import / export / combine / summarize visual-sentence datasets",
    usage: USAGE,
    async run(args: string[]): Promise<number> {
      const v = parseDatasetArgs(args);
      const modes = [
        v.kind !== undefined || v.tokenizer !== undefined || v.input.length > 0 ? "build" : null,
        v["import-jsonl"] !== undefined ? "import" : null,
        v["export-jsonl"] !== undefined ? "export" : null,
        v.combine.length ? "combine" : null,
        v.stats !== undefined ? "stats" : null,
      ].filter((m) => m !== null);
      if (modes.length !== 1) {
        throw new UsageError(
          modes.length
            ? `choose one of build (--kind), --import-jsonl, --export-jsonl, --combine, --stats; found ${
              modes.join(" + ")
            }`
            : "nothing to do: give --kind ... , --import-jsonl, --export-jsonl, --combine or --stats",
        );
      }
      if (modes[0] === "build") return await build(v, deps.openTokenizer);
      if (modes[0] === "stats") {
        const s = await datasetStats(v.stats!);
        console.log(v.json ? JSON.stringify(s, null, 2) : formatStats(s));
        return 0;
      }
      if (!v.out) throw new UsageError("--out is required");
      if (modes[0] === "import") return await importMode(v, v.out);
      const t0 = performance.now();
      if (modes[0] === "export") {
        const n = await exportJsonl(v["export-jsonl"]!, v.out);
        const s = (performance.now() - t0) / 1000;
        console.log(`wrote ${v.out}: ${n} sentences (${s.toFixed(1)} s)`);
        return 0;
      }
      const ix = await combineDatasets(v.combine, v.out, { overwrite: v.overwrite });
      console.log(
        `wrote ${v.out}/index.json: ${ix.counts.sentences} sentences, ${ix.counts.tokens} tokens, ` +
          `${ix.counts.shards} shards referenced from ${v.combine.length} datasets (no tokens copied)`,
      );
      return 0;
    },
  };
}

/** The `dataset` command with the VQGAN tokenizer. */
export const dataset: Command = makeDatasetCommand();
