/**
 * @lvm/transformer: the LLaMA decoder of the Large Vision Model on WebGPU — configuration and presets
 * (100m..7b and CPU-sized tiny/small), forward and hand-written backward for every parameter, KV-cache
 * prefill and decode, and Hugging Face checkpoints (config.json + safetensors, sharded, F32/F16/BF16).
 *
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { Llama, preset } from "@lvm/transformer";
 * const gpu = await getGpu();
 * const model = Llama.init(gpu, preset("tiny"), { seed: 1 });
 * const { loss } = model.forward({ B: 1, T: 3, inputs: [1, 2, 3], targets: [2, 3, 4] });
 * console.log(await gpu.read(loss!)); // ~ ln(8292) = 9.02
 * ```
 * @module
 */
export * from "./config.ts";
export * from "./init.ts";
export * from "./model.ts";
export * from "./checkpoint.ts";
export * from "./kv_cache.ts";
export * from "./decode.ts";
