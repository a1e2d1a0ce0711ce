/**
 * `deno task infer quantize --model DIR --out FILE.gguf --type q8_0|q4_0|f16|bf16|f32 [--json]`:
 * a Hugging Face LLaMA folder (config.json + safetensors or torch weights, any dtype; or a LLaMA
 * `.gguf`) to a GGUF file llama.cpp loads, one tensor at a time (`@lvm/weights/fs`'s
 * `convertLlamaToGguf`): llama.cpp's names and metadata, q/k rows permuted for its RoPE, matrices
 * as `--type`, norms F32, rows not a multiple of 32 as F16 (noted). The file appears atomically.
 * @module
 */
import { type Command, enumFlag, parseFlags, progressMeter, required, UsageError } from "@lvm/cli";
import type { GgmlType } from "@lvm/weights";
import { convertLlamaToGguf } from "@lvm/weights/fs";

const TYPES = ["q8_0", "q4_0", "f16", "bf16", "f32"] as const;

const usage = `usage: deno task infer quantize --model DIR --out FILE.gguf --type T [--json]

  --model DIR      Hugging Face LLaMA folder (config.json + model.safetensors, shards, or
                   pytorch_model.bin; F32/F16/BF16...), or a LLaMA .gguf to re-type
  --out FILE.gguf  the GGUF file to write (atomically; an existing file is replaced)
  --type T         matrix storage: q8_0 (34 bytes per 32 weights), q4_0 (18 per 32), f16, bf16,
                   f32; norms stay f32, matrices whose rows are not a multiple of 32 become f16
  --name NAME      general.name in the file (default: the model folder's name)
  --json           print {"file", "type", "tensors", "bytes", "seconds", "notes"} on stdout
The file loads in llama.cpp (arch "llama", q/k permuted as convert_hf_to_gguf.py does) and in
this repository wherever a model's weights are opened (openWeights reads it back under HF names).`;

/** The `quantize` subcommand. */
export const quantize: Command = {
  summary: "write a LLaMA as a (quantized) GGUF file for llama.cpp",
  usage,
  async run(args) {
    const { values } = parseFlags({
      args,
      options: {
        model: { type: "string" },
        out: { type: "string" },
        type: { type: "string" },
        name: { type: "string" },
        json: { type: "boolean", default: false },
      },
    });
    const model = required("model", values.model, "DIR");
    const out = required("out", values.out, "FILE.gguf");
    const type = enumFlag("type", required("type", values.type, "T"), TYPES, undefined)!;
    if (!out.endsWith(".gguf")) throw new UsageError(`--out ${out}: expected a FILE.gguf`);
    if (out === model) throw new UsageError(`--out ${out} is the --model itself`);
    const log = (s: string) => console.error(s);
    const name = values.name ?? model.replace(/\/+$/, "").split("/").pop()!.replace(/\.gguf$/, "");
    const ggml = type.toUpperCase() as GgmlType;
    log(`quantize: ${model} -> ${out} (${ggml})`);
    const t0 = performance.now();
    let meter: ((done: number, fields?: readonly string[]) => void) | undefined;
    const r = await convertLlamaToGguf(model, out, {
      type: ggml,
      name,
      onTensor: (t, i, total) => {
        meter ??= progressMeter({ total, log, unit: "tensor", label: "[quantize]" });
        meter(i + 1, [`${t.name} ${t.type} [${t.shape}]`]);
      },
    });
    const seconds = (performance.now() - t0) / 1000;
    for (const n of r.notes) log(`note: ${n}`);
    for (const s of r.skipped) log(`skipped ${s.name}: ${s.why}`);
    log(
      `wrote ${r.file}: ${r.tensors} tensors, ${(r.bytes / 2 ** 20).toFixed(2)} MiB, ${
        seconds.toFixed(1)
      } s`,
    );
    if (values.json) {
      console.log(JSON.stringify({
        file: r.file,
        type,
        tensors: r.tensors,
        bytes: r.bytes,
        seconds: Number(seconds.toFixed(3)),
        notes: r.notes,
      }));
    }
    return 0;
  },
};
