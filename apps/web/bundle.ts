/**
 * The page's JavaScript, built with Deno's own bundler (`deno bundle --platform browser`, esbuild
 * underneath): `app.js` (the page: `browser/page.ts` and the packages it imports) and `ops.js`
 * (the kernel op tests of `packages/kernels/ops/*_test.ts` behind a `Deno.test` stand-in, for
 * `ops.html`). The core packages and the op tests (whose assertions, `@lvm/util/testing`, import
 * no `node:` module) bundle for the browser as they are.
 * @module
 */
import { join, relative } from "node:path";

const HERE = new URL(".", import.meta.url).pathname;
const ROOT = join(HERE, "..", "..");
const OPS = join(ROOT, "packages", "kernels", "ops");

/** What {@link buildBundles} wrote. */
export interface Bundles {
  /** Folder holding app.js and ops.js. */
  dir: string;
  /** The op test files bundled into ops.js (relative to the repository root). */
  opTests: string[];
}

async function bundle(entry: string, out: string): Promise<void> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--platform",
      "browser",
      "-o",
      out,
      entry,
    ],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!r.success) {
    throw new Error(
      `deno bundle ${relative(ROOT, entry)} failed:\n${new TextDecoder().decode(r.stderr)}`,
    );
  }
}

/** The op test files, sorted. */
export async function opTestFiles(): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(OPS)) {
    if (e.isFile && e.name.endsWith("_test.ts")) names.push(e.name);
  }
  return names.sort().map((n) => join(OPS, n));
}

/**
 * Bundles the page and the op tests into `dir` (created): `app.js`, `ops.js`. The op-test entry
 * is generated there too (`_ops_entry.ts`: the stand-in first, then every op test file), so a new
 * op's test joins the browser run without an edit here.
 */
export async function buildBundles(dir: string): Promise<Bundles> {
  await Deno.mkdir(dir, { recursive: true });
  const tests = await opTestFiles();
  const entry = join(dir, "_ops_entry.ts");
  const lines = [
    `export * from ${JSON.stringify(join(HERE, "browser", "test_registry.ts"))};`,
    ...tests.map((f) => `import ${JSON.stringify(f)};`),
  ];
  await Deno.writeTextFile(entry, lines.join("\n") + "\n");
  await Promise.all([
    bundle(join(HERE, "browser", "page.ts"), join(dir, "app.js")),
    bundle(entry, join(dir, "ops.js")),
  ]);
  // A `node:` import left in a bundle would fail only when the page loads it: fail here instead.
  for (const name of ["app.js", "ops.js"]) {
    const js = await Deno.readTextFile(join(dir, name));
    const bad = [...js.matchAll(/^import .* from "(node:[^"]+)"/gm)].map((m) => m[1]);
    if (bad.length) {
      throw new Error(`${name} still imports ${bad.join(", ")}: the browser has no node: modules`);
    }
  }
  return { dir, opTests: tests.map((f) => relative(ROOT, f)) };
}
