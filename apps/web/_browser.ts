/**
 * Headless Chromium with WebGPU for the page's tests, driven by Playwright (`playwright-core`
 * from npm, which Deno runs directly). WebGPU in headless Chromium on Linux needs only
 * `--enable-unsafe-webgpu`: with no GPU, Dawn picks its software Vulkan adapter, SwiftShader
 * (vendor "google", architecture "swiftshader"; 256 invocations per workgroup, 10 storage buffers
 * per stage, no `shader-f16`). The page must come from a secure origin (http://127.0.0.1 is).
 * @module
 */
import { type Browser, chromium } from "playwright-core";

/** Chromium's flags for WebGPU here. */
export const CHROMIUM_FLAGS: readonly string[] = ["--enable-unsafe-webgpu"];

const CANDIDATES = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"];

/** The browser binary: `$CHROMIUM`, else the first of {@link CANDIDATES} on PATH, else null. */
export async function findChromium(): Promise<string | null> {
  const env = Deno.env.get("CHROMIUM");
  if (env) return env;
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    for (const name of CANDIDATES) {
      try {
        const p = `${dir}/${name}`;
        if ((await Deno.stat(p)).isFile) return p;
      } catch {
        // not here
      }
    }
  }
  return null;
}

/** Launches headless Chromium with WebGPU; a missing browser is an error saying how to get one. */
export async function launchChromium(): Promise<Browser> {
  const exe = await findChromium();
  if (!exe) {
    throw new Error(
      "no Chromium found (looked for $CHROMIUM, " + CANDIDATES.join(", ") +
        " on PATH): install it (Debian: apt-get install -y chromium) or set CHROMIUM",
    );
  }
  return await chromium.launch({ executablePath: exe, headless: true, args: [...CHROMIUM_FLAGS] });
}
