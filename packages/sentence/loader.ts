/**
 * The training data loader: batches of rows of T tokens from a token-shard dataset.
 *
 * - **packed** (default, the official training packing): sentences, in a seeded shuffled order,
 *   form one token stream cut into rows of T; a row's targets are the next T tokens of the stream
 *   (the last one is the next row's first token), so the loss covers every token. Positions
 *   restart at 0 in every row (the model sees positions 0..T-1); a sentence may straddle rows.
 * - **sentence**: one sentence per row, truncated to T, padded with 0 (mask 0).
 *
 * Order per epoch: the shards in a seeded permutation, and each shard's sentences in a seeded
 * permutation (one shard in memory at a time, so any size works). `shuffle: false` keeps index
 * order. Split: sentence g of the index goes to validation when `hash(splitSeed, g) <
 * valFraction` (independent of the shuffle seed, stable across runs). {@link TokenLoader.state}
 * is a small JSON object; a loader opened with it continues with exactly the next batch.
 * @module
 */

import { mix, permutation, rng } from "@lvm/util";
import { openDataset, type TokenDataset } from "./shards.ts";

/** Options of {@link TokenLoader.open}. */
export interface LoaderOptions {
  /** T: tokens per row (4096 in the released model). */
  rowTokens: number;
  /** B: rows per batch (default 1). */
  batchRows?: number;
  /** "packed" (default) or "sentence" (one sentence per row). */
  packing?: "packed" | "sentence";
  /** Which sentences: "train" (default), "val", or "all". */
  split?: "train" | "val" | "all";
  /** Fraction of sentences in the validation split (default 0.01). */
  valFraction?: number;
  /** Seed of the split (default 0; keep it fixed across runs). */
  splitSeed?: number;
  /** Seed of the order (default 0). */
  seed?: number;
  /** Shuffle shards and sentences (default: true except for "val"). */
  shuffle?: boolean;
  /** Passes over the data before `next()` returns null (default: unbounded, 1 for "val"). */
  epochs?: number;
  /** Continue from a saved {@link TokenLoader.state}. */
  state?: LoaderState;
}

/** Exact position of a loader (JSON-serializable). */
export interface LoaderState {
  epoch: number;
  /** Position in the epoch's shard order. */
  shard: number;
  /** Position in that shard's sentence order (split applied). */
  sentence: number;
  /** Next token inside that sentence. */
  token: number;
  /** Rows returned so far. */
  rows: number;
  /** Identifies the dataset and options the state belongs to. */
  fingerprint: string;
}

/** One batch: (B, T) arrays, row-major. */
export interface Batch {
  /** (B,T) token ids fed to the model. */
  inputs: Int32Array;
  /** (B,T) the next token of each position. */
  targets: Int32Array;
  /** (B,T) 1 where the target counts in the loss, 0 for padding. */
  mask: Uint8Array;
  rows: number;
  rowTokens: number;
  /** Epoch of the batch's first token. */
  epoch: number;
}

interface Pos {
  epoch: number;
  shard: number;
  sentence: number;
  token: number;
}

interface ShardView {
  tokens: Uint16Array | Int32Array;
  offsets: Uint32Array;
  /** Local sentence indices in this epoch's order, split applied. */
  order: Uint32Array;
}

/** Batches of token rows from a dataset; see the module doc. */
export class TokenLoader {
  readonly ds: TokenDataset;
  readonly T: number;
  readonly B: number;
  readonly packing: "packed" | "sentence";
  readonly split: "train" | "val" | "all";
  readonly epochs: number;
  readonly #seed: number;
  readonly #shuffle: boolean;
  readonly #valFraction: number;
  readonly #splitSeed: number;
  readonly #fingerprint: string;
  #pos: Pos;
  #rows: number;
  #cache = new Map<string, ShardView>();

