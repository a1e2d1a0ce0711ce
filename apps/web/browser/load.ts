/**
 * Loading the tokenizer and model in the browser from the files the server lists: config.json
 * fetched whole, weights read through HTTP byte ranges ({@link HttpSource}), so a tensor at a time
 * crosses the network and host memory (the same `TensorSource` path as `@lvm/pipeline/fs`).
 * @module
 */
import type { Gpu } from "@lvm/gpu";
import {
  type ByteSource,
  SafetensorsReader,
  ShardedCheckpoint,
  type TensorSource,
  TorchBinReader,
} from "@lvm/weights";
import { loadLlamaFrom, parseHfConfig } from "@lvm/transformer";
import { LvmPipeline, tokenizerFromSource } from "@lvm/pipeline";
import type { ServedFile, WebConfig } from "../api.ts";

/** A file on the server read by byte ranges (`Range: bytes=a-b`). */
export class HttpSource implements ByteSource {
  #closed = false;
  constructor(readonly path: string, readonly size: number) {}

  async read(offset: number, length: number): Promise<Uint8Array> {
    if (this.#closed) throw new Error(`${this.path}: read after close`);
    const end = Math.min(offset + length, this.size) - 1;
    if (end < offset) return new Uint8Array(0);
    const r = await fetch(this.path, { headers: { range: `bytes=${offset}-${end}` } });
    if (!r.ok) throw new Error(`${this.path}: HTTP ${r.status} for bytes ${offset}-${end}`);
    const bytes = new Uint8Array(await r.arrayBuffer());
    // A server that ignores Range answers 200 with the whole file.
    return r.status === 206 ? bytes : bytes.slice(offset, end + 1);
  }

  close(): void {
    this.#closed = true;
  }

  get closed(): boolean {
    return this.#closed;
  }
}

async function fetchText(f: ServedFile): Promise<string> {
  const r = await fetch(f.url);
  if (!r.ok) throw new Error(`${f.url}: HTTP ${r.status}`);
  return await r.text();
}

function open(f: ServedFile): Promise<TensorSource> {
  const src = new HttpSource(f.url, f.size);
  return f.name.endsWith(".bin")
    ? TorchBinReader.fromSource(src)
    : SafetensorsReader.fromSource(src);
}

/** Opens a folder's weights: the first of `names` present, or a sharded index. */
async function openWeights(
  folder: string,
  files: ServedFile[],
  names: string[],
): Promise<TensorSource> {
  const byName = new Map(files.map((f) => [f.name, f]));
  for (const n of names) {
    const f = byName.get(n);
    if (!f) continue;
    if (!n.endsWith(".index.json")) return await open(f);
    return await ShardedCheckpoint.fromIndex(f.url, await fetchText(f), {
      locate: (file) => file,
      exists: (file) => Promise.resolve(byName.has(file)),
      open: (file) => open(byName.get(file)!),
    });
  }
  throw new Error(`${folder}: no weight file found; expected one of ${names.join(", ")}`);
}

function configFile(folder: string, files: ServedFile[]): ServedFile {
  const f = files.find((x) => x.name === "config.json");
  if (!f) throw new Error(`${folder}: no config.json`);
  return f;
}

/** Where loading is: a message for the page. */
export type LoadProgress = (message: string, fraction: number) => void;

/** The tokenizer and model the server offers, as one pipeline. */
export async function loadServedPipeline(
  gpu: Gpu,
  cfg: WebConfig,
  progress: LoadProgress = () => {},
): Promise<LvmPipeline> {
  if (!cfg.tokenizer || !cfg.model) {
    throw new Error(
      "the server has no " + (cfg.tokenizer ? "model" : "tokenizer") +
        ": start it with --model DIR --tokenizer DIR (or put them in models/lvm and models/tokenizer)",
    );
  }
  const tk = cfg.tokenizer, md = cfg.model;
  progress(`tokenizer ${tk.name}`, 0);
  const tSource = await openWeights(tk.name, tk.files, [
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin",
  ]);
  const tokenizer = await tokenizerFromSource(
    JSON.parse(await fetchText(configFile(tk.name, tk.files))),
    tSource,
    { gpu },
  ).finally(() => tSource.close());
  try {
    const config = parseHfConfig(
      await fetchText(configFile(md.name, md.files)),
      `${md.name}/config.json`,
    );
    const source = await openWeights(md.name, md.files, [
      "model.safetensors",
      "model.safetensors.index.json",
      "pytorch_model.bin",
    ]);
    const model = await loadLlamaFrom(gpu, config, source, {
      onTensor: (name, i, n) => progress(`model ${md.name}: ${name}`, (i + 1) / n),
    }).finally(() => source.close());
    return new LvmPipeline({ tokenizer, model, modelName: md.name, tokenizerName: tk.name });
  } catch (e) {
    tokenizer.release();
    throw e;
  }
}
