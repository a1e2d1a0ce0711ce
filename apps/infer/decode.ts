/**
 * `deno task infer decode --tokenizer DIR --tokens IDS --out FILE.png`: the image of grid x grid VQGAN
 * code ids (raster order), clamped to [0,1], saved as PNG.
 * @module
 */
import { parseArgs } from "node:util";
import { hstack, savePng } from "@lvm/image";
import { loadTokenizer, TokenCountError } from "@lvm/tokenizer";
import { type Command, numberOption, parseTokens, UsageError } from "./_cli.ts";

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
    const { values, positionals } = parseArgs({
      args,
      options: {
        tokenizer: { type: "string" },
        tokens: { type: "string" },
        out: { type: "string" },
        many: { type: "boolean", default: false },
        resolution: { type: "string" },
      },
      allowPositionals: true,
      strict: true,
    });
    if (positionals.length) throw new UsageError(`unexpected argument ${positionals[0]}`);
    if (!values.tokenizer) throw new UsageError("--tokenizer DIR is required");
    if (!values.tokens) throw new UsageError("--tokens IDS is required");
    if (!values.out) throw new UsageError("--out FILE.png is required");
    const resolution = values.resolution === undefined
      ? undefined
      : numberOption("--resolution", values.resolution, 0, { integer: true, min: 1 });
    const ids = parseTokens(values.tokens);
    const tok = await loadTokenizer(values.tokenizer, { resolution });
    const T = tok.tokensPerImage;
    try {
      let lists: number[][] = [ids];
      if (values.many && ids.length % T === 0 && ids.length > 0) {
        lists = Array.from({ length: ids.length / T }, (_, i) => ids.slice(i * T, (i + 1) * T));
      } else if (ids.length !== T) {
        throw new TokenCountError(
          `--tokens: got ${ids.length} ids, expected ${T} (a ${tok.grid}x${tok.grid} grid in raster order)${
            values.many ? ` or a multiple of ${T}` : ""
          } for ${values.tokenizer}`,
        );
      }
      const images = await tok.decode(lists);
      const img = images.length === 1 ? images[0] : hstack(images, 2);
      await savePng(values.out, img);
      console.log(
        `wrote ${values.out} (${img.width}x${img.height}, ${lists.length} image${
          lists.length > 1 ? "s" : ""
        })`,
      );
    } finally {
      tok.release();
    }
    return 0;
  },
};
