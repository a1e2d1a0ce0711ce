/**
 * AdamW over a model's named parameters, on the GPU: the first and second moments live beside the
 * parameters as f32 tensors; one step is global-norm clipping ({@link clipGradNorm}: norm and clip
 * factor stay on the GPU) followed by the in-place AdamW update of every parameter, which reads
 * the clip factor as its gradient scale ({@link adamwGroup}: one dispatch per group of up to 8
 * small parameters, large ones one each, as `adamw`). Nothing is read back.
 *
 * Defaults are the official LVM recipe (EasyLM): beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1
 * applied to every parameter (EasyLM's LLaMA excludes none), global-norm clip 1.0.
 *
 * The moments are saved as `optimizer.safetensors`: `<param>.exp_avg` and `<param>.exp_avg_sq`
 * (PyTorch's state names), F32, with the step count in the metadata, so a resumed run continues
 * bit for bit.
 * @module
 */
import { adamwGroup, clipGradNorm } from "@lvm/kernels";
import type { Gpu, Tensor } from "@lvm/gpu";
import { SafetensorsFile, SafetensorsWriter } from "@lvm/weights/fs";

/** Hyperparameters of {@link AdamW} (JSON-serializable). */
export interface AdamWConfig {
  /** Default 0.9. */
  beta1: number;
  /** Default 0.95 (the official recipe; PyTorch's default is 0.999). */
  beta2: number;
  /** Default 1e-8. */
  eps: number;
  /** Decoupled weight decay, default 0.1. */
  weightDecay: number;
  /**
   * Which parameters decay: "all" (default, as the official EasyLM LLaMA) or "matrices" (skip the
   * 1-D norm weights, as nanoGPT/llm.c do).
   */
  decay: "all" | "matrices";
  /** Global-norm clip threshold; 0 or Infinity disables clipping (the norm is still computed). */
  clip: number;
}

/** The official recipe's values. */
export const ADAMW_DEFAULTS: Readonly<AdamWConfig> = Object.freeze({
  beta1: 0.9,
  beta2: 0.95,
  eps: 1e-8,
  weightDecay: 0.1,
  decay: "all",
  clip: 1.0,
});

