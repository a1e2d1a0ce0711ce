/**
 * The page: checks WebGPU, loads the served tokenizer and model into an `LvmPipeline`, builds a
 * prompt from the examples or the user's images (file picker, drag and drop; any size, squash-
 * resized bicubic to the tokenizer's resolution as the CLI does), runs `complete` on WebGPU with
 * the sampling controls, and shows the strip (prompt, then the new images) with progress per code,
 * codes/s and the adapter. The last run's result is on `globalThis.lvmPage` for tests.
 * @module
 */
import { getGpu, type Gpu } from "@lvm/gpu";
import { resize, type RgbImage } from "@lvm/image";
import type { LvmPipeline } from "@lvm/pipeline";
import type { WebConfig } from "../api.ts";
import { loadServedPipeline } from "./load.ts";
import { decodeImage, drawImage } from "./pixels.ts";

/** What a test (or the console) can read: state, adapter and the last completion. */
export interface PageState {
  status: "checking" | "loading" | "ready" | "running" | "error";
  error?: string;
  adapter?: string;
  last?: {
    codes: number[][];
    prompt: number[][];
    /** Milliseconds of each phase. */
    ms: { encode: number; generate: number; decode: number };
    /** Generated codes per second (the generation phase: prefill + decode steps + sampling). */
    codesPerSecond: number;
    options: Record<string, unknown>;
  };
}

const state: PageState = { status: "checking" };
(globalThis as { lvmPage?: PageState }).lvmPage = state;

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

function setStatus(text: string, kind: "info" | "error" = "info") {
  const el = $("status");
  el.textContent = text;
  el.className = kind;
}

function fail(e: unknown) {
  state.status = "error";
  state.error = e instanceof Error ? e.message : String(e);
  setStatus(state.error, "error");
  ($("generate") as HTMLButtonElement).disabled = true;
}

/**
 * The least the kernels need of an adapter (WebGPU's own defaults; compatibility-mode adapters
 * offer less): 256 invocations and 16 KiB of workgroup memory, 8 storage buffers per stage.
 */
const MIN_LIMITS: [keyof GPUSupportedLimits, number][] = [
  ["maxComputeInvocationsPerWorkgroup", 256],
  ["maxComputeWorkgroupSizeX", 256],
  ["maxComputeWorkgroupStorageSize", 16384],
  ["maxStorageBuffersPerShaderStage", 8],
];

const NO_WEBGPU = "This browser has no WebGPU. Use Chrome or Edge 113+, Safari 26+, or Firefox " +
  "141+ on Windows (Firefox Nightly elsewhere).";

/** Null when WebGPU is usable here, else what is wrong. */
async function webGpuProblem(): Promise<string | null> {
  if (!globalThis.isSecureContext) {
    return "WebGPU needs a secure context: open the page at the http://127.0.0.1 address the " +
      "server printed (or over https).";
  }
  if (!("gpu" in navigator) || !navigator.gpu) return NO_WEBGPU;
  const adapter = await navigator.gpu.requestAdapter();
  if (!adapter) {
    return "WebGPU is present but offers no adapter (no GPU, or one the browser blocks; see " +
      "chrome://gpu). Chrome/Chromium on Linux: start it with --enable-unsafe-webgpu (with no GPU " +
      "it then uses its software adapter, SwiftShader).";
  }
  const low = MIN_LIMITS.filter(([k, v]) => (adapter.limits[k] as number) < v)
    .map(([k, v]) => `${k} ${adapter.limits[k]} (needs ${v})`);
  if (low.length) return `This WebGPU adapter's limits are too small: ${low.join(", ")}.`;
  return null;
}

// ---- prompt ----------------------------------------------------------------------------------

interface PromptImage {
  /** As decoded (any size). */
  image: RgbImage;
  label: string;
  /** The image squash-resized to `size` (kept: resizing a large photo takes a while). */
  fitted?: { size: number; image: RgbImage };
}
let prompt: PromptImage[] = [];
let lvm: LvmPipeline | null = null;
let gpu: Gpu | null = null;

function resolution(): number {
  return lvm?.tokenizer.resolution ?? 32;
}

