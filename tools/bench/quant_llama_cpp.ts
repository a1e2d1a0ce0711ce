/**
 * Decode of one small LLaMA GGUF (Q4_0) here and in llama.cpp on this machine's CPU, the reference
 * line issue 13 asks for (`deno task bench --filter quant`). The model is random (hidden 512, 8
 * layers, LVM's vocab of 8292; ~30M parameters), written as a GGUF by @lvm/weights'
 * `convertLlamaToGguf`; ours loads that file (`--dtype q4`: the stored blocks as they are) and
 * decodes greedily on the GPU adapter (DecodeSession, one `step` per token); llama.cpp's figure
 * comes from tools/bench/_llama_cpp_decode.ts in a subprocess. Without `npm:node-llama-cpp@3.21.1`
 * in Deno's cache (CI) the llama.cpp half is skipped with a note; ours is still measured.
 * @module
 */
import { join } from "node:path";
import type { Gpu } from "@lvm/gpu";
import { configToHf, DecodeSession, makeConfig, paramSpecs } from "@lvm/transformer";
import { loadLlama } from "@lvm/transformer/fs";
import { convertLlamaToGguf, writeSafetensors } from "@lvm/weights/fs";
import { randu } from "@lvm/util/testing";
import type { BenchCase } from "./_harness.ts";

const PROMPT = 16, NEW = 32;

/** Writes the random model as safetensors + config.json in `dir` and its Q4_0 GGUF; returns the GGUF. */
async function writeModel(dir: string): Promise<string> {
  const config = makeConfig({ hidden: 512, layers: 8, heads: 8, ffn: 1376, maxPositions: 256 });
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  let seed = 1;
  for (const { name, shape } of paramSpecs(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = shape.length === 1 ? new Float32Array(n).fill(1) : randu(n, seed++, -0.05, 0.05);
    tensors[name] = { dtype: "F32", shape, data };
  }
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(configToHf(config)));
  const file = join(dir, "model-q4_0.gguf");
  await convertLlamaToGguf(dir, file, { type: "Q4_0" });
  return file;
}

/** llama.cpp's decode tokens/s for `file`, or why there is none. */
async function llamaCpp(file: string): Promise<{ tokensPerS?: number; why?: string }> {
  const script = new URL("./_llama_cpp_decode.ts", import.meta.url).pathname;
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-lock", "--cached-only", script, file, `${PROMPT}`, `${NEW}`],
    stdout: "piped",
    stderr: "piped",
  });
  const r = await cmd.output();
  const err = new TextDecoder().decode(r.stderr).trim().split("\n").at(-1) ?? "";
  if (!r.success) return { why: err || `exit code ${r.code}` };
  const line = new TextDecoder().decode(r.stdout).trim().split("\n").at(-1) ?? "";
  try {
    return { tokensPerS: JSON.parse(line).tokens_per_s };
  } catch {
    return { why: `unreadable output ${JSON.stringify(line.slice(0, 80))}` };
  }
}

function llamaCppCase(): BenchCase {
  let dir = "";
  let session: DecodeSession | null = null;
  let release: (() => void) | null = null;
  let ref: { tokensPerS?: number; why?: string } = {};
  let ours = 0; // best decode tokens/s over the runs (steps only, as llama.cpp's figure)
  return {
    name: "decode[llama.cpp ref]",
    shape: `random 512x8 q4_0 GGUF, ${NEW} tokens`,
    reps: 3,
    async setup(gpu: Gpu) {
      dir = await Deno.makeTempDir({ prefix: "bench-llama-cpp-" });
      const file = await writeModel(dir);
      ref = await llamaCpp(file);
      const model = await loadLlama(gpu, file, { dtype: "q4" });
      const s = session = new DecodeSession(model, { maxTokens: PROMPT + NEW + 1 });
      release = () => model.release();
      const prompt = Array.from({ length: PROMPT }, (_, i) => (i * 37) % 500);
      return async () => {
        s.reset();
        await s.prefill(prompt);
        let id = prompt[PROMPT - 1];
        const t0 = performance.now();
        for (let i = 0; i < NEW; i++) {
          const logits = await s.step(id);
          id = argmax(logits);
        }
        ours = Math.max(ours, NEW / ((performance.now() - t0) / 1000));
      };
    },
    teardown() {
      session?.release();
      release?.();
      if (dir) Deno.removeSync(dir, { recursive: true });
    },
    extra() {
      const mine = `ours ${
        ours.toFixed(1)
      } tokens/s decoding (a run: prefill ${PROMPT}, ${NEW} steps)`;
      return ref.tokensPerS !== undefined
        ? {
          tokens_per_s: +ours.toFixed(2),
          llama_cpp_tokens_per_s: ref.tokensPerS,
          note: `${mine}; llama.cpp (CPU, node-llama-cpp 3.21.1) ${ref.tokensPerS} tokens/s`,
        }
        : { tokens_per_s: +ours.toFixed(2), note: `${mine}; llama.cpp skipped: ${ref.why}` };
    },
  };
}

function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let v = 1; v < row.length; v++) if (row[v] > row[best]) best = v;
  return best;
}

/** The cases, in the order they print. */
export const benches: BenchCase[] = [llamaCppCase()];
