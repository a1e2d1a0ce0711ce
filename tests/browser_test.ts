/**
 * The browser-ready core: each package's main module bundled for the browser platform
 * (`deno bundle --platform browser`, esbuild underneath) must bundle, and the bundle must hold no
 * `node:` import and no `Deno.` reference. File and process access lives in the `/fs` subpaths
 * (`@lvm/weights/fs`, `@lvm/image/fs`, `@lvm/tokenizer/fs`, `@lvm/transformer/fs`,
 * `@lvm/pipeline/fs`), which are not checked here.
 * @module
 */
import { join } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;

/** Packages whose main module must load in a browser, and why one may not yet. */
const CORE: { pkg: string; pending?: string }[] = [
  { pkg: "gpu" },
  { pkg: "kernels" },
  { pkg: "weights" },
  { pkg: "transformer" },
  { pkg: "sampler" },
  { pkg: "image" },
  { pkg: "tokenizer" },
  { pkg: "pipeline" },
];

for (const { pkg, pending } of CORE) {
  Deno.test({
    name: `@lvm/${pkg} bundles for the browser with no node: or Deno. reference`,
    ignore: pending !== undefined,
    async fn() {
      const dir = await Deno.makeTempDir();
      try {
        const out = join(dir, `${pkg}.js`);
        const r = await new Deno.Command(Deno.execPath(), {
          args: ["bundle", "--platform", "browser", "-o", out, `packages/${pkg}/mod.ts`],
          cwd: ROOT,
          stdout: "piped",
          stderr: "piped",
        }).output();
        if (!r.success) {
          throw new Error(`deno bundle failed:\n${new TextDecoder().decode(r.stderr)}`);
        }
        const js = await Deno.readTextFile(out);
        const bad = [...js.matchAll(/.{0,60}(node:[a-z_/]+|\bDeno\.[A-Za-z]+).{0,60}/g)]
          .map((m) => m[0].trim());
        if (bad.length) {
          throw new Error(`${bad.length} reference(s), e.g.:\n  ${bad.slice(0, 5).join("\n  ")}`);
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