/**
 * A prompt image as the tokenizer sees it: squash-resized bicubic (PIL-exact, `@lvm/image`'s
 * `resize`, the tokenizer's and the CLI's own) to the tokenizer's resolution.
 */
function fitted(p: PromptImage): RgbImage {
  const R = resolution(), img = p.image;
  if (p.fitted?.size !== R) {
    p.fitted = { size: R, image: img.width === R && img.height === R ? img : resize(img, R, R) };
  }
  return p.fitted.image;
}

function tile(img: RgbImage, cls: string, caption: string): HTMLElement {
  const fig = document.createElement("figure");
  fig.className = cls;
  const c = document.createElement("canvas");
  drawImage(c, img);
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(c, cap);
  return fig;
}

function renderPrompt() {
  const box = $("prompt");
  box.replaceChildren();
  prompt.forEach((p, i) => {
    const fig = tile(fitted(p), "prompt", `${i + 1}. ${p.label}`);
    const x = document.createElement("button");
    x.textContent = "×";
    x.title = "remove";
    x.onclick = () => {
      prompt.splice(i, 1);
      renderPrompt();
    };
    fig.append(x);
    box.append(fig);
  });
  ($("generate") as HTMLButtonElement).disabled =
    !(lvm && prompt.length && (state.status === "ready" || state.status === "error"));
  $("prompt-note").textContent = prompt.length
    ? `${prompt.length} image(s), shown at the tokenizer's ${resolution()}x${resolution()}`
    : "no prompt yet: pick an example, or add images (file picker or drop them here)";
}

async function addFiles(files: Iterable<File>) {
  for (const f of files) {
    try {
      const image = await decodeImage(f);
      prompt.push({ image, label: `${f.name} (${image.width}x${image.height})` });
    } catch (e) {
      setStatus(
        `${f.name}: not an image this browser can decode (${(e as Error).message})`,
        "error",
      );
    }
  }
  renderPrompt();
}

async function useExample(ex: WebConfig["examples"][number]) {
  const images: PromptImage[] = [];
  for (const url of ex.images) {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
    images.push({
      image: await decodeImage(await r.blob()),
      label: decodeURIComponent(url.split("/").pop()!),
    });
  }
  prompt = images;
  renderPrompt();
}

// ---- generation ------------------------------------------------------------------------------

function options() {
  const num = (id: string) => Number(($(id) as HTMLInputElement).value);
  return {
    count: Math.max(1, Math.floor(num("count"))),
    seed: Math.floor(num("seed")),
    temperature: num("temperature"),
    topK: Math.floor(num("topk")),
    topP: num("topp"),
    greedy: ($("greedy") as HTMLInputElement).checked,
  };
}

