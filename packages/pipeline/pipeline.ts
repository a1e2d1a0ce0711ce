/**
 * The composed LVM: a VQGAN tokenizer and a LLaMA, and what a user does with them: encode images
 * to codes, decode codes to images, continue a prompt of images with new images
 * ({@link LvmPipeline.complete}), score how likely an image is after the others
 * ({@link LvmPipeline.score}, the official evaluation), and the token-level calls under them
 * (generate, logprobs). Every front end (the inference CLI, the demo, a web page) calls these.
 * @module
 */
import type { RgbImage } from "@lvm/image";
import { DEFAULT_TOP_K, generateImages, generateTokens, perplexity, Sampler } from "@lvm/sampler";
import { DecodeSession, type Llama } from "@lvm/transformer";
import type { VqganTokenizer } from "@lvm/tokenizer";
import { assertFiniteScores } from "./finite.ts";

/** How each new id is chosen; the official LVM defaults: temperature 1, top-k 50, top-p 1. */
export interface SamplingChoice {
  /** Arg-max instead of sampling (default false). */
  greedy?: boolean;
  /** Softmax temperature, > 0 (default 1). */
  temperature?: number;
  /** Keep the K most likely ids; 0 = all (default 50). */
  topK?: number;
  /** Nucleus threshold in (0, 1] (default 1 = off). */
  topP?: number;
  /** Sampling seed (default 0). */
  seed?: number;
  /** Pick each id on the CPU even when the GPU could (default false; both draw the same ids). */
  cpuSampling?: boolean;
}

/** Where generation is: called after each new code. */
export interface TokenProgress {
  /** Index of the image being generated (0-based among the new ones). */
  image: number;
  /** Index of the code within that image. */
  token: number;
  /** Codes generated so far, all images together. */
  done: number;
  /** Codes to generate in all. */
  total: number;
}

/** Options of {@link LvmPipeline.complete}. */
export interface CompleteOptions extends SamplingChoice {
  /** Images to generate (default 1). */
  count?: number;
  /** Images of context kept (default 15, the official window of 15 x 256 = 3840 tokens). */
  contextImages?: number;
  /** Called after each generated code (progress output). */
  onToken?: (p: TokenProgress) => void;
  /**
   * Called (and awaited) as each new image's codes are complete, before the next one is generated:
   * decode and show it there to fill a strip image by image.
   */
  onImage?: (index: number, codes: Int32Array) => void | Promise<void>;
}

/** What {@link LvmPipeline.complete} returns. */
export interface Completion {
  /** The generated images (the tokenizer's resolution). */
  images: RgbImage[];
  /** Their codes: `tokensPerImage` ids each, raster order. */
  codes: Int32Array[];
  /** The prompt's codes. */
  prompt: Int32Array[];
}

/** Options of {@link LvmPipeline.generate}. */
export interface GenerateOptions extends SamplingChoice {
  /** Called after each new id with the id and its index. */
  onToken?: (id: number, index: number) => void;
}

/** Log-probabilities of a token sequence and their summary. */
export interface TokenScore {
  /** log p(ids[i] | ids before it) for i >= 1 (natural log, softmax over the whole vocabulary). */
  logprobs: number[];
  /** Negative mean of `logprobs`. */
  nll: number;
  /** exp(nll). */
  perplexity: number;
}

/** What {@link LvmPipeline.score} returns: the official LVM evaluation over examples. */
export interface ImageScore {
  /** Mean over examples of exp(mean NLL of the last image's codes): the official score. */
  perplexity: number;
  /** Mean over examples of the last image's mean NLL (nats per code). */
  nll: number;
  /** Per example: its last image's mean NLL and exp of it. */
  examples: { nll: number; perplexity: number }[];
}

/** The parts of a pipeline; either may be absent when a use needs only the other. */
export interface PipelineParts {
  /** The VQGAN tokenizer (images <-> codes). */
  tokenizer?: VqganTokenizer | null;
  /** The LLaMA over visual sentences. */
  model?: Llama | null;
  /** How messages name the model (its folder, by default "model"). */
  modelName?: string;
  /** How messages name the tokenizer (its folder, by default "tokenizer"). */
  tokenizerName?: string;
}