  private constructor(ds: TokenDataset, o: LoaderOptions) {
    this.ds = ds;
    this.T = o.rowTokens;
    this.B = o.batchRows ?? 1;
    this.packing = o.packing ?? "packed";
    this.split = o.split ?? "train";
    this.epochs = o.epochs ?? (this.split === "val" ? 1 : Infinity);
    this.#seed = o.seed ?? 0;
    this.#shuffle = o.shuffle ?? this.split !== "val";
    this.#valFraction = o.valFraction ?? 0.01;
    this.#splitSeed = o.splitSeed ?? 0;
    for (const [k, v] of [["rowTokens", this.T], ["batchRows", this.B]] as const) {
      if (!Number.isInteger(v) || v < 1) {
        throw new RangeError(`TokenLoader: ${k} must be a positive integer, found ${v}`);
      }
    }
    if (!(this.#valFraction >= 0 && this.#valFraction <= 1)) {
      throw new RangeError(
        `TokenLoader: valFraction must be in [0, 1], found ${this.#valFraction}`,
      );
    }
    if (!["packed", "sentence"].includes(this.packing)) {
      throw new RangeError(
        `TokenLoader: packing must be "packed" or "sentence", found ${this.packing}`,
      );
    }
    if (!["train", "val", "all"].includes(this.split)) {
      throw new RangeError(
        `TokenLoader: split must be "train", "val" or "all", found ${this.split}`,
      );
    }
    if (!(this.epochs >= 1)) {
      throw new RangeError(`TokenLoader: epochs must be >= 1, found ${this.epochs}`);
    }
    const crcs = ds.index.shards.map((r) => parseInt(r.crc32, 16));
    this.#fingerprint = [
      mix(ds.sentences, ds.shards, ...crcs).toString(16),
      this.T,
      this.packing,
      this.split,
      this.#valFraction,
      this.#splitSeed,
      this.#seed,
      this.#shuffle,
    ].join(":"); // deno-fmt-ignore
    this.#pos = { epoch: 0, shard: 0, sentence: 0, token: 0 };
    this.#rows = 0;
    if (o.state) {
      const s = o.state;
      if (s.fingerprint !== this.#fingerprint) {
        throw new RangeError(
          `TokenLoader: the saved state belongs to another dataset or other loader options ` +
            `(state ${s.fingerprint}, this loader ${this.#fingerprint})`,
        );
      }
      this.#pos = { epoch: s.epoch, shard: s.shard, sentence: s.sentence, token: s.token };
      this.#rows = s.rows;
    }
  }

  /** Opens the dataset in `dir` (or uses an open one) and positions the loader. */
  static async open(dataset: string | TokenDataset, opts: LoaderOptions): Promise<TokenLoader> {
    const ds = typeof dataset === "string" ? await openDataset(dataset) : dataset;
    return new TokenLoader(ds, opts);
  }

