/**
 * Training checkpoints in a run folder:
 *
 * ```
 * RUN/checkpoint-STEP/config.json            the model, Hugging Face layout (loads with loadLlama,
 * RUN/checkpoint-STEP/model.safetensors       `infer`, or transformers' LlamaForCausalLM), F32
 * RUN/checkpoint-STEP/optimizer.safetensors   AdamW moments (<param>.exp_avg, <param>.exp_avg_sq)
 * RUN/checkpoint-STEP/trainer_state.json      step, run config, schedule, loader position, RNG, log
 * RUN/latest                                  "checkpoint-STEP": the newest complete checkpoint
 * ```
 * A checkpoint is written into a hidden temp folder beside its final name and renamed into place
 * when complete, then `latest` is replaced (temp file + rename), then the oldest checkpoints beyond
 * `keep` are deleted: a crash at any point leaves `latest` naming a complete checkpoint.
 * @module
 */
import { join } from "node:path";
import { writeFileAtomic } from "@lvm/util/fs";
import type { LoaderState } from "@lvm/sentence";
import type { TrainConfig } from "./config.ts";
import { processAlive } from "./lock.ts";

/** File names inside a checkpoint folder. */
export const STATE_FILE = "trainer_state.json";
/** AdamW moments. */
export const OPTIMIZER_FILE = "optimizer.safetensors";
/** The pointer file in a run folder. */
export const LATEST_FILE = "latest";

/** One progress record kept in the trainer state's history. */
export interface LogRecord {
  step: number;
  loss: number;
  lr: number;
  grad_norm: number;
  tokens: number;
  val_loss?: number;
}

/**
 * Contents of `trainer_state.json`. `C` is the run's config: a LLaMA run's {@link TrainConfig} (the
 * default), or another {@link Trainable}'s; that model's `state()` fields are merged in at the top
 * level (a LLaMA's are `loader` and `rng`).
 */
export interface TrainerState<C = TrainConfig> {
  format: "lvm-trainer-state";
  version: 1;
  /** What was trained: "llama" (also when absent: checkpoints from before the field), "vqgan". */
  kind?: string;
  /** Optimizer steps completed. */
  step: number;
  /** Items trained on so far: tokens for a LLaMA, images for a VQGAN. */
  tokens: number;
  /** The run's configuration (schedule and optimizer included). */
  config: C;
  /** Learning rate of the next step. */
  next_lr: number;
  /** The training loader's position after the last batch used (a LLaMA run's). */
  loader: LoaderState;
  /**
   * Randomness: weights are initialised from `seed`, the data order comes from `seed` and the
   * loader position; training itself draws nothing (no dropout), so this is the whole RNG state.
   */
  rng: { seed: number; splitSeed: number } | number;
  /** Seconds spent training over all sessions. */
  elapsed_s: number;
  /** Recent progress records (at most {@link HISTORY_LIMIT}). */
  log_history: LogRecord[];
  /** ISO time of the save. */
  saved_at: string;
  /** Other fields of the model's `state()`. */
  [field: string]: unknown;
}

/** Most log records kept in a trainer state. */
export const HISTORY_LIMIT = 1000;

/** A run folder or checkpoint that cannot be used: names the path and what is wrong. */
export class CheckpointError extends Error {
  override name = "CheckpointError";
}

/** Folder name of the checkpoint after `step` steps. */
export function checkpointName(step: number): string {
  return `checkpoint-${step}`;
}