/** A config with defaults filled in and every field checked (RangeError naming the field). */
export function makeAdamWConfig(c: Partial<AdamWConfig> = {}): AdamWConfig {
  const out: AdamWConfig = { ...ADAMW_DEFAULTS, ...stripUndefined(c) };
  for (const k of ["beta1", "beta2"] as const) {
    if (!(out[k] >= 0 && out[k] < 1)) {
      throw new RangeError(`AdamW ${k} must be in [0, 1), found ${out[k]}`);
    }
  }
  if (!(out.eps >= 0) || !Number.isFinite(out.eps)) {
    throw new RangeError(`AdamW eps must be a finite number >= 0, found ${out.eps}`);
  }
  if (!(out.weightDecay >= 0) || !Number.isFinite(out.weightDecay)) {
    throw new RangeError(
      `AdamW weightDecay must be a finite number >= 0, found ${out.weightDecay}`,
    );
  }
  if (out.decay !== "all" && out.decay !== "matrices") {
    throw new RangeError(`AdamW decay must be "all" or "matrices", found ${out.decay}`);
  }
  if (!(out.clip >= 0)) throw new RangeError(`AdamW clip must be >= 0, found ${out.clip}`);
  return out;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** What one {@link AdamW.step} leaves on the GPU. */
export interface StepTensors {
  /** (1) global L2 norm of the gradients before clipping. Release it when done. */
  norm: Tensor;
}

/** AdamW state (moments, step count) for a fixed set of named parameters. */
export class AdamW {
  /** Updates done so far (PyTorch's `state["step"]`; the next update uses step + 1). */
  step = 0;
  readonly config: AdamWConfig;
  readonly #m = new Map<string, Tensor>();
  readonly #v = new Map<string, Tensor>();

  /**
   * Zeroed moments for every tensor of `params` (name -> f32 tensor); the order of the map is the
   * order of the updates.
   */
  constructor(
    readonly gpu: Gpu,
    readonly params: ReadonlyMap<string, Tensor>,
    config: Partial<AdamWConfig> = {},
  ) {
    this.config = makeAdamWConfig(config);
    for (const [name, p] of params) {
      if (p.dtype !== "f32") {
        throw new TypeError(`AdamW: parameter "${name}" is ${p.dtype}, training needs f32`);
      }
      this.#m.set(name, gpu.zeros(p.shape));
      this.#v.set(name, gpu.zeros(p.shape));
    }
  }

  /** The first moment of `name`. */
  m(name: string): Tensor {
    return this.#get(this.#m, name);
  }
  /** The second moment of `name`. */
  v(name: string): Tensor {
    return this.#get(this.#v, name);
  }
  #get(map: Map<string, Tensor>, name: string): Tensor {
    const t = map.get(name);
    if (!t) throw new RangeError(`AdamW: "${name}" is not one of the optimized parameters`);
    return t;
  }

  /**
   * Records one update of every parameter from `grads` (same names, f32) at learning rate `lr`:
   * global-norm clip then AdamW, all on the GPU. Returns the (1) gradient-norm tensor.
   */
  update(grads: ReadonlyMap<string, Tensor>, lr: number): StepTensors {
    const { gpu, config: c } = this;
    const list = [...this.params.keys()].map((name) => {
      const g = grads.get(name);
      if (!g) throw new RangeError(`AdamW.update: no gradient for "${name}"`);
      return g;
    });
    const clip = c.clip > 0 && Number.isFinite(c.clip) ? c.clip : 3.4e38;
    const { norm, scale } = clipGradNorm(gpu, list, clip);
    const t = this.step + 1;
    // One dispatch per group of small parameters (adamwGroup), each with its own decay.
    const entries = [...this.params];
    const states = entries.map(([name, param], i) => ({
      param,
      grad: list[i],
      m: this.m(name),
      v: this.v(name),
    }));
    const decays = entries.map(([, param]) =>
      c.decay === "matrices" && param.shape.length < 2 ? 0 : c.weightDecay
    );
    adamwGroup(gpu, states, {
      lr,
      step: t,
      beta1: c.beta1,
      beta2: c.beta2,
      eps: c.eps,
      gradScale: scale,
    }, decays);
    scale.release();
    this.step = t;
    return { norm };
  }

  /** Writes the moments to `path` (atomically), one tensor read back at a time. */
  async save(path: string): Promise<void> {
    const names = [...this.params.keys()];
    const specs = names.flatMap((n) => {
      const shape = this.params.get(n)!.shape;
      return [
        { name: `${n}.exp_avg`, dtype: "F32" as const, shape },
        { name: `${n}.exp_avg_sq`, dtype: "F32" as const, shape },
      ];
    });
    const w = await SafetensorsWriter.create(path, specs, {
      format: "lvm-adamw",
      step: String(this.step),
      config: JSON.stringify(this.config),
    });
    try {
      for (const n of names) {
        const [m, v] = await this.gpu.readMany([this.m(n), this.v(n)]);
        await w.write(`${n}.exp_avg`, m as Float32Array);
        await w.write(`${n}.exp_avg_sq`, v as Float32Array);
      }
      await w.close();
    } catch (e) {
      await w.abort();
      throw e;
    }
  }

  /**
   * Loads moments and step from a file written by {@link save}; every parameter must be present
   * with its shape (a {@link RangeError} names the first that is not).
   */
  async load(path: string): Promise<void> {
    const f = await SafetensorsFile.open(path);
    try {
      for (const [n, p] of this.params) {
        for (const [suffix, t] of [["exp_avg", this.m(n)], ["exp_avg_sq", this.v(n)]] as const) {
          const key = `${n}.${suffix}`;
          if (!f.has(key)) {
            throw new RangeError(`${path}: missing optimizer tensor "${key}" [${p.shape}]`);
          }
          const info = f.info(key);
          if (info.shape.length !== p.shape.length || info.shape.some((d, i) => d !== p.shape[i])) {
            throw new RangeError(
              `${path}: "${key}" has shape [${info.shape}], expected [${p.shape}] like the parameter`,
            );
          }
          this.gpu.write(t, await f.readF32(key));
          await this.gpu.settle();
        }
      }
      const step = Number(f.metadata?.step);
      if (!Number.isInteger(step) || step < 0) {
        throw new RangeError(
          `${path}: metadata "step" is ${JSON.stringify(f.metadata?.step)}, expected a count`,
        );
      }
      this.step = step;
    } finally {
      f.close();
    }
  }

  /** Frees the moments. */
  release(): void {
    for (const t of [...this.#m.values(), ...this.#v.values()]) t.release();
    this.#m.clear();
    this.#v.clear();
  }
}
