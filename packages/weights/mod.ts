/**
 * @lvm/weights: tensors as bytes, no GPU and no file system. safetensors parse/encode (every dtype
 * of the spec, header validation, single tensors from multi-GB sources), sharded checkpoints with
 * the Hugging Face index, and a restricted reader of `torch.save` files that never executes pickle
 * code. Everything reads through a {@link ByteSource} (bytes by offset and length), so it runs in a
 * browser; `@lvm/weights/fs` opens files and folders (`SafetensorsFile.open`, `openWeights`) and
 * writes them (`writeSafetensors`).
 *
 * @example Encode and read back safetensors bytes
 * ```ts
 * import { encodeSafetensors, SafetensorsReader } from "@lvm/weights";
 * const bytes = encodeSafetensors({ w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) } });
 * const f = await SafetensorsReader.fromBytes(bytes);
 * console.log(f.names()); // [ "w" ]
 * f.close();
 * ```
 * @module
 */
export * from "./byte_source.ts";
export * from "./safetensors.ts";
export * from "./torch_bin.ts";
export * from "./quant.ts";
export * from "./gguf.ts";
export * from "./gguf_llama.ts";
