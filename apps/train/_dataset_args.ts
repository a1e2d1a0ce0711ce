/**
 * The command line of `deno task train dataset`: its usage text, its flags, and the parser that
 * takes bare words after `--input` / `--combine` as more of their values.
 * @module
 */
import { intFlag, nonNegativeInt, parseFlags, UsageError } from "@lvm/cli";
import { KINDS } from "@lvm/sentence";

export const USAGE = `usage:
  deno task train dataset --tokenizer DIR --kind KIND --input PATH... --out DIR [options]
  deno task train dataset --import-jsonl FILE --out DIR [--tokens-per-image N] [--codebook-size N]
                          [--images N] [--begin ID] [--separator ID] [--end ID]
  deno task train dataset --export-jsonl DIR --out FILE
  deno task train dataset --combine DIR... --out DIR
  deno task train dataset --stats DIR [--json]

Builds visual sentences: images -> VQGAN codes (in GPU batches) -> token shards (binary u16/i32
+ index.json). An interrupted build (Ctrl-C in any phase; Ctrl-C twice quits at once) resumes when
run again with the same arguments; a resume after the input files changed is refused.

kinds:
${Object.entries(KINDS).map(([k, v]) => `  ${k.padEnd(13)} ${v}`).join("\n")}

build options:
  --images N            images per sentence (default 16 = 4096 tokens; multitask: the largest
                        multiple of the modality count that fits)
  --epochs N            passes over the inputs, each a new random grouping (default 1)
  --seed N              seed of every random choice (default 0)
  --stride N            sequence: frame step (default 8 for videos, 1 for frame folders and GIFs)
  --mask random|center  inpainting hole: random square 10-50% of the side (default) or centre half
  --part I/N            build only the I-th of N disjoint parts (1 <= I <= N); --combine the parts
  --separator ID, --begin ID, --end ID
                        special tokens from the reserved ids (default none, as the released LVM)
  --vocab-size N        codes + reserved ids (default codebook + 100 = 8292)
  --shard-sentences N   sentences per shard file (default 4096)
  --batch N             images per tokenizer call (default 64)
  --chunk-images N      images per resumable encode chunk (default 1024)
  --workers N           threads decoding image files (default: CPU cores - 1, at most 8)
  --overwrite           replace what --out holds (start over) instead of resuming or refusing
  --quiet               no progress lines
  --stop-after-chunks K, --stop-after-shards K
                        stop as if interrupted after K chunks / shards (for testing resume)

import options: --tokens-per-image N (256), --codebook-size N (8192), --vocab-size N (8292),
  --tokenizer-id ID (recorded identity, default "unknown"), --shard-sentences N, --overwrite;
  the layout of the lines (default: no special tokens, images per sentence inferred):
  --begin ID, --separator ID, --end ID  special tokens from the reserved ids, as in each line
  --images N            images per sentence
  with any of these every line is checked against the layout (error names the line)
stats options: --json (one JSON object instead of text)`;

/** The flags of `train dataset`. */
export const OPTIONS = {
  tokenizer: { type: "string" },
  kind: { type: "string" },
  input: { type: "string", multiple: true },
  out: { type: "string" },
  "import-jsonl": { type: "string" },
  "export-jsonl": { type: "string" },
  combine: { type: "string", multiple: true },
  stats: { type: "string" },
  json: { type: "boolean" },
  images: { type: "string" },
  epochs: { type: "string" },
  seed: { type: "string" },
  stride: { type: "string" },
  mask: { type: "string" },
  part: { type: "string" },
  separator: { type: "string" },
  begin: { type: "string" },
  end: { type: "string" },
  "vocab-size": { type: "string" },
  "tokens-per-image": { type: "string" },
  "codebook-size": { type: "string" },
  "tokenizer-id": { type: "string" },
  "shard-sentences": { type: "string" },
  batch: { type: "string" },
  "chunk-images": { type: "string" },
  workers: { type: "string" },
  overwrite: { type: "boolean" },
  quiet: { type: "boolean" },
  "stop-after-chunks": { type: "string" },
  "stop-after-shards": { type: "string" },
} as const;

/** Parsed flags of `train dataset`. */
export type Values = ReturnType<typeof parseDatasetArgs>;

/** parseFlags, with bare words after `--input` / `--combine` taken as more of their values. */
export function parseDatasetArgs(args: string[]) {
  const parsed = parseFlags({ args, options: OPTIONS, allowPositionals: true, tokens: true });
  const values = {
    ...parsed.values,
    input: [...(parsed.values.input ?? [])],
    combine: [...(parsed.values.combine ?? [])],
  };
  let last: "input" | "combine" | null = null;
  for (const tok of parsed.tokens ?? []) {
    if (tok.kind === "option") {
      last = tok.name === "input" || tok.name === "combine" ? tok.name : null;
    } else if (tok.kind === "positional") {
      if (!last) throw new UsageError(`unexpected argument "${tok.value}"`);
      values[last].push(tok.value);
    } else last = null;
  }
  return values;
}

/** `--separator` / `--begin` / `--end`: a reserved id, or undefined. */
export function reservedId(v: Values, flag: "separator" | "begin" | "end"): number | undefined {
  return nonNegativeInt(flag, v[flag], undefined);
}

/** The special-token and vocabulary flags as layout fields. */
export function layoutFlags(v: Values) {
  return {
    separatorId: reservedId(v, "separator"),
    beginId: reservedId(v, "begin"),
    endId: reservedId(v, "end"),
    vocabSize: intFlag("vocab-size", v["vocab-size"], undefined, { min: 1 }),
  };
}
