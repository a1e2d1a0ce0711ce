/**
 * Learning-rate schedules, as plain JSON-serializable objects (saved in `trainer_state.json`) and a
 * pure function of the step.
 *
 * The official LVM recipe (EasyLM's `optax.warmup_cosine_decay_schedule`) is "cosine": linear
 * warmup from `initLr` (0) to `lr` over `warmup` steps, then a half cosine from `lr` down to
 * `minLr` reached at step `decaySteps` (counted from 0, warmup included, as optax's `decay_steps`),
 * and `minLr` after that:
 *
 * ```
 * lr(s) = initLr + (lr - initLr) * s / warmup                          s < warmup
 * lr(s) = minLr + (lr - minLr) * 0.5 * (1 + cos(pi * (s - warmup) / (decaySteps - warmup)))
 *                                                                      warmup <= s < decaySteps
 * lr(s) = minLr                                                        s >= decaySteps
 * ```
 * where `s` is the number of optimizer updates done before this one (0 for the first update), so
 * the first update of a warmed-up run uses `initLr`, exactly as optax and Hugging Face do.
 * Official 7B: lr 1.5e-4, warmup 8000, minLr 3e-5.
 *
 * "constant" is the same warmup followed by a constant `lr`; "linear" decays linearly from `lr`
 * to `minLr` instead of along a cosine.
 * @module
 */

/** Shape of the decay after warmup. */
export type ScheduleKind = "cosine" | "linear" | "constant";

/** A learning-rate schedule (JSON-serializable). */
export interface LrSchedule {
  kind: ScheduleKind;
  /** Peak learning rate (reached at the end of warmup). */
  lr: number;
  /** Floor reached at `decaySteps` ("cosine", "linear"); ignored by "constant". */
  minLr: number;
  /** Linear warmup steps (0 = none). */
  warmup: number;
  /** Step at which the decay reaches `minLr`, warmup included (usually the run's total steps). */
  decaySteps: number;
  /** Learning rate at step 0 of the warmup (default 0, as the official recipe). */
  initLr: number;
  /**
   * Added to the step before the formula (default 0). 1 counts updates from 1, the tokenizer
   * trainer's convention: its first update already uses lr / warmup, its warmup ends one update
   * earlier and its decay reaches the floor at the last update.
   */
  offset?: number;
}

/** Fields of {@link makeSchedule}; missing ones get the defaults shown there. */
export type ScheduleInput = Partial<LrSchedule> & Pick<LrSchedule, "lr">;

/**
 * A checked schedule. Defaults: kind "cosine", minLr = lr / 10 (the official 1.5e-4 -> 3e-5 is
 * lr / 5; pass it explicitly to match), warmup 0, initLr 0. `decaySteps` (usually the run's total
 * steps) is required for "cosine" and "linear".
 *
 * @example
 * ```ts
 * import { lrAt, makeSchedule } from "@lvm/train";
 * const s = makeSchedule({ lr: 1.5e-4, minLr: 3e-5, warmup: 8000, decaySteps: 100_000 });
 * console.assert(lrAt(s, 0) === 0 && lrAt(s, 8000) === 1.5e-4 && lrAt(s, 100_000) === 3e-5);
 * ```
 */
export function makeSchedule(input: ScheduleInput): LrSchedule {
  if (input.decaySteps === undefined && (input.kind ?? "cosine") !== "constant") {
    throw new RangeError(
      `makeSchedule: a "${input.kind ?? "cosine"}" schedule needs decaySteps (the step where it ` +
        `reaches minLr, usually the run's total steps)`,
    );
  }
  const s: LrSchedule = {
    kind: input.kind ?? "cosine",
    lr: input.lr,
    minLr: input.minLr ?? input.lr / 10,
    warmup: input.warmup ?? 0,
    decaySteps: input.decaySteps ?? input.warmup ?? 0,
    initLr: input.initLr ?? 0,
    ...(input.offset ? { offset: input.offset } : {}),
  };
  validateSchedule(s);
  return s;
}

/** Throws a RangeError naming the first field of `s` that is invalid. */
export function validateSchedule(s: LrSchedule): void {
  if (!["cosine", "linear", "constant"].includes(s.kind)) {
    throw new RangeError(
      `LrSchedule.kind must be "cosine", "linear" or "constant", found ${JSON.stringify(s.kind)}`,
    );
  }
  for (const k of ["lr", "minLr", "initLr"] as const) {
    if (typeof s[k] !== "number" || !Number.isFinite(s[k]) || s[k] < 0) {
      throw new RangeError(`LrSchedule.${k} must be a finite number >= 0, found ${s[k]}`);
    }
  }
  if (s.offset !== undefined && !(Number.isInteger(s.offset) && s.offset >= 0)) {
    throw new RangeError(`LrSchedule.offset must be an integer >= 0, found ${s.offset}`);
  }
  for (const k of ["warmup", "decaySteps"] as const) {
    if (!Number.isInteger(s[k]) || s[k] < 0) {
      throw new RangeError(`LrSchedule.${k} must be an integer >= 0, found ${s[k]}`);
    }
  }
  if (s.kind !== "constant" && s.decaySteps < s.warmup) {
    throw new RangeError(
      `LrSchedule.decaySteps (${s.decaySteps}) must be at least warmup (${s.warmup}); ` +
        `it counts the warmup steps too`,
    );
  }
}

/**
 * The learning rate of the update that follows `step` completed updates (0-based update index).
 */
export function lrAt(s: LrSchedule, step: number): number {
  if (!Number.isInteger(step) || step < 0) {
    throw new RangeError(`lrAt: step must be an integer >= 0, found ${step}`);
  }
  step += s.offset ?? 0;
  if (step < s.warmup) return s.initLr + (s.lr - s.initLr) * (step / s.warmup);
  if (s.kind === "constant") return s.lr;
  const span = s.decaySteps - s.warmup;
  if (step >= s.decaySteps || span === 0) return step >= s.decaySteps ? s.minLr : s.lr;
  const t = (step - s.warmup) / span; // in [0, 1)
  const shape = s.kind === "cosine" ? 0.5 * (1 + Math.cos(Math.PI * t)) : 1 - t;
  return s.minLr + (s.lr - s.minLr) * shape;
}
