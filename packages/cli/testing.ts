/**
 * Test helpers for the command-line apps: run one the way a user does, in a child process, and
 * collect what it printed.
 * @module
 */

const ROOT = new URL("../../", import.meta.url).pathname;

/** What a finished app run left: its exit code and everything it printed. */
export interface AppRun {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `deno run -A apps/APP/main.ts ...args` (e.g. `runApp("infer", "encode", ...)`) on the WebGPU
 * backend named by DENO_WEBGPU_BACKEND (vulkan when unset) and waits for it to exit.
 */
export async function runApp(app: string, ...args: string[]): Promise<AppRun> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}apps/${app}/main.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { DENO_WEBGPU_BACKEND: Deno.env.get("DENO_WEBGPU_BACKEND") ?? "vulkan" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}