async function generate() {
  if (!lvm || !prompt.length) return;
  const o = options();
  state.status = "running";
  state.error = undefined;
  setStatus(`generating ${o.count} image(s)…`);
  ($("generate") as HTMLButtonElement).disabled = true;
  const strip = $("strip");
  strip.replaceChildren(
    ...prompt.map((p, i) => tile(fitted(p), "prompt", `prompt ${i + 1}`)),
  );
  const R = resolution();
  const slots = Array.from({ length: o.count }, (_, k) => {
    const fig = tile(
      { width: R, height: R, data: new Float32Array(3 * R * R).fill(0.9) },
      "new",
      `new ${k + 1}`,
    );
    const bar = document.createElement("progress");
    bar.max = 1;
    bar.value = 0;
    fig.append(bar);
    strip.append(fig);
    return { fig, bar };
  });
  const bar = $("progress") as HTMLProgressElement;
  let last = 0;
  try {
    // complete() is encode -> completeCodes -> decode; called apart to time each phase.
    const t0 = performance.now();
    const promptCodes = await lvm.encode(prompt.map(fitted));
    const t1 = performance.now();
    // The official 15 images of context, or as many as the model's positions hold (the CLI
    // stops with an error instead; prompts it takes give the same codes here).
    const contextImages = Math.min(
      15,
      Math.floor(lvm.model.config.maxPositions / lvm.tokensPerImage),
    );
    let decodeMs = 0;
    const codes = await lvm.completeCodes(promptCodes, {
      ...o,
      contextImages,
      // Each image is decoded and drawn as soon as its codes are complete (the strip fills image
      // by image); its decode time is kept apart from the generation rate.
      onImage: async (k, c) => {
        const d0 = performance.now();
        const [img] = await lvm!.decode([c]);
        drawImage(slots[k].fig.querySelector("canvas")!, img);
        slots[k].bar.remove();
        decodeMs += performance.now() - d0;
      },
      onToken: (p) => {
        const now = performance.now();
        if (p.done !== p.total && now - last < 50) return; // repaint at most 20 times a second
        last = now;
        bar.max = p.total;
        bar.value = p.done;
        slots[p.image].bar.value = (p.token + 1) / lvm!.tokensPerImage;
        $("rate").textContent = `image ${p.image + 1}/${o.count} · code ${p.done}/${p.total} · ` +
          `${(p.done / ((now - t1) / 1000)).toFixed(1)} codes/s`;
      },
    });
    const t2 = performance.now();
    const total = codes.length * lvm.tokensPerImage;
    const cps = total / ((t2 - t1 - decodeMs) / 1000);
    $("rate").textContent = `${total} codes at ${cps.toFixed(1)} codes/s · encode ` +
      `${(t1 - t0).toFixed(0)} ms · decode ${decodeMs.toFixed(0)} ms · ${state.adapter}`;
    state.last = {
      codes: codes.map((c) => [...c]),
      prompt: promptCodes.map((c) => [...c]),
      ms: { encode: t1 - t0, generate: t2 - t1 - decodeMs, decode: decodeMs },
      codesPerSecond: cps,
      options: o,
    };
    state.status = "ready";
    setStatus(`done: ${codes.length} image(s)`);
  } catch (e) {
    fail(e); // the pipeline is still loaded: change the prompt or options and try again
  }
  ($("generate") as HTMLButtonElement).disabled = false;
}

// ---- start -----------------------------------------------------------------------------------

async function start() {
  const drop = $("drop");
  const input = $("files") as HTMLInputElement;
  input.onchange = () => input.files && addFiles(input.files);
  drop.ondragover = (e) => {
    e.preventDefault();
    drop.classList.add("over");
  };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer?.files) addFiles(e.dataTransfer.files);
  };
  $("clear").onclick = () => {
    prompt = [];
    renderPrompt();
  };
  $("generate").onclick = () => generate();
  $("greedy").onchange = () => {
    const g = ($("greedy") as HTMLInputElement).checked;
    for (const id of ["temperature", "topk", "topp", "seed"]) {
      ($(id) as HTMLInputElement).disabled = g;
    }
  };
  renderPrompt();

  const problem = await webGpuProblem();
  if (problem) return fail(problem);
  gpu = await getGpu();
  state.adapter = gpu.describe();
  $("adapter").textContent = state.adapter;

  const r = await fetch("/api/config");
  const cfg = (await r.json()) as WebConfig;
  const ex = $("examples");
  ex.replaceChildren(
    ...cfg.examples.map((e) => {
      const b = document.createElement("button");
      b.textContent = `${e.name} (${e.images.length})`;
      b.dataset.example = e.name;
      b.onclick = () => useExample(e).catch(fail);
      return b;
    }),
  );
  if (!cfg.examples.length) ex.textContent = "(no examples folder)";
  state.status = "loading";
  const load = $("progress") as HTMLProgressElement;
  lvm = await loadServedPipeline(gpu, cfg, (msg, f) => {
    setStatus(`loading ${msg}`);
    load.max = 1;
    load.value = f;
  });
  const tok = lvm.tokenizer, c = lvm.model.config;
  $("model").textContent =
    `tokenizer ${cfg.tokenizer!.name}: ${tok.resolution}x${tok.resolution} -> ` +
    `${tok.grid}x${tok.grid} codes of ${tok.codebookSize} · model ${cfg.model!.name}: ` +
    `${c.layers} layers, hidden ${c.hidden}, vocab ${c.vocab}, ${c.maxPositions} positions`;
  state.status = "ready";
  setStatus("ready");
  renderPrompt();
}

start().catch(fail);