  /** The position after the last batch returned. */
  state(): LoaderState {
    return { ...this.#pos, rows: this.#rows, fingerprint: this.#fingerprint };
  }

  /** True when sentence `g` (global index) belongs to this loader's split. */
  inSplit(g: number): boolean {
    if (this.split === "all") return true;
    const val = mix(this.#splitSeed, 13, g) / 4294967296 < this.#valFraction;
    return this.split === "val" ? val : !val;
  }

  #permEpoch = -1;
  #perm: Uint32Array = new Uint32Array(0);

  #shardAt(epoch: number, p: number): number {
    if (!this.#shuffle) return p;
    if (this.#permEpoch !== epoch) {
      this.#perm = permutation(this.ds.shards, rng(this.#seed, 11, epoch));
      this.#permEpoch = epoch;
    }
    return this.#perm[p];
  }

  async #view(epoch: number, p: number): Promise<ShardView> {
    const id = this.#shardAt(epoch, p);
    const key = `${epoch}:${id}`;
    const hit = this.#cache.get(key);
    if (hit) return hit;
    const { tokens, offsets } = await this.ds.readShard(id);
    const n = offsets.length - 1;
    const perm = this.#shuffle
      ? permutation(n, rng(this.#seed, 12, epoch, id))
      : Uint32Array.from({ length: n }, (_, i) => i);
    const start = this.ds.shardStarts[id];
    const order = perm.filter((i) => this.inSplit(start + i));
    const view = { tokens, offsets, order };
    if (this.#cache.size >= 2) this.#cache.delete(this.#cache.keys().next().value!);
    this.#cache.set(key, view);
    return view;
  }

  /**
   * Moves `pos` to a sentence with tokens left; returns its view, or null at the end of the last
   * epoch. Throws when a whole epoch holds no sentence of the split.
   */
  async #settle(pos: Pos): Promise<ShardView | null> {
    let emptyShards = 0;
    while (true) {
      if (pos.epoch >= this.epochs) return null;
      if (pos.shard >= this.ds.shards) {
        if (emptyShards >= this.ds.shards) {
          throw new RangeError(
            `TokenLoader: the "${this.split}" split of ${this.ds.dir} holds no sentence`,
          );
        }
        pos.epoch++;
        pos.shard = 0;
        pos.sentence = 0;
        pos.token = 0;
        emptyShards = 0;
        continue;
      }
      const v = await this.#view(pos.epoch, pos.shard);
      if (pos.sentence >= v.order.length) {
        if (v.order.length === 0) emptyShards++;
        pos.shard++;
        pos.sentence = 0;
        pos.token = 0;
        continue;
      }
      const s = v.order[pos.sentence];
      const len = v.offsets[s + 1] - v.offsets[s];
      if (pos.token >= len) {
        pos.sentence++;
        pos.token = 0;
        continue;
      }
      return v;
    }
  }

  /** Copies up to `n` stream tokens from `pos` into `out` at `at`, advancing `pos`. */
  async #read(pos: Pos, n: number, out: Int32Array, at: number): Promise<number> {
    let got = 0;
    while (got < n) {
      const v = await this.#settle(pos);
      if (!v) break;
      const s = v.order[pos.sentence];
      const a = v.offsets[s] + pos.token, b = v.offsets[s + 1];
      const k = Math.min(n - got, b - a);
      for (let i = 0; i < k; i++) out[at + got + i] = v.tokens[a + i];
      got += k;
      pos.token += k;
    }
    return got;
  }

  /** The next batch, or null when the last epoch is exhausted. */
  async next(): Promise<Batch | null> {
    const { T, B } = this;
    const inputs = new Int32Array(B * T),
      targets = new Int32Array(B * T),
      mask = new Uint8Array(B * T);
    const epoch = this.#pos.epoch;
    let filled = 0;
    const one = new Int32Array(1);
    for (let r = 0; r < B; r++) {
      const o = r * T;
      if (this.packing === "packed") {
        const got = await this.#read(this.#pos, T, inputs, o);
        if (got === 0) break;
        for (let i = 0; i + 1 < got; i++) {
          targets[o + i] = inputs[o + i + 1];
          mask[o + i] = 1;
        }
        const peek = { ...this.#pos };
        if (got === T && (await this.#read(peek, 1, one, 0)) === 1) {
          targets[o + T - 1] = one[0];
          mask[o + T - 1] = 1;
        }
      } else {
        const v = await this.#settle(this.#pos);
        if (!v) break;
        const s = v.order[this.#pos.sentence];
        const a = v.offsets[s], len = v.offsets[s + 1] - a;
        const k = Math.min(len, T);
        for (let i = 0; i < k; i++) inputs[o + i] = v.tokens[a + i];
        for (let i = 0; i < k && i + 1 < len; i++) {
          targets[o + i] = v.tokens[a + i + 1];
          mask[o + i] = 1;
        }
        this.#pos.sentence++;
        this.#pos.token = 0;
      }
      filled++;
      this.#rows++;
    }
    if (filled === 0) return null;
    return { inputs, targets, mask, rows: B, rowTokens: T, epoch };
  }
}
