/**
 * A browser stand-in for the part of `Deno` the op tests use: `Deno.test` (registers, in every
 * call form), `t.step`, and `Deno.readTextFile` (fetched from the page's server). Imported before
 * the test modules, so their top-level `Deno.test(...)` calls register here; {@link runTests} then
 * runs them in order and reports each test and step with its time and first error.
 * `Deno.env.get(name)` reads the page's query string (`ops.html?LVM_KERNEL_KIND=gpu`).
 * @module
 */

/** One test or step outcome. */
export interface TestResult {
  name: string;
  ok: boolean;
  ignored?: boolean;
  ms: number;
  error?: string;
  steps: TestResult[];
}

interface TestDef {
  name: string;
  fn: (t: TestContext) => unknown;
  ignore?: boolean;
}

interface TestContext {
  name: string;
  step(a: string | TestDef, b?: (t: TestContext) => unknown): Promise<boolean>;
}

type Fn = (t: TestContext) => unknown;

const registered: TestDef[] = [];

function toDef(a: string | TestDef, b?: Fn | Partial<TestDef>, c?: Fn): TestDef {
  if (typeof a === "string") {
    if (typeof b === "function") return { name: a, fn: b };
    return { ...(b ?? {}), name: a, fn: c! };
  }
  return { ...a, fn: a.fn ?? (b as Fn) };
}

function message(e: unknown): string {
  return e instanceof Error ? `${e.name}: ${e.message}` : String(e);
}

async function runDef(def: TestDef): Promise<TestResult> {
  const result: TestResult = { name: def.name, ok: true, ms: 0, steps: [] };
  if (def.ignore) return { ...result, ignored: true };
  const t0 = performance.now();
  const ctx: TestContext = {
    name: def.name,
    async step(a, b) {
      const r = await runDef(toDef(a, b));
      result.steps.push(r);
      return r.ok;
    },
  };
  try {
    await def.fn(ctx);
  } catch (e) {
    result.ok = false;
    result.error = message(e);
  }
  if (result.steps.some((s) => !s.ok)) result.ok = false;
  result.ms = Math.round(performance.now() - t0);
  return result;
}

const g = globalThis as unknown as { Deno?: Record<string, unknown> };
g.Deno = {
  ...(g.Deno ?? {}),
  test(a: string | TestDef, b?: Fn | Partial<TestDef>, c?: Fn) {
    registered.push(toDef(a, b, c));
  },
  async readTextFile(path: string | URL): Promise<string> {
    const r = await fetch(path);
    if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
    return await r.text();
  },
  // The page's query string stands for the environment: ops.html?LVM_KERNEL_KIND=gpu.
  env: { get: (k: string) => new URLSearchParams(globalThis.location?.search).get(k) ?? undefined },
};

/** Names of the registered tests. */
export function testNames(): string[] {
  return registered.map((d) => d.name);
}

/**
 * Runs the registered tests whose name contains `filter` (all when empty), one after another;
 * `onResult` sees each as it ends.
 */
export async function runTests(
  filter = "",
  onResult?: (r: TestResult) => void,
): Promise<TestResult[]> {
  const out: TestResult[] = [];
  for (const def of registered) {
    if (filter && !def.name.includes(filter)) continue;
    const r = await runDef(def);
    out.push(r);
    onResult?.(r);
  }
  return out;
}
