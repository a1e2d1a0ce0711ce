/**
 * `deno task train dataset`: build, import, export, combine and summarize token-shard datasets.
 * The work is done by @lvm/sentence; this file parses arguments, reports progress on stderr and
 * prints what it wrote.
 * @module
 */

import { parseArgs } from "node:util";
import {
  buildDataset,
  type BuildProgress,
  combineDatasets,
  datasetStats,
  exportJsonl,
  formatStats,
  type ImageTokenizer,
  importJsonl,
  KINDS,
  makeLayout,
} from "@lvm/sentence";
import { type Command, intOption, UsageError } from "./_cli.ts";
import { openTokenizer as defaultOpenTokenizer } from "./_tokenizer.ts";

const USAGE = `usage:
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

const OPTIONS = {
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

type Values = ReturnType<typeof parse>["values"];

/** parseArgs, with bare words after `--input` / `--combine` taken as more of their values. */
function parse(args: string[]) {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: OPTIONS,
      allowPositionals: true,
      strict: true,
      tokens: true,
    });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
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
  return { values };
}

const fmtTime = (s: number) => {
  if (!Number.isFinite(s)) return "?";
  s = Math.round(s);
  return `${Math.floor(s / 3600)}:${String(Math.floor(s / 60) % 60).padStart(2, "0")}:${
    String(s % 60).padStart(2, "0")
  }`;
};

/** A progress printer for stderr: at most one line a second, plus the last. */
function progressPrinter(quiet: boolean): (p: BuildProgress) => void {
  let last = 0;
  return (p) => {
    if (quiet) return;
    const now = performance.now();
    if (now - last < 1000 && p.phase !== "done") return;
    last = now;
    const pct = p.imagesTotal ? ((100 * p.imagesDone) / p.imagesTotal).toFixed(1) : "100.0";
    console.error(
      `[dataset] ${p.phase.padEnd(8)} images ${p.imagesDone}/${p.imagesTotal} (${pct}%) · ` +
        `${p.imagesPerSec.toFixed(1)} images/s · shards ${p.shardsDone}/${p.shardsTotal} · ETA ${
          fmtTime(p.etaSec)
        }`,
    );
  };
}

function reservedId(v: Values, flag: "separator" | "begin" | "end"): number | undefined {
  const s = v[flag];
  return s === undefined ? undefined : intOption(flag, s, 0, { min: 0 });
}

/** Dependencies of the dataset command (tests replace the tokenizer with a test double). */
export interface DatasetDeps {
  openTokenizer(dir: string): Promise<ImageTokenizer> | ImageTokenizer;
}

/** Makes the `dataset` command with the given tokenizer loader. */
export function makeDatasetCommand(
  deps: DatasetDeps = { openTokenizer: defaultOpenTokenizer },
): Command {
  return {
    summary: "build / import / export / combine / summarize visual-sentence datasets",
    usage: USAGE,
    async run(args: string[]): Promise<number> {
      const { values: v } = parse(args);
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
      const mode = modes[0];
      const needOut = () => {
        if (!v.out) throw new UsageError("--out is required");
        return v.out;
      };

      if (mode === "stats") {
        const s = await datasetStats(v.stats!);
        console.log(v.json ? JSON.stringify(s, null, 2) : formatStats(s));
        return 0;
      }
      if (mode === "export") {
        const out = needOut();
        const t0 = performance.now();
        const n = await exportJsonl(v["export-jsonl"]!, out);
        console.log(
          `wrote ${out}: ${n} sentences (${((performance.now() - t0) / 1000).toFixed(1)} s)`,
        );
        return 0;
      }
      if (mode === "import") {
        const out = needOut();
        const layout = {
          tokensPerImage: intOption("tokens-per-image", v["tokens-per-image"], 256, { min: 1 }),
          codebookSize: intOption("codebook-size", v["codebook-size"], 8192, { min: 1 }),
          vocabSize: v["vocab-size"] === undefined
            ? undefined
            : intOption("vocab-size", v["vocab-size"], 0, { min: 1 }),
          imagesPerSentence: v.images === undefined
            ? undefined
            : intOption("images", v.images, 0, { min: 1 }),
          separatorId: reservedId(v, "separator"),
          beginId: reservedId(v, "begin"),
          endId: reservedId(v, "end"),
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
          shardSentences: intOption("shard-sentences", v["shard-sentences"], 4096, { min: 1 }),
          tokenizerId: v["tokenizer-id"],
          overwrite: v.overwrite,
        });
        const L = ix.layout;
        const specials = [["begin", L.beginId], ["separator", L.separatorId], ["end", L.endId]]
          .filter(([, id]) => id !== null).map(([k, id]) => `${k} ${id}`);
        console.log(
          `wrote ${out}: ${ix.counts.sentences} sentences, ${ix.counts.tokens} tokens, ${ix.counts.shards} shards (${ix.dtype})` +
            (specials.length ? `; special tokens ${specials.join(", ")}` : ""),
        );
        return 0;
      }
      if (mode === "combine") {
        const out = needOut();
        const ix = await combineDatasets(v.combine, out, { overwrite: v.overwrite });
        console.log(
          `wrote ${out}/index.json: ${ix.counts.sentences} sentences, ${ix.counts.tokens} tokens, ` +
            `${ix.counts.shards} shards referenced from ${v.combine.length} datasets (no tokens copied)`,
        );
        return 0;
      }

      // Build.
      if (!v.kind) throw new UsageError("--kind is required to build");
      if (!(v.kind in KINDS)) {
        throw new UsageError(`--kind ${v.kind}: expected one of ${Object.keys(KINDS).join(", ")}`);
      }
      if (!v.tokenizer) throw new UsageError("--tokenizer DIR is required to build");
      if (!v.input.length) throw new UsageError("--input PATH... is required to build");
      const out = needOut();
      let part: [number, number] = [1, 1];
      if (v.part !== undefined) {
        const m = v.part.match(/^(\d+)\/(\d+)$/);
        if (!m || +m[1] < 1 || +m[1] > +m[2]) {
          throw new UsageError(`--part ${v.part}: expected I/N with 1 <= I <= N`);
        }
        part = [+m[1], +m[2]];
      }
      if (v.mask !== undefined && v.mask !== "random" && v.mask !== "center") {
        throw new UsageError(`--mask ${v.mask}: expected random or center`);
      }
      const stopChunks = v["stop-after-chunks"], stopShards = v["stop-after-shards"];
      const tokenizer = await deps.openTokenizer(v.tokenizer);
      // A SIGINT listener replaces the default termination: the first Ctrl-C aborts the build
      // (it stops within one step of any phase, keeping what is finished), a second one quits.
      const ac = new AbortController();
      const onSigint = () => {
        if (ac.signal.aborted) {
          console.error(
            "[dataset] second Ctrl-C: quitting now (finished chunks and shards are kept)",
          );
          Deno.exit(130);
        }
        console.error(
          "[dataset] Ctrl-C: stopping after the current step (Ctrl-C again to quit now)",
        );
        ac.abort();
      };
      Deno.addSignalListener("SIGINT", onSigint);
      let res;
      try {
        res = await buildDataset({
          kind: v.kind,
          inputs: v.input,
          outDir: out,
          tokenizer,
          imagesPerSentence: intOption("images", v.images, 16, { min: 1 }),
          epochs: intOption("epochs", v.epochs, 1, { min: 1 }),
          seed: intOption("seed", v.seed, 0),
          stride: v.stride === undefined ? undefined : intOption("stride", v.stride, 1, { min: 1 }),
          mask: v.mask as "random" | "center" | undefined,
          part,
          layout: {
            separatorId: reservedId(v, "separator"),
            beginId: reservedId(v, "begin"),
            endId: reservedId(v, "end"),
            vocabSize: v["vocab-size"] === undefined
              ? undefined
              : intOption("vocab-size", v["vocab-size"], 0, { min: 1 }),
          },
          shardSentences: intOption("shard-sentences", v["shard-sentences"], 4096, { min: 1 }),
          batchImages: intOption("batch", v.batch, 64, { min: 1 }),
          chunkImages: intOption("chunk-images", v["chunk-images"], 1024, { min: 1 }),
          workers: v.workers === undefined
            ? undefined
            : intOption("workers", v.workers, 0, { min: 0 }),
          overwrite: v.overwrite,
          stopAfter: stopChunks !== undefined || stopShards !== undefined
            ? {
              chunks: stopChunks === undefined
                ? undefined
                : intOption("stop-after-chunks", stopChunks, 1, { min: 1 }),
              shards: stopShards === undefined
                ? undefined
                : intOption("stop-after-shards", stopShards, 1, { min: 1 }),
            }
            : undefined,
          signal: ac.signal,
          onProgress: progressPrinter(!!v.quiet),
        });
      } catch (e) {
        // The terminal's Ctrl-C also reaches ffmpeg/ffprobe; their failure can surface before
        // the SIGINT listener has run: give it a moment before deciding what happened.
        if (!ac.signal.aborted) await new Promise((r) => setTimeout(r, 100));
        if ((e instanceof DOMException && e.name === "AbortError") || ac.signal.aborted) {
          const what = e instanceof DOMException && e.name === "AbortError"
            ? e.message
            : "build interrupted";
          console.error(
            `[dataset] ${what}` +
              (what.includes("resume") ? "" : "; run the same command to resume"),
          );
          return 130;
        }
        throw e;
      } finally {
        Deno.removeSignalListener("SIGINT", onSigint);
      }
      for (const n of res.notes) console.error(`[dataset] note: ${n}`);
      if (!res.complete) {
        console.error(`[dataset] stopped early (resume by running the same command again)`);
        return 3;
      }
      const ix = res.index!;
      const rate = res.encodeSeconds > 0 ? res.imagesEncoded / res.encodeSeconds : 0;
      console.log(
        res.alreadyComplete
          ? `${out} already holds this dataset: ${ix.counts.sentences} sentences, ${ix.counts.tokens} tokens`
          : `wrote ${out}: ${ix.counts.sentences} sentences, ${ix.counts.images} images, ${ix.counts.tokens} tokens, ` +
            `${ix.counts.shards} shards (${ix.dtype}); tokenized ${res.imagesEncoded} images in ` +
            `${res.encodeSeconds.toFixed(1)} s (${rate.toFixed(1)} images/s; ` +
            `${res.seconds.toFixed(1)} s in all)` +
            (res.resumed.chunks || res.resumed.shards
              ? `; resumed ${res.resumed.chunks} chunks, ${res.resumed.shards} shards`
              : ""),
      );
      return 0;
    },
  };
}

/** The `dataset` command with the VQGAN tokenizer. */
export const dataset: Command = makeDatasetCommand();
