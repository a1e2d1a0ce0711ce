/**
 * Held-out reconstruction PSNR of a tokenizer, per group of images (the same measure as
 * `train tokenizer`'s held-out PSNR: images squash-resized to the tokenizer's resolution, encoded,
 * decoded, mean per-image PSNR over [0,1] RGB).
 *
 *   deno run -A --config out/shipped/code/deno.json tools/shipped/psnr.ts \
 *     --code out/shipped/code TOKENIZER NAME=FOLDER...
 *
 * TOKENIZER: a tokenizer folder (config.json + model.safetensors) or a training checkpoint folder
 * (DIR/checkpoints/ckpt-N: state.json + model.safetensors). FOLDER: every image file under it
 * (recursively; symlinks followed). Prints one JSON object {NAME: {images, psnr, mse}, ...}.
 * The trainer's packages are imported from --code (the pinned snapshot tools/shipped/train.sh uses).
 * @module
 */
import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
const toFileUrl = (p: string) => pathToFileURL(p);

const args = [...Deno.args];
const ci = args.indexOf("--code");
if (ci < 0 || args.length < ci + 2) {
  console.error("usage: psnr.ts --code CODE_DIR TOKENIZER NAME=FOLDER...");
  Deno.exit(2);
}
const code = resolve(args.splice(ci, 2)[1]);
const [tokArg, ...groups] = args;
const tokMod = await import(toFileUrl(join(code, "packages/tokenizer/mod.ts")).href);
const imgMod = await import(toFileUrl(join(code, "packages/image/mod.ts")).href);

let tokDir = resolve(tokArg);
try {
  await Deno.stat(join(tokDir, "config.json"));
} catch {
  // a checkpoint: config from state.json, weights linked into a temporary tokenizer folder
  const state = JSON.parse(await Deno.readTextFile(join(tokDir, "state.json")));
  const tmp = await Deno.makeTempDir({ prefix: "psnr_tok_" });
  await Deno.writeTextFile(join(tmp, "config.json"), JSON.stringify(state.config));
  await Deno.symlink(join(tokDir, "model.safetensors"), join(tmp, "model.safetensors"));
  tokDir = tmp;
}
const tok = await tokMod.loadTokenizer(tokDir);

async function files(dir: string): Promise<string[]> {
  const out: string[] = [];
  const entries = [];
  for await (const e of Deno.readDir(dir)) entries.push(e);
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of entries) {
    if (e.name.startsWith(".")) continue;
    const p = join(dir, e.name);
    const st = await Deno.stat(p);
    if (st.isDirectory) out.push(...(await files(p)));
    else if (/\.(png|jpe?g|tiff?|bmp)$/i.test(e.name)) out.push(p);
  }
  return out;
}

const result: Record<string, unknown> = {};
for (const g of groups) {
  const [name, folder] = g.split("=");
  const imgs = [];
  for (const f of await files(folder)) imgs.push(await imgMod.loadImage(f));
  const t0 = performance.now();
  const r = await tokMod.evaluateReconstruction(tok, imgs);
  result[name] = { ...r, seconds: +((performance.now() - t0) / 1000).toFixed(1) };
  console.error(`${name}: ${r.images} images, PSNR ${r.psnr.toFixed(2)} dB`);
}
console.log(JSON.stringify(result));
