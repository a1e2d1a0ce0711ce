/**
 * `deno task infer encode --tokenizer DIR [--json] IMAGE...`: VQGAN code ids of images (raster order,
 * grid x grid per image), squash-resized to the tokenizer's resolution (PIL bicubic).
 * @module
 */
import { type Command, parseFlags, positiveInt, required, UsageError } from "@lvm/cli";
import type { RgbImage } from "@lvm/image";
import { loadFrames, loadImage } from "@lvm/image/fs";
import { loadPipeline } from "@lvm/pipeline/fs";
import { TOKENIZER_OPTIONS } from "./_cli.ts";

const usage = `usage: deno task infer encode --tokenizer DIR [--json] [--frames] IMAGE...

  --tokenizer DIR   VQGAN folder: config.json + model.safetensors, diffusion_pytorch_model.safetensors
                    or pytorch_model.bin (open-muse or diffusers key names)
  --json            print {"tokens": [[...], ...]}: one array of ids per image, raster order
  --frames          encode every frame of a GIF (default: its first frame), one array per frame
  --batch N         images per GPU batch (default: as many as fit, at most 16)
  --resolution N    input side for diffusers configs, which do not record it (default 16 x 2^(levels-1))
IMAGE: PNG, JPEG, GIF or TIFF files; other sizes are squash-resized to the tokenizer's resolution.
Without --json each image prints one line: PATH<TAB>id,id,...`;

/** The `encode` subcommand. */
export const encode: Command = {
  summary: "VQGAN token ids of images",
  usage,
  async run(args) {
    const { values, positionals } = parseFlags({
      args,
      options: {
        ...TOKENIZER_OPTIONS,
        json: { type: "boolean", default: false },
        frames: { type: "boolean", default: false },
        batch: { type: "string" },
      },
      allowPositionals: true,
    });
    const tokenizer = required("tokenizer", values.tokenizer, "DIR");
    if (!positionals.length) throw new UsageError("give at least one IMAGE");
    const batchSize = positiveInt("batch", values.batch, 16);
    const resolution = positiveInt("resolution", values.resolution, undefined);
    const images: RgbImage[] = [], names: string[] = [];
    for (const path of positionals) {
      const frames = values.frames ? await loadFrames(path) : [await loadImage(path)];
      frames.forEach((f, i) => {
        images.push(f);
        names.push(frames.length > 1 ? `${path}#${i}` : path);
      });
    }
    const lvm = await loadPipeline({ tokenizer, batchSize, resolution });
    const tokens = await lvm.encode(images).finally(() => lvm.release());
    if (values.json) console.log(JSON.stringify({ tokens: tokens.map((t) => Array.from(t)) }));
    else tokens.forEach((t, i) => console.log(`${names[i]}\t${Array.from(t).join(",")}`));
    return 0;
  },
};
