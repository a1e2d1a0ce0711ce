/**
 * The tokenizer as a user sees it: `createTokenizer(config, weights)` (or `@lvm/tokenizer/fs`'s
 * `loadTokenizer(dir)`) -> an object that encodes RGB images to code ids and decodes ids back to
 * images. It implements the `ImageTokenizer` interface of @lvm/sentence
 * (id, resolution, tokensPerImage, codebookSize, encode).
 * @module
 */
import { makeImage, resize, type RgbImage } from "@lvm/image";
import { getGpu, type Gpu } from "./_deps.ts";
import type { VqganConfig } from "./config.ts";
import { Vqgan } from "./model.ts";
import { tokenizerId, type VqganWeights } from "./weights.ts";

/** Options of {@link createTokenizer}. */
export interface CreateTokenizerOptions {
  /** The device context (default: the process's). */
  gpu?: Gpu;
  /** Images per GPU batch (default: as many as fit one storage binding, at most 16). */
  batchSize?: number;
  /** The tokenizer's id when already known (default: {@link tokenizerId} of config and weights). */
  id?: string;
  /**
   * Keep the convs' staged weights between calls (default true: ~8% faster encodes and decodes
   * of one image on lavapipe, for 0.45 GB (`lvm` encoder) and 0.9 GB (decoder) more memory; see
   * `Vqgan.cacheWeights`).
   */
  cacheWeights?: boolean;
}

/** A wrong token list given to {@link VqganTokenizer.decode}. */
export class TokenCountError extends RangeError {
  override name = "TokenCountError";
}

/** A VQGAN tokenizer on the GPU: images <-> code ids (raster order, `grid` x `grid` per image). */
export class VqganTokenizer {
  /** Identity (hash of the config and the f32 weights; the same for every file format). */
  readonly id: string;
  /** Input side in pixels; images of other sizes are squash-resized (bicubic) to it. */
  readonly resolution: number;
  /** Latent grid side (16 for LVM). */
  readonly grid: number;
  /** Codes per image (grid^2). */
  readonly tokensPerImage: number;
  /** Number of codes (8192 for LVM). */
  readonly codebookSize: number;
  readonly #batch: number;

  constructor(readonly model: Vqgan, id: string, batchSize?: number) {
    this.id = id;
    this.resolution = model.config.resolution;
    this.grid = model.geometry.grid;
    this.tokensPerImage = model.geometry.tokensPerImage;
    this.codebookSize = model.config.numEmbeddings;
    const fit = model.maxBatch();
    this.#batch = Math.max(1, Math.min(batchSize ?? 16, fit));
  }

  /** The model's configuration. */
  get config(): VqganConfig {
    return this.model.config;
  }

  /** The images as one (B,3,R,R) array, squash-resized to the resolution where needed. */
  #pack(images: RgbImage[]): Float32Array {
    const R = this.resolution, P = 3 * R * R;
    const x = new Float32Array(images.length * P);
    images.forEach((img, i) => {
      const r = img.width === R && img.height === R ? img : resize(img, R, R);
      x.set(r.data, i * P);
    });
    return x;
  }

  /**
   * Code ids of each image: (grid*grid) Int32Array in raster order (index = row*grid + col). Images
   * are squash-resized to `resolution` x `resolution` (bicubic, as PIL) when their size differs.
   */
  async encode(images: RgbImage[]): Promise<Int32Array[]> {
    const gpu = this.model.gpu, R = this.resolution, T = this.tokensPerImage;
    const out: Int32Array[] = [];
    for (let at = 0; at < images.length; at += this.#batch) {
      const chunk = images.slice(at, at + this.#batch);
      const x = gpu.upload(this.#pack(chunk), [chunk.length, 3, R, R]); // (B,3,R,R)
      const ids = this.model.encodeIds(x); // (B*T)
      const host = (await gpu.read(ids)) as Int32Array;
      x.release();
      ids.release();
      for (let i = 0; i < chunk.length; i++) out.push(host.slice(i * T, (i + 1) * T));
    }
    return out;
  }

  /** Checks one token list: length grid*grid and every id in [0, codebookSize). */
  checkTokens(ids: ArrayLike<number>, label = "tokens"): void {
    const T = this.tokensPerImage, G = this.grid, K = this.codebookSize;
    if (ids.length !== T) {
      throw new TokenCountError(
        `${label}: got ${ids.length} ids, expected ${T} (a ${G}x${G} grid, raster order) for this tokenizer`,
      );
    }
    for (let i = 0; i < ids.length; i++) {
      const v = ids[i];
      if (!Number.isInteger(v) || v < 0 || v >= K) {
        throw new RangeError(`${label}[${i}] is ${v}, expected a code id in [0, ${K})`);
      }
    }
  }

  /** Images (resolution x resolution, clamped to [0,1]) of token lists of grid*grid ids each. */
  async decode(tokens: ArrayLike<number>[]): Promise<RgbImage[]> {
    tokens.forEach((t, i) => this.checkTokens(t, tokens.length > 1 ? `tokens[${i}]` : "tokens"));
    const gpu = this.model.gpu, R = this.resolution, T = this.tokensPerImage, P = 3 * R * R;
    const out: RgbImage[] = [];
    for (let at = 0; at < tokens.length; at += this.#batch) {
      const chunk = tokens.slice(at, at + this.#batch);
      const flat = new Int32Array(chunk.length * T);
      chunk.forEach((t, i) => flat.set(Array.from(t), i * T));
      const ids = gpu.upload(flat, [flat.length], "i32");
      const img = this.model.decodeIds(ids, chunk.length); // (B,3,R,R)
      const host = (await gpu.read(img)) as Float32Array;
      ids.release();
      img.release();
      for (let i = 0; i < chunk.length; i++) {
        out.push(makeImage(R, R, host.slice(i * P, (i + 1) * P)));
      }
    }
    return out;
  }

  /** Frees the GPU weights. */
  release(): void {
    this.model.release();
  }
}

/** A tokenizer from host weights (e.g. freshly trained or random). */
export async function createTokenizer(
  config: VqganConfig,
  weights: VqganWeights,
  options: CreateTokenizerOptions = {},
): Promise<VqganTokenizer> {
  const gpu = options.gpu ?? (await getGpu());
  const model = Vqgan.fromWeights(gpu, config, weights);
  model.cacheWeights(options.cacheWeights ?? true);
  return new VqganTokenizer(model, options.id ?? tokenizerId(config, weights), options.batchSize);
}
