/**
 * `deno task infer complete --model DIR --tokenizer DIR --out DIR IMAGE... [--count N] [options]`:
 * the LVM's task interface. The prompt images (video frames, or analogy pairs x1 y1 ... xq) are
 * tokenized by the VQGAN, the transformer continues the visual sentence image by image (exactly
 * `tokensPerImage` codes each, the last 15 images of context, official sampling defaults), and the
 * new images are decoded and written as PNGs, with a strip of prompt + generated images.
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { mkdirSync } from "node:fs";
import { hstack, loadFrames, loadImage, resize, type RgbImage, savePng } from "@lvm/image";
import { getGpu } from "@lvm/gpu";
import { DEFAULT_TOP_K, generateImages, Sampler } from "@lvm/sampler";
import { loadTokenizer } from "@lvm/tokenizer";
import { writeFileAtomic } from "@lvm/util/fs";
import { DecodeSession, loadLlama, readConfig } from "@lvm/transformer";
import { type Command, loadProgress, numberOption, UsageError } from "./_cli.ts";

const usage =
  `usage: deno task infer complete --model DIR --tokenizer DIR --out DIR IMAGE... [options]

  IMAGE...              the prompt, in order (PNG/JPEG/GIF; --frames takes every GIF frame)
  --model DIR           LVM transformer (Hugging Face LLaMA layout)
  --tokenizer DIR       VQGAN tokenizer folder (its codebook must match the model's image codes)
  --out DIR             where next-1.png ..., strip.png and codes.json ({"tokens": [[ids]...]})
                        are written
  --count N             images to generate (default 1)
  --context N           images of context kept (default 15, the official window)
  --greedy              arg-max instead of sampling
  --temperature T       (default 1)   --top-k K (default ${DEFAULT_TOP_K})   --top-p P (default 1)
  --seed S              sampling seed (default 0)
  --cpu-sampling        pick each code on the CPU (default: on the GPU, chained, when greedy or top-p 1)
  --frames              read every frame of GIF prompts
  --dtype f32|f16       weight storage on the GPU (default f32)
  --json                print {"images": [paths], "tokens": [[ids]...], "strip": path, "codes": path}`;

/** The `complete` subcommand. */
export const complete: Command = {
  summary: "prompt images in, the next images out (PNG)",
  usage,
  async run(args) {
    const { values, positionals } = parseArgs({
      args,
      options: {
        model: { type: "string" },
        tokenizer: { type: "string" },
        out: { type: "string" },
        count: { type: "string" },
        context: { type: "string" },
        greedy: { type: "boolean", default: false },
        temperature: { type: "string" },
        "top-k": { type: "string" },
        "top-p": { type: "string" },
        seed: { type: "string" },
        frames: { type: "boolean", default: false },
        dtype: { type: "string", default: "f32" },
        "cpu-sampling": { type: "boolean", default: false },
        json: { type: "boolean", default: false },
      },
      allowPositionals: true,
      strict: true,
    });
    if (!values.model) throw new UsageError("--model DIR is required");
    if (!values.tokenizer) throw new UsageError("--tokenizer DIR is required");
    if (!values.out) throw new UsageError("--out DIR is required");
    if (!positionals.length) throw new UsageError("give at least one prompt IMAGE");
    if (values.dtype !== "f32" && values.dtype !== "f16") {
      throw new UsageError(`--dtype ${values.dtype}: expected f32 or f16`);
    }
    const count = numberOption("--count", values.count, 1, { integer: true, min: 1 });
    const window = numberOption("--context", values.context, 15, { integer: true, min: 1 });
    const temperature = numberOption("--temperature", values.temperature, 1, { min: 1e-6 });
    const topK = numberOption("--top-k", values["top-k"], DEFAULT_TOP_K, { integer: true, min: 0 });
    const topP = numberOption("--top-p", values["top-p"], 1, { min: 1e-9, max: 1 });
    const seed = numberOption("--seed", values.seed, 0, {
      integer: true,
      min: 0,
      max: 2 ** 32 - 1,
    });
    const log = (s: string) => values.json || console.error(s);

    const prompt: RgbImage[] = [];
    for (const p of positionals) {
      prompt.push(...(values.frames ? await loadFrames(p) : [await loadImage(p)]));
    }
    const config = await readConfig(values.model);
    const tok = await loadTokenizer(values.tokenizer);
    if (tok.codebookSize > config.imageCodes) {
      throw new RangeError(
        `tokenizer ${values.tokenizer} has ${tok.codebookSize} codes but model ${values.model} ` +
          `generates only ${config.imageCodes} image codes`,
      );
    }
    const T = tok.tokensPerImage;
    const maxTokens = Math.min(prompt.length, window) * T + (Math.min(count, window) + 1) * T;
    if (Math.min(window, prompt.length + count) * T > config.maxPositions) {
      throw new RangeError(
        `--context ${window} images of ${T} codes exceed model ${values.model}'s ${config.maxPositions} positions`,
      );
    }
    const gpu = await getGpu();
    log(
      `prompt: ${prompt.length} images -> ${
        prompt.length * T
      } codes (${tok.grid}x${tok.grid} each)`,
    );
    const codes = await tok.encode(prompt);
    log(`loading ${values.model} on ${gpu.describe()}`);
    const model = await loadLlama(gpu, values.model, {
      dtype: values.dtype,
      onTensor: loadProgress(log),
    });
    const session = new DecodeSession(model, {
      maxTokens: Math.min(maxTokens, config.maxPositions),
    });
    const sampler = new Sampler(
      // Only ids the tokenizer can decode: a model may have more image codes than its codebook.
      {
        greedy: values.greedy,
        temperature,
        topK,
        topP,
        suppressFrom: Math.min(config.imageCodes, tok.codebookSize),
      },
      seed,
    );
    const t0 = performance.now();
    const made = await generateImages(session, codes, count, sampler, {
      tokensPerImage: T,
      maxContextImages: window,
      cpuSampling: values["cpu-sampling"],
      onToken: (k, i) => {
        if ((i + 1) % Math.max(1, T / 4) === 0 || i + 1 === T) {
          const done = k * T + i + 1;
          const s = (performance.now() - t0) / 1000;
          log(
            `  image ${k + 1}/${count}: ${i + 1}/${T} codes, ${
              (done / s).toFixed(1)
            } tokens/s, ETA ${((count * T - done) / (done / s)).toFixed(0)} s`,
          );
        }
      },
    });
    session.release();
    model.release();
    const images = await tok.decode(made);
    mkdirSync(values.out, { recursive: true });
    const paths: string[] = [];
    for (let k = 0; k < images.length; k++) {
      const p = join(values.out, `next-${k + 1}.png`);
      await savePng(p, images[k]);
      paths.push(p);
    }
    // The generated codes too (to score them, compare them, or decode them again).
    const codesFile = join(values.out, "codes.json");
    await writeFileAtomic(codesFile, JSON.stringify({ tokens: made.map((m) => [...m]) }) + "\n");
    const strip = join(values.out, "strip.png");
    const R = tok.resolution;
    const resized = prompt.map((im) => im.width === R && im.height === R ? im : resize(im, R, R));
    await savePng(strip, hstack([...resized, ...images], 2));
    if (values.json) {
      console.log(
        JSON.stringify({ images: paths, tokens: made.map((m) => [...m]), strip, codes: codesFile }),
      );
    } else {
      for (const p of paths) console.log(`wrote ${p}`);
      console.log(`wrote ${strip} (prompt then generated) and ${codesFile}`);
    }
    return 0;
  },
};
