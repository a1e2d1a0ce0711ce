/**
 * `deno task infer decode --tokenizer DIR --tokens IDS --out FILE.png`: the image of grid x grid VQGAN
 * code ids (raster order), clamped to [0,1], saved as PNG.
 * @module
 */
import { type Command, parseFlags, parseTokens, positiveInt, required, UsageError } from "@lvm/cli";
import { hstack } from "@lvm/image";
import { savePng } from "@lvm/image/fs";
import { loadPipeline } from "@lvm/pipeline/fs";
import { TokenCountError } from "@lvm/tokenizer";
import { TOKENIZER_OPTIONS } from "./_cli.ts";

const usage = `usage: deno task infer decode --tokenizer DIR --tokens IDS --out FILE.png [--many]

  --tokenizer DIR   VQGAN folder (as for encode)
  --tokens IDS      grid*grid code ids in raster order (256 = 16x16 for LVM): 5,17,3 or "5 17 3" or
                    [5,17,3], or @FILE holding any of those
  --out FILE.png    where to write the image (resolution x resolution)
  --many            accept any multiple of grid*grid ids: the images side by side in one PNG
  --resolution N    output side for diffusers configs (as for encode)
A count of ids that is not grid*grid is an error naming the expected grid.`;

/** The `decode` subcommand. */
export const decode: Command = {
  summary: "the image of VQGAN token ids (PNG)",
  usage,
  async run(args) {
    const { values, positionals } = parseFlags({
      args,
      options: {
        ...TOKENIZER_OPTIONS,
        tokens: { type: "string" },
        out: { type: "string" },
        many: { type: "boolean", default: false },
      },
      allowPositionals: true,
    });
    if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
    const tokenizer = required("tokenizer", values.tokenizer, "DIR");
    const tokens = required("tokens", values.tokens, "IDS");
    const out = required("out", values.out, "FILE.png");
    const resolution = positiveInt("resolution", values.resolution, undefined);
    const ids = parseTokens(tokens);
    const lvm = await loadPipeline({ tokenizer, resolution });
    const tok = lvm.tokenizer, T = tok.tokensPerImage;
    try {
      let lists: number[][] = [ids];
      if (values.many && ids.length % T === 0 && ids.length > 0) {
        lists = Array.from({ length: ids.length / T }, (_, i) => ids.slice(i * T, (i + 1) * T));
      } else if (ids.length !== T) {
        throw new TokenCountError(
          `--tokens: got ${ids.length} ids, expected ${T} (a ${tok.grid}x${tok.grid} grid in raster order)${
            values.many ? ` or a multiple of ${T}` : ""
          } for ${tokenizer}`,
        );
      }
      const images = await lvm.decode(lists);
      const img = images.length === 1 ? images[0] : hstack(images, 2);
      await savePng(out, img);
      console.log(
        `wrote ${out} (${img.width}x${img.height}, ${lists.length} image${
          lists.length > 1 ? "s" : ""
        })`,
      );
    } finally {
      lvm.release();
    }
    return 0;
  },
};
