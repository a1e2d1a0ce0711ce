/**
 * @lvm/gpu: the WebGPU device context (adapter, limits, device, pipeline cache, buffer pool,
 * uniform arena, one command encoder per step), tensors, and the scratch-texture caches the
 * texture-fed kernels share. No ops and no file formats: those are `@lvm/kernels` and
 * `@lvm/weights`. `@lvm/gpu/pin` (Deno on Linux) pins a CPU adapter's compute threads one per core
 * for the contexts created after it is imported (see pin.ts for why).
 *
 * @example Upload, read back
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * const gpu = await getGpu();
 * const t = gpu.upload([1, 2, 3], [3]);
 * console.log(await gpu.read(t)); // Float32Array [1, 2, 3]
 * ```
 * @module
 */
export * from "./gpu.ts";
export * from "./tensor.ts";
export * from "./textures.ts";
