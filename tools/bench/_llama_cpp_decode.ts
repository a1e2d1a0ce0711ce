/**
 * llama.cpp's decode speed on this machine's CPU for one GGUF (the reference line of
 * tools/bench/quant_llama_cpp.ts, which runs this in a subprocess with `--no-lock --cached-only`,
 * so a machine without `npm:node-llama-cpp@3.21.1` in Deno's cache — CI — skips it in a second and
 * nothing is added to deno.lock):
 *
 *   deno run -A --no-lock --cached-only tools/bench/_llama_cpp_decode.ts FILE.gguf PROMPT NEW
 *
 * Evaluates a PROMPT-id prompt, then generates NEW ids greedily one at a time; prints one JSON line
 * `{"tokens_per_s", "decode_s", "new", "threads"}` (decode time only: from the first generated id
 * to the last). Exit code 3 with a message on stderr when node-llama-cpp cannot be imported.
 *
 * One thread unless `LLAMA_CPP_THREADS` says otherwise: llama.cpp's threads meet at a spinning
 * barrier after every op, and on this 2-core machine shared with a training run two of them ran
 * 32 tokens in 350 s (0.09 tokens/s) where one ran 40 tokens/s. On a quiet machine two threads
 * pay: the synthetic 7B's Q4_0 GGUF ran 8.27 tokens/s with `LLAMA_CPP_THREADS=2`, 3.81 with one.
 * @module
 */
const SPEC = "npm:node-llama-cpp@3.21.1"; // computed import: `deno check` and the lock never see it
interface Sequence {
  evaluate(tokens: number[], o?: Record<string, unknown>): AsyncGenerator<number>;
}
interface LlamaCpp {
  loadModel(o: { modelPath: string }): Promise<{
    createContext(o: Record<string, unknown>): Promise<{ getSequence(): Sequence }>;
  }>;
}
let mod: {
  getLlama(o: Record<string, unknown>): Promise<LlamaCpp>;
  LlamaLogLevel: { error: unknown };
};
try {
  mod = await import(SPEC);
} catch (e) {
  console.error(`${SPEC} is not available here (${(e as Error).message.split("\n")[0]})`);
  Deno.exit(3);
}
const [file, promptArg = "16", newArg = "32"] = Deno.args;
const P = Number(promptArg), NEW = Number(newArg);
const llama = await mod.getLlama({ gpu: false, build: "never", logLevel: mod.LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: file });
const threads = Number(Deno.env.get("LLAMA_CPP_THREADS") ?? 1);
const ctx = await model.createContext({ contextSize: P + NEW + 8, batchSize: P + 8, threads });
const seq = ctx.getSequence();
const prompt = Array.from({ length: P }, (_, i) => (i * 37) % 500);
let n = 0, t0 = 0;
for await (const _ of seq.evaluate(prompt, { temperature: 0 })) {
  if (n === 0) t0 = performance.now(); // the prompt's evaluation ends with the first id
  if (++n > NEW) break;
}
const s = (performance.now() - t0) / 1000;
console.log(JSON.stringify({
  tokens_per_s: +(NEW / s).toFixed(2),
  decode_s: +s.toFixed(3),
  new: NEW,
  threads,
}));
Deno.exit(0); // node-llama-cpp's worker threads would keep the process alive
