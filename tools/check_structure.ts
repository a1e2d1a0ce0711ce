/**
 * The repository's structure rules, checked from the code itself (run by tests/structure_test.ts;
 * `deno task structure`):
 *
 * 1. One home per concept: no name is exported by the main modules (`mod.ts`) of two packages
 *    unless it is the same declaration re-exported (from `deno doc --json`).
 * 2. Dependencies, from the import graph of every package entry point (`deno info --json`):
 *    GPU-free packages (util, weights, image, sentence, cli) reach no GPU package (gpu, kernels,
 *    nor any package that imports them); tokenizer and transformer never reach each other; no
 *    package reaches an app (`apps/`).
 *
 * Prints the package table (lines of code without tests, exported names) and every violation;
 * exits 1 on a violation. `--json` prints `{packages, violations}` instead.
 * @module
 */
import { join, relative } from "node:path";

const ROOT = new URL("..", import.meta.url).pathname;
const GPU_PACKAGES = ["gpu", "kernels"];
const GPU_FREE = ["util", "weights", "image", "sentence", "cli"];
const APART: [string, string][] = [["tokenizer", "transformer"]];

/** One package: its name, folder, entry points and what they export and reach. */
export interface PackageInfo {
  dir: string;
  name: string;
  entries: string[];
  /** Non-blank lines of the .ts files other than tests (`*_test.ts`, `testing.ts`). */
  loc: number;
  /** Names exported by mod.ts -> the file declaring each. */
  exports: Map<string, string>;
  /** Other packages (folder names) and app files reached from the entry points. */
  reaches: Set<string>;
  reachesApps: string[];
}

async function run(args: string[]): Promise<string> {
  const out = await new Deno.Command(Deno.execPath(), { args, cwd: ROOT, stderr: "piped" })
    .output();
  if (!out.success) {
    throw new Error(`deno ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return new TextDecoder().decode(out.stdout);
}

async function countLoc(dir: string): Promise<number> {
  let n = 0;
  for await (const e of Deno.readDir(dir)) {
    const p = join(dir, e.name);
    if (e.isDirectory) n += await countLoc(p);
    else if (e.name.endsWith(".ts") && !/(_test|^testing)\.ts$|^testing\.ts$/.test(e.name)) {
      n += (await Deno.readTextFile(p)).split("\n").filter((l) => l.trim() !== "").length;
    }
  }
  return n;
}

/** The package folder (under packages/) or "apps" a file URL belongs to, or null. */
function owner(url: string): string | null {
  if (!url.startsWith("file://")) return null;
  const rel = relative(ROOT, new URL(url).pathname);
  const m = rel.match(/^packages\/([^/]+)\//);
  if (m) return m[1];
  return rel.startsWith("apps/") ? "apps" : null;
}

/** Reads every package under packages/. */
export async function readPackages(): Promise<PackageInfo[]> {
  const out: PackageInfo[] = [];
  const dirs: string[] = [];
  for await (const e of Deno.readDir(join(ROOT, "packages"))) if (e.isDirectory) dirs.push(e.name);
  for (const dir of dirs.sort()) {
    const base = join(ROOT, "packages", dir);
    let cfg: { name?: string; exports?: string | Record<string, string> };
    try {
      cfg = JSON.parse(await Deno.readTextFile(join(base, "deno.json")));
    } catch {
      continue; // not a package (yet)
    }
    const ex = typeof cfg.exports === "string" ? { ".": cfg.exports } : cfg.exports ?? {};
    const entries = Object.values(ex).map((p) => join(base, p));
    const exports = new Map<string, string>();
    if (ex["."]) {
      const doc = JSON.parse(await run(["doc", "--json", join(base, ex["."])]));
      for (const mod of Object.values(doc.nodes) as { symbols?: any[] }[]) {
        for (const s of mod.symbols ?? []) {
          const decl = s.declarations?.[0];
          exports.set(s.name, decl?.location?.filename ?? "?");
        }
      }
    }
    const reaches = new Set<string>();
    const reachesApps: string[] = [];
    for (const entry of entries) {
      const info = JSON.parse(await run(["info", "--json", entry]));
      for (const m of info.modules ?? []) {
        const o = owner(m.specifier ?? "");
        if (o === "apps") reachesApps.push(relative(ROOT, new URL(m.specifier).pathname));
        else if (o && o !== dir) reaches.add(o);
      }
    }
    out.push({
      dir,
      name: cfg.name ?? dir,
      entries: Object.keys(ex),
      loc: await countLoc(base),
      exports,
      reaches,
      reachesApps,
    });
  }
  return out;
}

/** The violations of the rules in the module doc. */
export function violations(pkgs: PackageInfo[]): string[] {
  const v: string[] = [];
  const seen = new Map<string, { pkg: string; file: string }>();
  for (const p of pkgs) {
    for (const [name, file] of p.exports) {
      const other = seen.get(name);
      if (other && other.file !== file) {
        v.push(`export "${name}": both @lvm/${other.pkg} and @lvm/${p.dir} (one home per concept)`);
      } else if (!other) seen.set(name, { pkg: p.dir, file });
    }
  }
  const gpuish = new Set(GPU_PACKAGES);
  for (const p of pkgs) {
    if ([...p.reaches].some((r) => gpuish.has(r))) gpuish.add(p.dir);
  }
  for (const p of pkgs) {
    if (GPU_FREE.includes(p.dir)) {
      const bad = [...p.reaches].filter((r) => gpuish.has(r));
      if (bad.length) {
        v.push(`@lvm/${p.dir} is GPU-free but reaches ${bad.map((b) => `@lvm/${b}`)}`);
      }
    }
    for (const [a, b] of APART) {
      if ((p.dir === a && p.reaches.has(b)) || (p.dir === b && p.reaches.has(a))) {
        v.push(`@lvm/${p.dir} reaches @lvm/${p.dir === a ? b : a}: they never import each other`);
      }
    }
    if (p.reachesApps.length) {
      v.push(`@lvm/${p.dir} reaches an app: ${[...new Set(p.reachesApps)].join(", ")}`);
    }
  }
  return v;
}

/** The package table (markdown). */
export function table(pkgs: PackageInfo[]): string {
  const rows = pkgs.map((p) =>
    `| ${p.name} | ${p.loc} | ${p.exports.size} | ${p.entries.join(" ")} | ${
      [...p.reaches].sort().map((r) => r).join(", ") || "-"
    } |`
  );
  return [
    "| package | lines (non-blank, no tests) | exports | entry points | uses |",
    "|---|---:|---:|---|---|",
    ...rows,
  ].join("\n");
}

if (import.meta.main) {
  const pkgs = await readPackages();
  const v = violations(pkgs);
  if (Deno.args.includes("--json")) {
    console.log(JSON.stringify({
      packages: pkgs.map((p) => ({
        name: p.name,
        loc: p.loc,
        exports: p.exports.size,
        entries: p.entries,
        uses: [...p.reaches].sort(),
      })),
      violations: v,
    }));
  } else {
    console.log(table(pkgs));
    console.log(v.length ? `\n${v.length} violation(s):\n${v.join("\n")}` : "\nno violations");
  }
  Deno.exit(v.length ? 1 : 0);
}
