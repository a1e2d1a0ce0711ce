/**
 * Textures the ops keep between calls, one mechanism for all of them. On llvmpipe the
 * register-tiled kernels read their operands from textures (a texel fetch is far cheaper than a
 * bounds-checked storage load), so each op packs its inputs into scratch textures that must not be
 * re-made per call:
 * - {@link TextureCache}: a texture per (slot, size), reused by later calls of the same shape
 *   (a training or decode step uses a fixed set of shapes, so after the first step nothing is
 *   allocated); at most `keep` sizes per slot, least recently used destroyed first.
 * - {@link TexturePool}: textures borrowed for one op and given back (`take`/`put`), for ops that
 *   need several textures of one size at once.
 * Reusing a texture in later dispatches of the same batch is safe: WebGPU orders them. Destroying
 * one first submits the recorded work, which may still read it.
 * @module
 */
import type { Gpu } from "./gpu.ts";

const views = new WeakMap<GPUTexture, GPUTextureView>();

/**
 * The default view of `t`, made once per texture: a pooled texture then binds the same view every
 * time it is lent, so {@link Gpu}'s bind-group cache hits when a step binds the same resources again
 * (a view made per use is a new object, and every dispatch that binds it a new bind group: the tiny
 * tokenizer step made 431 per step of its 466 dispatches, 296 with one view per texture, the rest
 * binding other pooled buffers than the step before; creating them took ~13 ms of the recording
 * thread per step, a V8 CPU profile of 18 steps).
 */
export function textureView(t: GPUTexture): GPUTextureView {
  let v = views.get(t);
  if (!v) views.set(t, v = t.createView());
  return v;
}

/** A texture, the view the kernels bind, and its size in texels (width, height, layers). */
export interface TexSlot {
  texture: GPUTexture;
  view: GPUTextureView;
  w: number;
  h: number;
  l: number;
}

/** How a texture is made: format, usage and the view's dimension. */
export interface TextureOptions {
  /** Default "rgba32float". */
  format?: GPUTextureFormat;
  /** Default storage + texture binding + copy destination. */
  usage?: GPUTextureUsageFlags;
  /** Default "2d-array" (kernels index layers); "2d" for a plain 2D binding. */
  view?: "2d" | "2d-array";
}

/** Makes a (w, h, l) texture and its view. */
export function makeTexture(
  gpu: Gpu,
  w: number,
  h: number,
  l: number,
  label: string,
  opts: TextureOptions = {},
): TexSlot {
  const texture = gpu.device.createTexture({
    label,
    size: [w, h, l],
    format: opts.format ?? "rgba32float",
    usage: opts.usage ??
      (GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING |
        GPUTextureUsage.COPY_DST),
  });
  return { texture, view: texture.createView({ dimension: opts.view ?? "2d-array" }), w, h, l };
}

/** Scratch textures per context, by slot and exact size (see the module doc). */
export class TextureCache {
  #per = new WeakMap<Gpu, Map<string, Map<string, TexSlot>>>();
  /**
   * @param name label prefix of the textures.
   * @param keep sizes kept per slot before the least recently used is destroyed.
   */
  constructor(readonly name: string, readonly keep = Infinity) {}

  /** The slot's texture of this size and format, made when missing. */
  get(gpu: Gpu, slot: string, w: number, h: number, l = 1, opts: TextureOptions = {}): TexSlot {
    let slots = this.#per.get(gpu);
    if (!slots) this.#per.set(gpu, slots = new Map());
    let sizes = slots.get(slot);
    if (!sizes) slots.set(slot, sizes = new Map());
    const key = `${w}x${h}x${l}:${opts.format ?? "rgba32float"}:${opts.view ?? "2d-array"}`;
    let t = sizes.get(key);
    if (t) sizes.delete(key); // re-inserted below as the most recent
    else {
      if (sizes.size >= this.keep) {
        const [oldest, old] = sizes.entries().next().value!;
        gpu.submit(); // work already recorded may still read it
        old.texture.destroy();
        sizes.delete(oldest);
      }
      t = makeTexture(gpu, w, h, l, `${this.name} ${slot}:${key}`, opts);
    }
    sizes.set(key, t);
    return t;
  }

  /** Textures held for `gpu`. */
  count(gpu: Gpu): number {
    let n = 0;
    for (const sizes of this.#per.get(gpu)?.values() ?? []) n += sizes.size;
    return n;
  }

  /** Destroys every texture kept for `gpu` (they are made again on demand). */
  trim(gpu: Gpu): void {
    const slots = this.#per.get(gpu);
    if (!slots) return;
    gpu.submit(); // work already recorded may still read them
    for (const sizes of slots.values()) for (const t of sizes.values()) t.texture.destroy();
    this.#per.delete(gpu);
  }
}

/** 2D rgba32float textures borrowed for one op and given back, per context and size. */
export class TexturePool {
  #per = new WeakMap<Gpu, Map<string, GPUTexture[]>>();
  /** @param name label prefix of the textures. */
  constructor(readonly name: string) {}

  /** A free (w, h) texture (storage + texture binding, copy destination), made when none is free. */
  take(gpu: Gpu, w: number, h: number): GPUTexture {
    const list = this.#per.get(gpu)?.get(`${w}x${h}`);
    if (list?.length) return list.pop()!;
    return gpu.device.createTexture({
      label: `${this.name} ${w}x${h}`,
      size: [w, h],
      format: "rgba32float",
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.STORAGE_BINDING |
        GPUTextureUsage.COPY_DST,
    });
  }

  /** Gives a texture from {@link take} back for later ops (work recorded with it stays valid). */
  put(gpu: Gpu, t: GPUTexture): void {
    let pool = this.#per.get(gpu);
    if (!pool) this.#per.set(gpu, pool = new Map());
    const key = `${t.width}x${t.height}`;
    const list = pool.get(key);
    if (list) list.push(t);
    else pool.set(key, [t]);
  }

  /** Free textures held for `gpu`. */
  count(gpu: Gpu): number {
    let n = 0;
    for (const list of this.#per.get(gpu)?.values() ?? []) n += list.length;
    return n;
  }

  /** Destroys the free textures kept for `gpu` (made again when needed). */
  release(gpu: Gpu): void {
    const pool = this.#per.get(gpu);
    if (!pool) return;
    gpu.submit(); // work already recorded may still read them
    for (const list of pool.values()) for (const t of list) t.destroy();
    pool.clear();
  }
}
