/**
 * @lvm/weights: tensors as bytes, no GPU and no file system. safetensors parse/encode (every dtype
 * of the spec, header validation, single tensors from multi-GB sources), sharded checkpoints with
 * the Hugging Face index, a restricted reader of `torch.save` files that never executes pickle
 * code, and GGUF files (read, write, quantize) that llama.cpp loads. Everything reads through a
 * {@link ByteSource} (bytes by offset and length), so it runs in a browser; `@lvm/weights/fs` opens files and folders (`SafetensorsFile.open`, `openWeights`) and
 * writes them (`writeSafetensors`).
 *
 * GGUF (llama.cpp's format) and quantization:
 * - quant.ts: GGML's Q8_0/Q4_0 blocks (32 weights + an f16 scale), bit for bit with llama.cpp's
 *   reference quantizers, and the split layout a GPU kernel reads.
 * - gguf.ts: {@link GgufReader} (v2/v3 headers validated, typed metadata, one tensor at a time:
 *   F32, F16, BF16, Q8_0, Q4_0; `readF32` dequantizes), {@link planGguf} (llama.cpp's layout) and
 *   {@link encodeGguf}; `@lvm/weights/fs` has `GgufFile.open`, the streaming `GgufWriter` /
 *   `writeGguf`, and `convertLlamaToGguf` (what `deno task infer quantize` runs).
 * - gguf_llama.ts: llama.cpp's LLaMA conventions: tensor names, `llama.*` metadata from a
 *   config.json and back, the image-code vocabulary, and the q/k row permutation that maps HF's
 *   rotate-half RoPE onto llama.cpp's. {@link GgufLlamaSource} reads a LLaMA GGUF as a
 *   {@link TensorSource} under HF names in HF row order (so `openWeights("m.gguf")` feeds every
 *   loader), with `rawTensor(name)` for the stored Q8_0/Q4_0 blocks.
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
