/**
 * `deno task infer complete --model DIR --tokenizer DIR --out DIR IMAGE... [--count N] [options]`:
 * the LVM's task interface, `@lvm/pipeline`'s `complete`. The prompt images (video frames, or
 * analogy pairs x1 y1 ... xq) are tokenized by the VQGAN, the transformer continues the visual
 * sentence image by image (exactly `tokensPerImage` codes each, the last 15 images of context,
 * official sampling defaults), and the new images are written as PNGs, with a strip of prompt +
 * generated images and codes.json.
 * @module
 */
import { join } from "node:path";
import {
  type Command,
  loadProgress,
  parseFlags,
  positiveInt,
  progressMeter,
  required,
  UsageError,
} from "@lvm/cli";
import { hstack, resize, type RgbImage } from "@lvm/image";
import { loadFrames, loadImage, savePng } from "@lvm/image/fs";
import { getGpu } from "@lvm/gpu";
import { loadPipeline } from "@lvm/pipeline/fs";
import { writeFileAtomic } from "@lvm/util/fs";
import { dtypeFlag, SAMPLING_OPTIONS, SAMPLING_USAGE, samplingChoice } from "./_cli.ts";

const usage =
  `usage: deno task infer complete --model DIR --tokenizer DIR --out DIR IMAGE... [options]

  IMAGE...              the prompt, in order (PNG/JPEG/GIF; --frames takes every GIF frame)
  --model DIR           LVM transformer (Hugging Face LLaMA layout)
  --tokenizer DIR       VQGAN tokenizer folder (its codebook must match the model's image codes)
  --out DIR             where next-1.png ..., strip.png and codes.json ({"tokens": [[ids]...]})
                        are written
  --count N             images to generate (default 1)
  --context N           images of context kept (default 15, the official window)
${SAMPLING_USAGE}
  --frames              read every frame of GIF prompts
  --dtype D             weight storage on the GPU: f32 (default), f16, q8 or q4 (GGML
                        Q8_0 / Q4_0 blocks, quantized while loading)
  --json                print {"images": [paths], "tokens": [[ids]...], "strip": path, "codes": path}`;

/** The `complete` subcommand. */
export const complete: Command = {
  summary: "prompt images in, the next images out (PNG)",
  usage,
  async run(args) {
    const { values, positionals } = parseFlags({
      args,
      options: {
        model: { type: "string" },
        tokenizer: { type: "string" },
        out: { type: "string" },
        count: { type: "string" },
        context: { type: "string" },
        frames: { type: "boolean", default: false },
        dtype: { type: "string" },
        json: { type: "boolean", default: false },
        ...SAMPLING_OPTIONS,
      },
      allowPositionals: true,
    });
    const model = required("model", values.model, "DIR");
    const tokenizer = required("tokenizer", values.tokenizer, "DIR");
    const out = required("out", values.out, "DIR");
    if (!positionals.length) throw new UsageError("give at least one prompt IMAGE");
    const dtype = dtypeFlag(values.dtype);
    const count = positiveInt("count", values.count, 1);
    const contextImages = positiveInt("context", values.context, 15);
    const sampling = samplingChoice(values);
    const log = (s: string) => values.json || console.error(s);

    const prompt: RgbImage[] = [];
    for (const p of positionals) {
      prompt.push(...(values.frames ? await loadFrames(p) : [await loadImage(p)]));
    }
    log(`loading ${model} on ${(await getGpu()).describe()}`);
    const lvm = await loadPipeline({ model, tokenizer, dtype, onTensor: loadProgress(log) });
    const tok = lvm.tokenizer, T = tok.tokensPerImage;
    log(
      `prompt: ${prompt.length} images -> ${
        prompt.length * T
      } codes (${tok.grid}x${tok.grid} each)`,
    );
    const meter = progressMeter({ total: count * T, unit: "codes", log: (l) => log(`  ${l}`) });
    const made = await lvm.complete(prompt, {
      count,
      contextImages,
      ...sampling,
      onToken: (p) => meter(p.done, [`image ${p.image + 1}/${count}`]),
    }).finally(() => lvm.release());

    await Deno.mkdir(out, { recursive: true });
    const paths = made.images.map((_, k) => join(out, `next-${k + 1}.png`));
    for (const [k, p] of paths.entries()) await savePng(p, made.images[k]);
    // The generated codes too (to score them, compare them, or decode them again).
    const tokens = made.codes.map((m) => [...m]);
    const codes = join(out, "codes.json");
    await writeFileAtomic(codes, JSON.stringify({ tokens }) + "\n");
    const strip = join(out, "strip.png");
    const R = tok.resolution;
    const resized = prompt.map((im) => im.width === R && im.height === R ? im : resize(im, R, R));
    await savePng(strip, hstack([...resized, ...made.images], 2));
    if (values.json) console.log(JSON.stringify({ images: paths, tokens, strip, codes }));
    else {
      for (const p of paths) console.log(`wrote ${p}`);
      console.log(`wrote ${strip} (prompt then generated) and ${codes}`);
    }
    return 0;
  },
};
