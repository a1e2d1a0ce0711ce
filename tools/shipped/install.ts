/**
 * Installs trained models into the repository's `models/` folder at f16: copies a folder's
 * `config.json` and rewrites its `model.safetensors` with every floating-point tensor as F16 (the
 * loaders widen them to f32 on load), atomically.
 *
 *   deno run -A tools/shipped/install.ts SRC_DIR DEST_DIR [SRC_DIR DEST_DIR ...]
 *
 * e.g. `deno run -A tools/shipped/install.ts out/shipped/tokenizer models/tokenizer
 * out/shipped/lvm_xs/checkpoint-1500 models/lvm` (see models/README.md). A run folder resolves to
 * its `latest` checkpoint. Prints one JSON line per model: source, destination, tensors, bytes.
 */
import { join } from "node:path";
import { SafetensorsFile, writeSafetensors } from "@lvm/weights/fs";
import { writeFileAtomic } from "@lvm/util/fs";

type Entry = Parameters<typeof writeSafetensors>[1][string];

async function resolve(dir: string): Promise<string> {
  try {
    const latest = (await Deno.readTextFile(join(dir, "latest"))).trim();
    if (latest) return join(dir, latest);
  } catch { /* not a run folder */ }
  return dir;
}

async function install(srcDir: string, dest: string) {
  const src = await resolve(srcDir);
  const f = await SafetensorsFile.open(join(src, "model.safetensors"));
  const tensors: Record<string, Entry> = {};
  let bytes = 0;
  try {
    for (const name of f.names()) {
      const info = f.info(name);
      const float = info.dtype === "F32" || info.dtype === "F16" || info.dtype === "BF16";
      if (!float) throw new Error(`${src}: tensor ${name} is ${info.dtype}, not a float tensor`);
      tensors[name] = { dtype: "F16", shape: [...info.shape], data: await f.readF32(name) };
      bytes += info.shape.reduce((a, b) => a * b, 1) * 2;
    }
  } finally {
    f.close();
  }
  await Deno.mkdir(dest, { recursive: true });
  await writeSafetensors(join(dest, "model.safetensors"), tensors, {
    format: "pt",
    source: src.replace(/\\/g, "/"),
  });
  await writeFileAtomic(
    join(dest, "config.json"),
    await Deno.readTextFile(join(src, "config.json")),
  );
  console.log(JSON.stringify({ source: src, destination: dest, tensors: f.names().length, bytes }));
}

const args = Deno.args;
if (args.length < 2 || args.length % 2) {
  console.error(
    "usage: deno run -A tools/shipped/install.ts SRC_DIR DEST_DIR [SRC_DIR DEST_DIR ...]",
  );
  Deno.exit(2);
}
for (let i = 0; i < args.length; i += 2) await install(args[i], args[i + 1]);
