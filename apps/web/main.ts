/**
 * `deno task web [--model DIR] [--tokenizer DIR] [--examples DIR] [--port N]`: bundles the page
 * (`deno bundle --platform browser`) and serves it, the tokenizer and model files and the example
 * prompts on http://127.0.0.1 only, then prints the URL. Defaults: `models/lvm`,
 * `models/tokenizer` and `models/examples` when they exist.
 * @module
 */
import { join } from "node:path";
import { parseArgs } from "node:util";
import { buildBundles } from "./bundle.ts";
import { serveWeb } from "./server.ts";

const ROOT = new URL("../../", import.meta.url).pathname;

const usage = `usage: deno task web [--model DIR] [--tokenizer DIR] [--examples DIR] [--port N]

  --model DIR       LVM transformer (Hugging Face LLaMA layout; default models/lvm)
  --tokenizer DIR   VQGAN tokenizer folder (default models/tokenizer)
  --examples DIR    example prompts, one folder of images each (default models/examples)
  --port N          port on 127.0.0.1 (default 8000; 0 = any free one)

Open the printed URL in a browser with WebGPU (Chrome/Edge 113+; on Linux Chromium with
--enable-unsafe-webgpu; Safari 26+; Firefox 141+ on Windows).`;

async function isDir(p: string): Promise<boolean> {
  try {
    return (await Deno.stat(p)).isDirectory;
  } catch {
    return false;
  }
}

async function folder(flag: string, given: string | undefined, fallback: string) {
  if (given !== undefined) {
    if (!(await isDir(given))) throw new Error(`--${flag} ${given}: not a folder`);
    return given;
  }
  const p = join(ROOT, fallback);
  return (await isDir(p)) ? p : undefined;
}

async function main(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: "string" },
      tokenizer: { type: "string" },
      examples: { type: "string" },
      port: { type: "string", default: "8000" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(usage);
    return 0;
  }
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`--port ${values.port}: expected 0..65535`);
  }
  const model = await folder("model", values.model, "models/lvm");
  const tokenizer = await folder("tokenizer", values.tokenizer, "models/tokenizer");
  const examples = await folder("examples", values.examples, "models/examples");
  for (const [name, dir] of [["model", model], ["tokenizer", tokenizer]]) {
    if (!dir) console.error(`no ${name}: give --${name} DIR (the page will say so too)`);
  }
  const { dir } = await buildBundles(join(ROOT, "out", "web"));
  const { url } = serveWeb({ bundles: dir, model, tokenizer, examples, port });
  console.log(
    `model ${model ?? "-"} · tokenizer ${tokenizer ?? "-"} · examples ${examples ?? "-"}`,
  );
  console.log(`LVM web page: ${url}  (Ctrl-C stops)`);
  return 0;
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\n${usage}`);
    Deno.exit(2);
  }
}
