/**
 * @lvm/train: training the LVM transformer on visual sentences, on WebGPU.
 *
 * - schedule.ts: learning-rate schedules (linear warmup, then cosine / linear decay to a floor, or
 *   constant), as the official recipe.
 * - optimizer.ts: AdamW over named parameters with global-norm clipping, all on the GPU; moments
 *   saved as safetensors.
 * - config.ts: the run configuration (model, data, B x T x accumulation, optimizer, schedule,
 *   cadence).
 * - trainer.ts: the loop (gradient accumulation, one loss readback per log interval), validation,
 *   checkpoints, exact resume.
 * - checkpoint.ts: the run folder (checkpoint-STEP/ in Hugging Face layout + optimizer + state,
 *   `latest`, keep-last-K), atomic.
 * - evaluate.ts: validation loss/perplexity and the official target-image perplexity.
 *
 * ```ts ignore
 * import { getGpu } from "@lvm/gpu";
 * import { preset } from "@lvm/transformer";
 * import { makeTrainConfig, Trainer } from "@lvm/train";
 * const gpu = await getGpu();
 * const config = makeTrainConfig({ data: "out/data", model: preset("tiny"), steps: 100, seq: 256 });
 * const trainer = await Trainer.create(gpu, config);
 * await trainer.run({ out: "out/run", onLog: (e) => console.error(e.step, e.loss) });
 * ```
 * @module
 */
export * from "./schedule.ts";
export * from "./optimizer.ts";
export * from "./config.ts";
export * from "./checkpoint.ts";
export * from "./evaluate.ts";
export * from "./trainer.ts";