/** Complete checkpoints in a run folder, oldest first (missing folder: none). */
export async function listCheckpoints(runDir: string): Promise<{ step: number; path: string }[]> {
  const out: { step: number; path: string }[] = [];
  try {
    for await (const e of Deno.readDir(runDir)) {
      const m = /^checkpoint-(\d+)$/.exec(e.name);
      if (e.isDirectory && m) out.push({ step: Number(m[1]), path: join(runDir, e.name) });
    }
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  return out.sort((a, b) => a.step - b.step);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/**
 * The newest checkpoint of a run folder: the one `latest` names, else the highest step. Null when
 * the folder holds none.
 */
export async function latestCheckpoint(runDir: string): Promise<string | null> {
  try {
    const name = (await Deno.readTextFile(join(runDir, LATEST_FILE))).trim();
    if (name && (await exists(join(runDir, name, STATE_FILE)))) return join(runDir, name);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
  const all = await listCheckpoints(runDir);
  for (let i = all.length - 1; i >= 0; i--) {
    if (await exists(join(all[i].path, STATE_FILE))) return all[i].path;
  }
  return null;
}

/**
 * A checkpoint folder from `path`: a checkpoint folder itself (holds trainer_state.json) or a run
 * folder (its latest checkpoint). Throws a {@link CheckpointError} otherwise.
 */
export async function resolveCheckpoint(path: string): Promise<string> {
  if (await exists(join(path, STATE_FILE))) return path;
  const latest = await latestCheckpoint(path);
  if (latest) return latest;
  throw new CheckpointError(
    `${path}: neither a checkpoint (no ${STATE_FILE}) nor a run folder holding checkpoint-STEP ` +
      `folders`,
  );
}

/**
 * Reads and checks `DIR/trainer_state.json`. `kind` (default "llama") is the model the caller
 * expects: a checkpoint of another kind is refused.
 */
export async function readTrainerState<C = TrainConfig>(
  dir: string,
  kind = "llama",
): Promise<TrainerState<C>> {
  const path = join(dir, STATE_FILE);
  let raw: unknown;
  try {
    raw = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new CheckpointError(`${path}: cannot read trainer state (${(e as Error).message})`);
  }
  const s = raw as TrainerState<C>;
  if (!s || s.format !== "lvm-trainer-state" || s.version !== 1) {
    throw new CheckpointError(
      `${path}: not a trainer state (format ${JSON.stringify(s?.format)} version ${s?.version}, ` +
        `expected "lvm-trainer-state" 1)`,
    );
  }
  if ((s.kind ?? "llama") !== kind) {
    throw new CheckpointError(
      `${path}: a checkpoint of a ${s.kind ?? "llama"} run, not of a ${kind} (another command ` +
        `wrote this run folder)`,
    );
  }
  if (
    !Number.isInteger(s.step) || s.step < 0 || typeof s.config !== "object" ||
    (kind === "llama" && !s.loader)
  ) {
    throw new CheckpointError(`${path}: trainer state lacks step, config or loader position`);
  }
  return s;
}

/**
 * Writes checkpoint `step` of a run: `write(tmpDir)` fills a temp folder, which is then renamed to
 * `RUN/checkpoint-STEP` (replacing an older one of the same step), `latest` is pointed at it, and
 * checkpoints beyond the newest `keep` are deleted. Returns the checkpoint's path.
 */
export async function commitCheckpoint(
  runDir: string,
  step: number,
  keep: number,
  write: (dir: string) => Promise<void>,
): Promise<string> {
  await Deno.mkdir(runDir, { recursive: true });
  const name = checkpointName(step);
  const final = join(runDir, name);
  const tag = `${Deno.pid}-${Math.random().toString(36).slice(2, 8)}`;
  const tmp = join(runDir, `.${name}.tmp-${tag}`);
  await Deno.mkdir(tmp);
  try {
    await write(tmp);
  } catch (e) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    throw e;
  }
  if (await exists(final)) {
    // Same step saved again (e.g. an interrupted run resumed and interrupted at once): swap.
    const old = join(runDir, `.${name}.old-${tag}`);
    await Deno.rename(final, old);
    await Deno.rename(tmp, final);
    await Deno.remove(old, { recursive: true });
  } else {
    await Deno.rename(tmp, final);
  }
  await writeFileAtomic(join(runDir, LATEST_FILE), name + "\n");
  const all = await listCheckpoints(runDir);
  for (const c of all.slice(0, Math.max(0, all.length - keep))) {
    if (c.path !== final) await Deno.remove(c.path, { recursive: true });
  }
  // Temp folders of a save that was killed midway (never renamed into place): this process's, or
  // those of a process that is gone. Another live process's are left alone (see lock.ts: a run
  // folder has one writer, but a folder without a lock may still be shared).
  for await (const e of Deno.readDir(runDir)) {
    const m = /^\.checkpoint-\d+\.(?:tmp|old)-(\d+)-/.exec(e.name);
    if (m && (Number(m[1]) === Deno.pid || !(await processAlive(Number(m[1]))))) {
      await Deno.remove(join(runDir, e.name), { recursive: true }).catch(() => {});
    }
  }
  return final;
}

/**
 * Removes every checkpoint, temp folder and the `latest` pointer of a run folder (starting over in
 * the same folder); other files are left alone.
 */
export async function clearRun(runDir: string): Promise<void> {
  try {
    for await (const e of Deno.readDir(runDir)) {
      if (/^\.?checkpoint-\d+/.test(e.name) || e.name === LATEST_FILE) {
        await Deno.remove(join(runDir, e.name), { recursive: true });
      }
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}
