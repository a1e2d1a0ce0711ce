/**
 * @lvm/kernels: the WebGPU device context, tensors, WGSL compute kernels (forward and backward)
 * with their CPU references, and safetensors I/O. Every other package builds on it.
 *
 * ```ts
 * import { getGpu, add } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const a = gpu.upload([1, 2, 3], [3]);
 * const b = gpu.upload([10, 20, 30], [3]);
 * console.log(await gpu.read(add(gpu, a, b))); // Float32Array [11, 22, 33]
 * ```
 * @module
 */
export * from "./gpu.ts";
export * from "./tensor.ts";
export * from "./ops/elementwise.ts";