/**
 * A tokenizer and a model composed into the LVM. The pipeline owns both: {@link release} frees
 * them. Calls that need a part the pipeline lacks throw a TypeError saying which.
 */
export class LvmPipeline {
  readonly #tokenizer: VqganTokenizer | null;
  readonly #model: Llama | null;
  /** How messages name the model. */
  readonly modelName: string;
  /** How messages name the tokenizer. */
  readonly tokenizerName: string;

  constructor(parts: PipelineParts) {
    this.#tokenizer = parts.tokenizer ?? null;
    this.#model = parts.model ?? null;
    this.modelName = parts.modelName ?? "model";
    this.tokenizerName = parts.tokenizerName ?? "tokenizer";
    const tok = this.#tokenizer, model = this.#model;
    if (tok && model && tok.codebookSize > model.config.imageCodes) {
      throw new RangeError(
        `tokenizer ${this.tokenizerName} has ${tok.codebookSize} codes but model ${this.modelName} ` +
          `generates only ${model.config.imageCodes} image codes`,
      );
    }
  }

  /** The tokenizer (a TypeError when the pipeline has none). */
  get tokenizer(): VqganTokenizer {
    if (!this.#tokenizer) throw new TypeError("this pipeline has no tokenizer: give one to load");
    return this.#tokenizer;
  }

  /** The model (a TypeError when the pipeline has none). */
  get model(): Llama {
    if (!this.#model) throw new TypeError("this pipeline has no model: give one to load");
    return this.#model;
  }

  /** Codes per image (the tokenizer's grid squared). */
  get tokensPerImage(): number {
    return this.tokenizer.tokensPerImage;
  }

  /** Code ids of each image (`tokensPerImage` each, raster order; squash-resized to fit). */
  encode(images: RgbImage[]): Promise<Int32Array[]> {
    return this.tokenizer.encode(images);
  }

  /** Images of code lists (`tokensPerImage` ids each). */
  decode(codes: ArrayLike<number>[]): Promise<RgbImage[]> {
    return this.tokenizer.decode(codes);
  }

  /**
   * Continues a prompt of images (video frames, or analogy pairs x1 y1 ... xq) with
   * `options.count` new images: encode, generate image by image (exactly `tokensPerImage` codes
   * each, the last `contextImages` images as context, only codes the tokenizer can decode), decode.
   */
  async complete(images: RgbImage[], options: CompleteOptions = {}): Promise<Completion> {
    if (!images.length) throw new RangeError("complete: the prompt needs at least one image");
    this.model; // fail before encoding when there is no model
    const prompt = await this.encode(images);
    const codes = await this.completeCodes(prompt, options);
    return { images: await this.decode(codes), codes, prompt };
  }

  /** {@link complete} on the prompt's codes: the new images' codes. */
  async completeCodes(
    prompt: ArrayLike<number>[],
    options: CompleteOptions = {},
  ): Promise<Int32Array[]> {
    const model = this.model, tok = this.tokenizer, config = model.config;
    const count = options.count ?? 1, window = options.contextImages ?? 15;
    const T = tok.tokensPerImage;
    if (Math.min(window, prompt.length + count) * T > config.maxPositions) {
      throw new RangeError(
        `${window} images of context of ${T} codes exceed model ${this.modelName}'s ${config.maxPositions} positions`,
      );
    }
    const maxTokens = Math.min(prompt.length, window) * T + (Math.min(count, window) + 1) * T;
    const session = new DecodeSession(model, {
      maxTokens: Math.min(maxTokens, config.maxPositions),
    });
    try {
      // Only ids the tokenizer can decode: a model may have more image codes than its codebook.
      const sampler = this.#sampler(options, Math.min(config.imageCodes, tok.codebookSize));
      const total = count * T;
      return await generateImages(session, prompt, count, sampler, {
        tokensPerImage: T,
        maxContextImages: window,
        cpuSampling: options.cpuSampling,
        onImage: options.onImage,
        onToken: options.onToken &&
          ((image, token) =>
            options.onToken!({ image, token, done: image * T + token + 1, total })),
      });
    } finally {
      session.release();
    }
  }

  /**
   * Continues a token sequence by exactly `count` ids with a KV cache, never emitting ids at or
   * above the model's image-code count (no early stop: LVM's eos id 2 is an image code).
   */
  async generate(
    prompt: readonly number[],
    count: number,
    options: GenerateOptions = {},
  ): Promise<number[]> {
    const model = this.model, c = model.config;
    this.#checkIds(prompt);
    const need = prompt.length + Math.max(count - 1, 0);
    if (need > c.maxPositions) {
      throw new RangeError(
        `${prompt.length} prompt ids + ${count} new exceed the model's ${c.maxPositions} positions`,
      );
    }
    const session = new DecodeSession(model, { maxTokens: Math.max(need, 1) });
    try {
      return await generateTokens(
        session,
        prompt,
        count,
        this.#sampler(options, c.imageCodes),
        options.onToken,
        { cpuSampling: options.cpuSampling },
      );
    } finally {
      session.release();
    }
  }

  /**
   * log p(ids[i] | ids before it) for every i >= 1, their negative mean and its exp, from one pass
   * of the model from position 0. Non-finite results are an error: a {@link
   * NonFiniteWeightsError} naming the model when its weights are not finite.
   */
  async scoreTokens(ids: readonly number[]): Promise<TokenScore> {
    const model = this.model;
    if (ids.length < 2) throw new RangeError("scoring needs at least 2 token ids");
    this.#checkIds(ids);
    if (ids.length > model.config.maxPositions) {
      throw new RangeError(
        `${ids.length} ids exceed the model's ${model.config.maxPositions} positions`,
      );
    }
    const session = new DecodeSession(model, { maxTokens: ids.length });
    let logprobs: number[];
    try {
      logprobs = Array.from(await session.logprobs(ids));
    } finally {
      session.release();
    }
    await assertFiniteScores(model, this.modelName, logprobs);
    return { logprobs, ...perplexity(logprobs) };
  }

  /**
   * The official LVM evaluation of examples, each a list of images: the last image's codes are
   * scored given the images before it (one pass from position 0, softmax over the whole
   * vocabulary); per example exp(mean NLL); the score is the mean of those (not exp of the mean).
   */
  async score(examples: RgbImage[][]): Promise<ImageScore> {
    const codes: Int32Array[][] = [];
    for (const ex of examples) codes.push(await this.encode(ex));
    return this.scoreCodes(codes);
  }

  /** {@link score} on the examples' codes (`tokensPerImage` ids per image). */
  async scoreCodes(examples: ArrayLike<number>[][]): Promise<ImageScore> {
    if (!examples.length) throw new RangeError("score: give at least one example");
    const out: { nll: number; perplexity: number }[] = [];
    for (const [e, images] of examples.entries()) {
      if (images.length < 2) {
        throw new RangeError(`score: example ${e} has ${images.length} image, expected 2 or more`);
      }
      const T = images.at(-1)!.length;
      const ids = images.flatMap((im) => Array.from(im));
      const { logprobs } = await this.scoreTokens(ids);
      out.push(perplexity(logprobs.slice(-T)));
    }
    const mean = (k: "nll" | "perplexity") => out.reduce((s, x) => s + x[k], 0) / out.length;
    return { perplexity: mean("perplexity"), nll: mean("nll"), examples: out };
  }

  /** Frees the model's and the tokenizer's GPU memory. */
  release(): void {
    this.#model?.release();
    this.#tokenizer?.release();
  }

  #sampler(o: SamplingChoice, suppressFrom: number): Sampler {
    return new Sampler({
      greedy: o.greedy ?? false,
      temperature: o.temperature ?? 1,
      topK: o.topK ?? DEFAULT_TOP_K,
      topP: o.topP ?? 1,
      suppressFrom,
    }, o.seed ?? 0);
  }

  /** Throws a RangeError naming the first id outside the model's vocabulary and its position. */
  #checkIds(ids: readonly number[]): void {
    const vocab = this.model.config.vocab;
    const i = ids.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= vocab);
    if (i >= 0) {
      throw new RangeError(
        `token id ${
          ids[i]
        } (position ${i}) is outside the vocabulary of ${this.modelName}: expected 0..${vocab - 1}`,
      );
    }
  }
}
