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
 *
 * On CPU adapters (Mesa's lavapipe 22.3, the CI machines) the kernels follow what was measured
 * there: storage-buffer loads in a loop are per-lane scalar loops while an rgba32float
 * `textureLoad` is one vectorised gather (hot operands are staged into textures); image and
 * buffer stores go lane by lane; an integer division by a uniform is a loop over the lanes
 * (sizes are baked into the shader, index math is hoisted out of per-element paths, or the
 * division goes by a float reciprocal: `ops/_udivf.ts`); `fma()` compiles to a multiply and an
 * add (the same throughput on the machine measured, twice the instructions); each
 * assignment to a loop-carried variable costs a masked load/blend/store (accumulators take one
 * chained expression per iteration); workgroup barriers are emulated by switching between lanes
 * (reductions are per-invocation loops). And lavapipe inlines uniforms that steer loops or
 * branches when that halves the shader, then compiles the inlined shader again at every dispatch
 * (no variant cache): loop bounds that would shrink a kernel that much are baked in (vq.ts's
 * search paid ~10 ms of JIT compile per call; `perf` shows it as time in libLLVM).
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
