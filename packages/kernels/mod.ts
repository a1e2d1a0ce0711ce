/**
 * @lvm/kernels: the WGSL compute kernels, forward and backward, each with its CPU reference.
 * The device context and tensors they run on are `@lvm/gpu`.
 *
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { add } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const a = gpu.upload([1, 2, 3], [3]);
 * const b = gpu.upload([10, 20, 30], [3]);
 * console.log(await gpu.read(add(gpu, a, b))); // Float32Array [11, 22, 33]
 * ```
 * @module
 */
export * from "./ops/elementwise.ts";
export * from "./ops/embedding.ts";
export * from "./ops/rmsnorm.ts";
export * from "./ops/rope.ts";
export * from "./ops/attention.ts";
export * from "./ops/swiglu.ts";
export * from "./ops/reduce.ts";
export * from "./ops/softmax.ts";
export * from "./ops/cross_entropy.ts";
export * from "./ops/adamw.ts";
export * from "./ops/grad_norm.ts";
export * from "./ops/matmul.ts";
export * from "./ops/quant_matmul.ts";
export * from "./ops/conv2d.ts";
export * from "./ops/groupnorm.ts";
export * from "./ops/groupnorm_rows.ts";
export * from "./ops/upsample.ts";
export * from "./ops/vq.ts";
export * from "./ops/sample.ts";
export * from "./ops/decode_fused.ts";
