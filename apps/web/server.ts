/**
 * The page's server: static files (`static/`), the bundles (`app.js`, `ops.js`), the model,
 * tokenizer and example files, and `/api/config` describing them. It listens on 127.0.0.1 only and
 * serves files by name from the folders it was given (no path outside them; byte ranges for the
 * weights, so the page reads a tensor at a time instead of whole files).
 * @module
 */
import { basename, extname, join, relative, resolve } from "node:path";
import type { ServedFile, WebConfig } from "./api.ts";

const HERE = new URL(".", import.meta.url).pathname;
const STATIC = join(HERE, "static");
const FIXTURES = resolve(HERE, "..", "..", "tests", "fixtures", "kernels");

/** What the server serves. */
export interface ServeOptions {
  /** Folder holding app.js and ops.js ({@link buildBundles}). */
  bundles: string;
  /** LLaMA folder (config.json + safetensors), served under /files/model/. */
  model?: string;
  /** VQGAN tokenizer folder, served under /files/tokenizer/. */
  tokenizer?: string;
  /** Examples folder: one subfolder per prompt, its images in name order; /files/examples/. */
  examples?: string;
  /** Port (default 0: any free one). */
  port?: number;
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".png": "image/png",
  ".jpg": "image/jpeg",
  ".jpeg": "image/jpeg",
  ".gif": "image/gif",
  ".webp": "image/webp",
  ".bmp": "image/bmp",
};
/** Name order with numbers compared by value ("2.png" before "10.png"). */
const natural = (a: string, b: string) => a.localeCompare(b, "en", { numeric: true });
const IMAGE = /\.(png|jpe?g|gif|webp|bmp)$/i;

async function listFiles(dir: string, url: string): Promise<ServedFile[]> {
  const out: ServedFile[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!e.isFile || e.name.startsWith(".")) continue;
    const { size } = await Deno.stat(join(dir, e.name));
    out.push({ name: e.name, url: `${url}/${encodeURIComponent(e.name)}`, size });
  }
  return out.sort((a, b) => natural(a.name, b.name));
}

async function listExamples(dir: string): Promise<WebConfig["examples"]> {
  const out: WebConfig["examples"] = [];
  for await (const e of Deno.readDir(dir)) {
    if (!e.isDirectory || e.name.startsWith(".")) continue;
    const files =
      (await listFiles(join(dir, e.name), `/files/examples/${encodeURIComponent(e.name)}`))
        .filter((f) => IMAGE.test(f.name));
    if (files.length) out.push({ name: e.name, images: files.map((f) => f.url) });
  }
  return out.sort((a, b) => natural(a.name, b.name));
}

/** Builds the `/api/config` answer from the folders. */
export async function webConfig(o: ServeOptions): Promise<WebConfig> {
  return {
    model: o.model
      ? { name: basename(o.model), files: await listFiles(o.model, "/files/model") }
      : null,
    tokenizer: o.tokenizer
      ? { name: basename(o.tokenizer), files: await listFiles(o.tokenizer, "/files/tokenizer") }
      : null,
    examples: o.examples ? await listExamples(o.examples) : [],
  };
}

/** `path` inside `dir` (resolved), or null when it would leave it. */
function inside(dir: string, path: string): string | null {
  const p = resolve(dir, path);
  const rel = relative(resolve(dir), p);
  return rel === "" || rel.startsWith("..") ? null : p;
}

/** A file's response; a `Range: bytes=a-b` request gets 206 and those bytes. */
async function fileResponse(path: string | null, req: Request): Promise<Response> {
  if (!path) return new Response("not found", { status: 404 });
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch {
    return new Response("not found", { status: 404 });
  }
  const { size, isFile } = await file.stat();
  if (!isFile) {
    file.close();
    return new Response("not found", { status: 404 });
  }
  const headers = new Headers({
    "content-type": TYPES[extname(path).toLowerCase()] ?? "application/octet-stream",
    "accept-ranges": "bytes",
    "cache-control": "no-cache",
  });
  const m = req.headers.get("range")?.match(/^bytes=(\d+)-(\d*)$/);
  if (m) {
    const start = Number(m[1]), end = Math.min(m[2] ? Number(m[2]) : size - 1, size - 1);
    if (start > end || start >= size) {
      file.close();
      return new Response(null, { status: 416, headers: { "content-range": `bytes */${size}` } });
    }
    const buf = new Uint8Array(end - start + 1);
    await file.seek(start, Deno.SeekMode.Start);
    let n = 0;
    while (n < buf.length) {
      const r = await file.read(buf.subarray(n));
      if (r === null) break;
      n += r;
    }
    file.close();
    headers.set("content-range", `bytes ${start}-${end}/${size}`);
    return new Response(buf.subarray(0, n), { status: 206, headers });
  }
  headers.set("content-length", String(size));
  return new Response(file.readable, { headers });
}

/** Starts the server on 127.0.0.1; `url` is where the page is. */
export function serveWeb(o: ServeOptions): { url: string; server: Deno.HttpServer } {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: o.port ?? 0, onListen() {} },
    async (req) => {
      const path = decodeURIComponent(new URL(req.url).pathname);
      if (path === "/" || path === "/index.html") {
        return fileResponse(join(STATIC, "index.html"), req);
      }
      if (path === "/favicon.ico") return new Response(null, { status: 204 });
      if (path === "/ops.html") return fileResponse(join(STATIC, "ops.html"), req);
      if (path === "/app.js" || path === "/ops.js") {
        return fileResponse(join(o.bundles, path.slice(1)), req);
      }
      if (path === "/api/config") return Response.json(await webConfig(o));
      const [, top, ...rest] = path.split("/");
      const sub = rest.join("/");
      if (top === "static") return fileResponse(inside(STATIC, sub), req);
      if (top === "tests" && sub.startsWith("fixtures/kernels/")) {
        return fileResponse(inside(FIXTURES, sub.slice("fixtures/kernels/".length)), req);
      }
      if (top === "files") {
        const [kind, ...name] = rest;
        const dir = kind === "model"
          ? o.model
          : kind === "tokenizer"
          ? o.tokenizer
          : kind === "examples"
          ? o.examples
          : undefined;
        if (dir) return fileResponse(inside(dir, name.join("/")), req);
      }
      return new Response("not found", { status: 404 });
    },
  );
  return { url: `http://127.0.0.1:${server.addr.port}/`, server };
}
