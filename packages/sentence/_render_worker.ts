/**
 * Worker of {@link RenderPool}: loads an image file and renders a key's variant at the
 * tokenizer resolution, off the main thread. Messages: {id, path, key, render} ->
 * {id, width, height, data} (data transferred) or {id, error: {message, tooLarge?: [width, height, limit]}}.
 * @module
 */

import { ImageTooLargeError } from "@lvm/image";
import { loadImage } from "@lvm/image/fs";
import { renderVariant } from "./sources.ts";

// deno-lint-ignore no-explicit-any
const ctx = self as any;
ctx.onmessage = async (e: MessageEvent) => {
  const { id, path, key, render } = e.data;
  try {
    const img = renderVariant(await loadImage(path), key, render);
    ctx.postMessage({ id, width: img.width, height: img.height, data: img.data }, [
      img.data.buffer,
    ]);
  } catch (err) {
    const tooLarge = err instanceof ImageTooLargeError
      ? [err.width, err.height, err.limit]
      : undefined;
    ctx.postMessage({ id, error: { message: (err as Error).message ?? String(err), tooLarge } });
  }
};
