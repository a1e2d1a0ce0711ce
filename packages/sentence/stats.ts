/**
 * Dataset summary (`train dataset --stats DIR`): counts, layout, tokenizer, sources, sentence
 * lengths and how the codebook is used, streamed shard by shard.
 * @module
 */

import { openDataset } from "./shards.ts";
import type { DatasetIndex } from "./shards.ts";

/** What {@link datasetStats} reports. */
export interface DatasetStats {
  dir: string;
  sentences: number;
  tokens: number;
  images: number;
  shards: number;
  /** Bytes of the shard files. */
  bytes: number;
  dtype: string;
  layout: DatasetIndex["layout"];
  tokenizer: DatasetIndex["tokenizer"];
  sources: DatasetIndex["sources"];
  /** The build kind, "import", "combined" or "unknown". */
  origin: string;
  sentenceTokens: { min: number; max: number; mean: number };
  codes: {
    /** Distinct image codes used, of codebookSize. */
    distinct: number;
    codebookSize: number;
    /** Entropy of the code unigram distribution, bits, and its perplexity 2^H. */
    entropyBits: number;
    perplexity: number;
    /** Most frequent codes. */
    top: { id: number; count: number }[];
  };
  /** Tokens with ids >= codebookSize (special tokens). */
  reservedTokens: number;
}

/** Reads every shard of `dir` (validated) and summarizes it. */
export async function datasetStats(dir: string): Promise<DatasetStats> {
  const ds = await openDataset(dir);
  const ix = ds.index;
  const V = ix.layout.vocabSize, K = ix.layout.codebookSize;
  const hist = new Float64Array(V);
  let min = Infinity, max = 0;
  for (let s = 0; s < ds.shards; s++) {
    const { tokens, offsets } = await ds.readShard(s);
    for (let k = 0; k < tokens.length; k++) hist[tokens[k]]++;
    for (let k = 0; k + 1 < offsets.length; k++) {
      const len = offsets[k + 1] - offsets[k];
      if (len < min) min = len;
      if (len > max) max = len;
    }
  }
  let codeTotal = 0, distinct = 0, reserved = 0;
  for (let i = 0; i < V; i++) {
    if (i < K) {
      codeTotal += hist[i];
      if (hist[i]) distinct++;
    } else reserved += hist[i];
  }
  let H = 0;
  for (let i = 0; i < K; i++) {
    if (hist[i]) H -= (hist[i] / codeTotal) * Math.log2(hist[i] / codeTotal);
  }
  const top = [...hist.subarray(0, K).keys()].filter((i) => hist[i] > 0)
    .sort((a, b) => hist[b] - hist[a] || a - b).slice(0, 5).map((id) => ({ id, count: hist[id] }));
  const p = ix.provenance ?? {};
  const origin = typeof p.kind === "string"
    ? p.kind
    : p.import
    ? "import"
    : p.combined
    ? "combined"
    : "unknown";
  return {
    dir,
    sentences: ix.counts.sentences,
    tokens: ix.counts.tokens,
    images: ix.counts.images,
    shards: ix.counts.shards,
    bytes: ix.shards.reduce((a, r) => a + r.bytes, 0),
    dtype: ix.dtype,
    layout: ix.layout,
    tokenizer: ix.tokenizer,
    sources: ix.sources,
    origin,
    sentenceTokens: {
      min: ix.counts.sentences ? min : 0,
      max,
      mean: ix.counts.sentences ? ix.counts.tokens / ix.counts.sentences : 0,
    },
    codes: { distinct, codebookSize: K, entropyBits: H, perplexity: 2 ** H, top },
    reservedTokens: reserved,
  };
}

const num = (n: number) => n.toLocaleString("en-US");
const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;

/** Human-readable text of {@link datasetStats}. */
export function formatStats(s: DatasetStats): string {
  const L = s.layout;
  const specials = [["begin", L.beginId], ["separator", L.separatorId], ["end", L.endId]]
    .filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
  const lines = [
    `dataset ${s.dir} (${s.origin})`,
    `  sentences   ${num(s.sentences)}   images ${num(s.images)}   tokens ${num(s.tokens)}`,
    `  shards      ${num(s.shards)} x ${s.dtype}, ${mib(s.bytes)}`,
    `  layout      ${L.imagesPerSentence || "variable"} images x ${L.tokensPerImage} tokens, ` +
    `codes ${num(L.codebookSize)}, vocab ${num(L.vocabSize)}, special tokens: ${specials}`,
    `  tokenizer   ${s.tokenizer.id} (${s.tokenizer.resolution}px, ${s.tokenizer.tokensPerImage} tokens/image)`,
    `  sentence    ${num(s.sentenceTokens.min)}..${num(s.sentenceTokens.max)} tokens, mean ${
      s.sentenceTokens.mean.toFixed(1)
    }`,
    `  codes used  ${num(s.codes.distinct)} of ${num(s.codes.codebookSize)} ` +
    `(${((100 * s.codes.distinct) / s.codes.codebookSize).toFixed(1)}%), entropy ${
      s.codes.entropyBits.toFixed(2)
    } bits, ` +
    `perplexity ${s.codes.perplexity.toFixed(1)}`,
    `  top codes   ${s.codes.top.map((t) => `${t.id} (${num(t.count)})`).join(", ") || "-"}`,
    `  reserved    ${num(s.reservedTokens)} tokens`,
    `  sources     ${s.sources.length}`,
    ...s.sources.slice(0, 10).map((x) =>
      `    ${x.type.padEnd(6)} ${num(x.items).padStart(8)}  ${x.path}`
    ),
  ];
  if (s.sources.length > 10) lines.push(`    ... ${s.sources.length - 10} more`);
  return lines.join("\n");
}
