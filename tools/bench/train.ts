/**
 * Training throughput of @lvm/train's {@link Trainer}: whole optimizer steps as the `train model`
 * command runs them (loader batch -> forward + backward per micro-batch -> global-norm clip ->
 * AdamW over every parameter), in trained tokens/s. Each timed run is one step plus the read back
 * of its loss and gradient norm (what a `--log-every 1` run does; with a larger interval the CPU
 * waits less). The data is a synthetic token-shard dataset of 4096-token sentences.
 *
 * Napkin math (each case's note gives its own figures): a step costs 3x the forward's
 * 2 * (P - V*D) + 4 * L * H * hd * T/2 FLOPs per token (backward = 2x forward; the V*D embedding
 * lookup is free; causal attention sees T/2 keys on average), times B * T * accum tokens, so `tiny`
 * (2.9M params, 2.1M of them the embedding and lm_head) at 1024 tokens/step is ~12 GFLOP; AdamW
 * reads and writes 16 B/param (f32 weights, grads, two moments).
 * @module
 */
import { join } from "node:path";
import { paramCount, preset } from "@lvm/transformer";
import { makeTrainConfig, Trainer } from "@lvm/train";
import { writeTestDataset } from "@lvm/sentence/testing";
import type { BenchCase } from "./_harness.ts";

/** Configs measured: preset, rows B, row tokens T, accumulation K, repetitions. */
const CONFIGS = [
  { name: "tiny", B: 4, T: 256, K: 1, reps: 3 },
  { name: "tiny", B: 2, T: 256, K: 2, reps: 3 },
  { name: "tiny", B: 1, T: 1024, K: 1, reps: 3 },
  { name: "small", B: 4, T: 256, K: 1, reps: 2 },
];

let tmp = "";
async function dataset(): Promise<string> {
  if (!tmp) {
    tmp = await Deno.makeTempDir({ prefix: "lvm-bench-train-" });
    const sentences = Array.from(
      { length: 64 },
      (_, s) => Array.from({ length: 4096 }, (_, i) => (s * 131 + i * 7) % 8192),
    );
    await writeTestDataset(join(tmp, "data"), sentences, 16);
    addEventListener("unload", () => Deno.removeSync(tmp, { recursive: true }));
  }
  return join(tmp, "data");
}

function flopsPerToken(name: string, T: number): number {
  const c = preset(name);
  // The embedding lookup is free (unless tied, when the same matrix is also the lm_head matmul).
  const matmuls = paramCount(c) - c.vocab * c.hidden * (c.tieEmbeddings ? 0 : 1);
  const attn = 4 * c.layers * c.heads * c.headDim * (T / 2);
  return 3 * (2 * matmuls + attn); // forward + backward
}

/** The training benchmarks. */
export const benches: BenchCase[] = CONFIGS.map(({ name, B, T, K, reps }) => {
  let trainer: Trainer;
  const P = paramCount(preset(name));
  const perToken = flopsPerToken(name, T);
  return {
    name: "train step",
    shape: `${name} B${B} T${T} accum${K}`,
    items: B * T * K,
    unit: "tokens",
    flops: perToken * B * T * K,
    reps,
    note: `Trainer: loader + fwd/bwd + clip + AdamW, loss+norm read back; ` +
      `${(perToken / 1e6).toFixed(1)} MFLOP/token x ${B * T * K} = ` +
      `${(perToken * B * T * K / 1e9).toFixed(1)} GFLOP/step, ` +
      `AdamW 16 B/param = ${(16 * P / 2 ** 20).toFixed(0)} MiB`,
    async setup(gpu) {
      const config = makeTrainConfig({
        data: await dataset(),
        model: preset(name),
        preset: name,
        steps: 1000,
        batch: B,
        seq: T,
        gradAccum: K,
        lr: 1e-3,
        valFraction: 0,
      });
      trainer = await Trainer.create(gpu, config);
      return async () => {
        await trainer.trainStep();
        await trainer.flush();
      };
    },
    teardown: () => trainer.release(),
    extra: () => ({ params_m: +(paramCount(preset(name)) / 1e6).toFixed(2) }),
  };
});
