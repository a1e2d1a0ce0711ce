/**
 * `train dataset --kind KIND --tokenizer DIR --input PATH... --out DIR`: flags -> @lvm/sentence's
 * `buildDataset`, with progress lines, Ctrl-C (stop after the current step, keep what is
 * finished; a second Ctrl-C quits) and what was written.
 * @module
 */
import { formatProgress, intFlag, nonNegativeInt, positiveInt, UsageError } from "@lvm/cli";
import { buildDataset, type BuildProgress, type ImageTokenizer, KINDS } from "@lvm/sentence";
import { layoutFlags, type Values } from "./_dataset_args.ts";

/** A progress printer for stderr: at most one line a second, plus the last. */
function progressPrinter(quiet: boolean): (p: BuildProgress) => void {
  let last = 0;
  return (p) => {
    const now = performance.now();
    if (quiet || (now - last < 1000 && p.phase !== "done")) return;
    last = now;
    console.error(formatProgress({
      label: `[dataset] ${p.phase.padEnd(8)}`,
      unit: "images",
      done: p.imagesDone,
      total: p.imagesTotal,
      seconds: 0,
      rate: p.imagesPerSec,
      eta: p.etaSec,
      fields: [`shards ${p.shardsDone}/${p.shardsTotal}`],
    }));
  };
}

/** `--part I/N` as [I, N]. */
function partFlag(s: string | undefined): [number, number] {
  if (s === undefined) return [1, 1];
  const m = s.match(/^(\d+)\/(\d+)$/);
  if (!m || +m[1] < 1 || +m[1] > +m[2]) {
    throw new UsageError(`--part ${s}: expected I/N with 1 <= I <= N`);
  }
  return [+m[1], +m[2]];
}

/** Builds a dataset from `v`'s flags; resolves to the exit code (130 interrupted, 3 stopped). */
export async function build(
  v: Values,
  openTokenizer: (dir: string) => Promise<ImageTokenizer> | ImageTokenizer,
): Promise<number> {
  const kind = v.kind;
  if (!kind) throw new UsageError("--kind is required to build");
  if (!(kind in KINDS)) {
    throw new UsageError(`--kind ${kind}: expected one of ${Object.keys(KINDS).join(", ")}`);
  }
  if (!v.tokenizer) throw new UsageError("--tokenizer DIR is required to build");
  if (!v.input.length) throw new UsageError("--input PATH... is required to build");
  if (!v.out) throw new UsageError("--out is required");
  const out = v.out;
  const part = partFlag(v.part);
  if (v.mask !== undefined && v.mask !== "random" && v.mask !== "center") {
    throw new UsageError(`--mask ${v.mask}: expected random or center`);
  }
  const stopChunks = positiveInt("stop-after-chunks", v["stop-after-chunks"], undefined);
  const stopShards = positiveInt("stop-after-shards", v["stop-after-shards"], undefined);
  const options = {
    kind,
    inputs: v.input,
    outDir: out,
    imagesPerSentence: positiveInt("images", v.images, 16),
    epochs: positiveInt("epochs", v.epochs, 1),
    seed: intFlag("seed", v.seed, 0),
    stride: positiveInt("stride", v.stride, undefined),
    mask: v.mask as "random" | "center" | undefined,
    part,
    layout: layoutFlags(v),
    shardSentences: positiveInt("shard-sentences", v["shard-sentences"], 4096),
    batchImages: positiveInt("batch", v.batch, 64),
    chunkImages: positiveInt("chunk-images", v["chunk-images"], 1024),
    workers: nonNegativeInt("workers", v.workers, undefined),
    overwrite: v.overwrite,
    stopAfter: stopChunks !== undefined || stopShards !== undefined
      ? { chunks: stopChunks, shards: stopShards }
      : undefined,
    onProgress: progressPrinter(!!v.quiet),
  };
  const tokenizer = await openTokenizer(v.tokenizer);
  // SIGINT and SIGTERM listeners replace the default termination: the first signal aborts the
  // build (it stops within one step of any phase, keeping what is finished), a second one quits.
  const ac = new AbortController();
  let code = 130;
  const onSignal = (name: "Ctrl-C" | "SIGTERM", exit: number) => () => {
    if (ac.signal.aborted) {
      console.error(`[dataset] second ${name}: quitting now (finished chunks and shards are kept)`);
      Deno.exit(exit);
    }
    console.error(`[dataset] ${name}: stopping after the current step (again to quit now)`);
    code = exit;
    ac.abort();
  };
  const onSigint = onSignal("Ctrl-C", 130), onSigterm = onSignal("SIGTERM", 143);
  Deno.addSignalListener("SIGINT", onSigint);
  Deno.addSignalListener("SIGTERM", onSigterm);
  let res;
  try {
    res = await buildDataset({ ...options, tokenizer, signal: ac.signal });
  } catch (e) {
    // The terminal's Ctrl-C also reaches ffmpeg/ffprobe; their failure can surface before the
    // SIGINT listener has run: give it a moment before deciding what happened.
    if (!ac.signal.aborted) await new Promise((r) => setTimeout(r, 100));
    const abort = e instanceof DOMException && e.name === "AbortError";
    if (!abort && !ac.signal.aborted) throw e;
    const what = abort ? e.message : "build interrupted";
    console.error(
      `[dataset] ${what}` + (what.includes("resume") ? "" : "; run the same command to resume"),
    );
    return code;
  } finally {
    Deno.removeSignalListener("SIGINT", onSigint);
    Deno.removeSignalListener("SIGTERM", onSigterm);
  }
  for (const n of res.notes) console.error(`[dataset] note: ${n}`);
  if (!res.complete) {
    console.error(`[dataset] stopped early (resume by running the same command again)`);
    return 3;
  }
  const ix = res.index!, c = ix.counts;
  const rate = res.encodeSeconds > 0 ? res.imagesEncoded / res.encodeSeconds : 0;
  console.log(
    res.alreadyComplete
      ? `${out} already holds this dataset: ${c.sentences} sentences, ${c.tokens} tokens`
      : `wrote ${out}: ${c.sentences} sentences, ${c.images} images, ${c.tokens} tokens, ` +
        `${c.shards} shards (${ix.dtype}); tokenized ${res.imagesEncoded} images in ` +
        `${res.encodeSeconds.toFixed(1)} s (${rate.toFixed(1)} images/s; ` +
        `${res.seconds.toFixed(1)} s in all)` +
        (res.resumed.chunks || res.resumed.shards
          ? `; resumed ${res.resumed.chunks} chunks, ${res.resumed.shards} shards`
          : ""),
  );
  return 0;
}
