/**
 * @lvm/train: one training loop for every model of the LVM, on WebGPU: the transformer on visual
 * sentences and the VQGAN tokenizer on images, each a {@link Trainable}.
 *
 * - trainable.ts: the interface a model implements to be trained (forward/backward of a
 *   micro-batch, after-update hook, evaluation, checkpoint files and state).
 * - llama.ts, vqgan.ts: the two implementations.
 * - schedule.ts: learning-rate schedules (linear warmup, then cosine / linear decay to a floor, or
 *   constant), as the official recipe.
 * - optimizer.ts: AdamW over named parameters with global-norm clipping, all on the GPU; moments
 *   saved as safetensors.
 * - config.ts: the run configuration (model, data, B x T x accumulation, optimizer, schedule,
 *   cadence).
 * - trainer.ts: the loop (gradient accumulation, one loss readback per log interval), validation,
 *   checkpoints that are never written from a diverged state, exact resume.
 * - checkpoint.ts: the run folder (checkpoint-STEP/ in Hugging Face layout + optimizer + state,
 *   `latest`, keep-last-K), atomic.
 * - evaluate.ts: validation loss/perplexity and the official target-image perplexity.
 * - lock.ts: one writer per run folder (a lock file; a dead holder's lock is taken over).
 * - signals.ts: SIGINT and SIGTERM finish the step, save and exit.
 * - metrics.ts: the metrics JSONL and the loss chart (PNG).
 * - llama_run.ts, vqgan_run.ts: a run as `deno task train model` / `tokenizer` sets it up (the
 *   architecture from a preset, config or saved model; the checks before a new or resumed run) and
 *   drives it (lock, signals, progress lines, metrics; the tokenizer written at the end). Their
 *   errors are `@lvm/cli` usage errors naming the flags.
 * - heldout.ts: `deno task train evaluate` from folders: held-out images, tokenizer checkpoints,
 *   the unigram counts of a dataset, `evaluateModels` (@lvm/pipeline's `evaluateLvm` per model,
 *   strips and charts, the JSON report).
 *
 * ```ts ignore
 * import { getGpu } from "@lvm/gpu";
 * import { preset } from "@lvm/transformer";
 * import { makeTrainConfig, Trainer } from "@lvm/train";
 * const gpu = await getGpu();
 * const config = makeTrainConfig({ data: "out/data", model: preset("tiny"), steps: 100, seq: 256 });
 * const trainer = await Trainer.create(gpu, config);
 * await trainer.run({ out: "out/run", onLog: (e) => console.error(e.step, e.loss) });
 *
 * // The VQGAN through the same loop (checkpoints, resume, signals, metrics as above):
 * import { presetConfig } from "@lvm/tokenizer";
 * import { loadSources } from "@lvm/tokenizer/fs";
 * import { makeVqganRunConfig, VqganTrainable } from "@lvm/train";
 * const run = makeVqganRunConfig({ config: presetConfig("tiny"), steps: 200, batch: 8 });
 * const data = { train: await loadSources(["data/images"]), eval: [] };
 * const vq = new Trainer(gpu, await VqganTrainable.open(gpu, run, data), run);
 * await vq.run({ out: "out/vq/checkpoints" });
 * ```
 * @module
 */
export * from "./schedule.ts";
export * from "./optimizer.ts";
export * from "./config.ts";
export * from "./checkpoint.ts";
export * from "./evaluate.ts";
export * from "./trainable.ts";
export * from "./trainer.ts";
export * from "./llama.ts";
export * from "./vqgan.ts";
export * from "./lock.ts";
export * from "./signals.ts";
export * from "./metrics.ts";
export * from "./llama_run.ts";
export * from "./vqgan_run.ts";
export * from "./heldout.ts";
