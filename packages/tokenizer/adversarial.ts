/**
 * The optional adversarial patch loss of tokenizer training: a small PatchGAN discriminator (three
 * 4x4 convs, as taming-transformers' NLayerDiscriminator with n_layers=1 and no normalisation)
 * trained with the hinge loss, whose verdict on the reconstruction is added to the generator's
 * gradient after `start` steps.
 *
 *   D(x):  conv 3->C 4x4 s2 p1, LeakyReLU(0.2), conv C->2C 4x4 s2 p1, LeakyReLU(0.2), conv 2C->1 4x4 p1
 *          -> a map of patch logits (B,1,h,w)
 *   D loss  (hinge): mean(relu(1 - D(x))) + mean(relu(1 + D(sg(x_hat))))
 *   G term:  weight * -mean(D(x_hat)), its gradient flowing into the decoder
 *
 * Simplifications (say so when comparing with taming): a fixed `weight` instead of taming's adaptive
 * weight (the ratio of the last decoder layer's gradient norms), no perceptual (LPIPS) loss, and D
 * starts learning at the same step as its term switches on. D has its own AdamW moments (the
 * generator's hyperparameters); all of it is checkpointed through {@link TrainerExtension}.
 * @module
 */
import {
  adamw,
  conv2d,
  conv2dBackward,
  type Conv2dOptions,
  f32Literal,
  type Gpu,
  map,
  mean,
  type Tensor,
} from "./_deps.ts";
import { Rng } from "@lvm/util";
import type { TrainerExtension, TrainOptions } from "./train.ts";

/** Options of {@link PatchDiscriminator}. */
export interface AdversarialOptions {
  /** Step from which D trains and its term is added (1-based; default 1). */
  start: number;
  /** Weight of the generator's adversarial term (default 0.1). */
  weight: number;
  /** Channels of D's first conv (default 64). */
  channels?: number;
  /** Init seed (default 0). */
  seed?: number;
}

const LEAKY = "select(0.2 * a, a, a > 0.0)";
const LEAKY_BWD = "select(0.2 * b, b, a > 0.0)";

interface Layer {
  name: string;
  w: Tensor;
  b: Tensor;
  opts: Conv2dOptions;
}

/** Activations of one D forward kept for its backward. */
interface DCache {
  x: Tensor;
  h1: Tensor;
  a1: Tensor;
  h2: Tensor;
  a2: Tensor;
  logits: Tensor;
}

/** The PatchGAN discriminator and its training, as an extension of the VQGAN's training. */
export class PatchDiscriminator implements TrainerExtension {
  readonly layers: Layer[];
  /** AdamW first moments of D's parameters. */
  readonly m: Map<string, Tensor> = new Map();
  /** AdamW second moments. */
  readonly v: Map<string, Tensor> = new Map();
  #dStep = 0;
  #lossD: Tensor;
  #lossG: Tensor;

  constructor(
    readonly gpu: Gpu,
    readonly options: AdversarialOptions,
    readonly train: Pick<TrainOptions, "beta1" | "beta2">,
  ) {
    const C = options.channels ?? 64;
    const shapes: [string, number[], Conv2dOptions][] = [
      ["disc.0", [C, 3, 4, 4], { stride: 2, pad: 1 }],
      ["disc.1", [2 * C, C, 4, 4], { stride: 2, pad: 1 }],
      ["disc.2", [1, 2 * C, 4, 4], { pad: 1 }],
    ];
    const rng = new Rng(((options.seed ?? 0) * 2654435761 + 99991) >>> 0);
    const rnd = () => rng.next();
    this.layers = shapes.map(([name, shape, opts]) => {
      // PyTorch's default conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
      const fan = shape[1] * 16, bound = 1 / Math.sqrt(fan);
      const n = shape.reduce((a, b) => a * b, 1);
      const w = gpu.upload(Float32Array.from({ length: n }, () => (rnd() * 2 - 1) * bound), shape);
      const b = gpu.upload(Float32Array.from({ length: shape[0] }, () => (rnd() * 2 - 1) * bound), [
        shape[0],
      ]);
      return { name, w, b, opts };
    });
    for (const l of this.layers) {
      for (const [k, t] of [[`${l.name}.weight`, l.w], [`${l.name}.bias`, l.b]] as const) {
        this.m.set(k, gpu.zeros(t.shape));
        this.v.set(k, gpu.zeros(t.shape));
      }
    }
    this.#lossD = gpu.zeros([1]);
    this.#lossG = gpu.zeros([1]);
  }

  /** D's patch logits (B,1,h,w) of images x (B,3,H,W); the cache feeds {@link backward}. */
  forward(x: Tensor): DCache {
    const g = this.gpu, [l0, l1, l2] = this.layers;
    const h1 = conv2d(g, x, l0.w, l0.b, l0.opts);
    const a1 = map(g, LEAKY, [h1]);
    const h2 = conv2d(g, a1, l1.w, l1.b, l1.opts);
    const a2 = map(g, LEAKY, [h2]);
    const logits = conv2d(g, a2, l2.w, l2.b, l2.opts);
    return { x, h1, a1, h2, a2, logits };
  }

  /**
   * Backward from d loss / d logits: parameter gradients by name and, when `wantDx`, d loss / d x.
   * Releases the cache (not x) and `dlogits`.
   */
  backward(
    c: DCache,
    dlogits: Tensor,
    wantDx: boolean,
  ): { grads: Map<string, Tensor>; dx: Tensor | null } {
    const g = this.gpu, [l0, l1, l2] = this.layers;
    const grads = new Map<string, Tensor>();
    const put = (l: Layer, r: { dw: Tensor | null; dbias: Tensor | null }) => {
      grads.set(`${l.name}.weight`, r.dw!);
      grads.set(`${l.name}.bias`, r.dbias!);
    };
    const r2 = conv2dBackward(g, c.a2, l2.w, dlogits, l2.opts);
    put(l2, r2);
    const dh2 = map(g, LEAKY_BWD, [c.h2, r2.dx!]);
    const r1 = conv2dBackward(g, c.a1, l1.w, dh2, l1.opts);
    put(l1, r1);
    const dh1 = map(g, LEAKY_BWD, [c.h1, r1.dx!]);
    const r0 = conv2dBackward(g, c.x, l0.w, dh1, { ...l0.opts, dx: wantDx });
    put(l0, r0);
    for (const t of [c.h1, c.a1, c.h2, c.a2, c.logits, dlogits, r2.dx!, dh2, r1.dx!, dh1]) {
      t.release();
    }
    return { grads, dx: r0.dx };
  }

  /** Generator term: weight * d(-mean D(x_hat))/d x_hat, from `start` on. */
  reconGrad(recon: Tensor, step: number): Tensor | null {
    if (step < this.options.start) return null;
    const c = this.forward(recon);
    const n = c.logits.size;
    const gl = mean(this.gpu, c.logits, { axis: "all" });
    const lg = map(this.gpu, "-a", [gl]);
    gl.release();
    this.gpu.copy(lg, this.#lossG, 4);
    lg.release();
    const dl = map(this.gpu, `a * 0.0 - ${f32Literal(this.options.weight / n)}`, [c.logits]);
    const { grads, dx } = this.backward(c, dl, true);
    for (const t of grads.values()) t.release();
    return dx;
  }

  /**
   * D's hinge-loss step on the real batch and the (detached) reconstruction, at the generator's
   * learning rate `lr` of this step.
   */
  afterStep(x: Tensor, recon: Tensor, step: number, lr: number): void {
    if (step < this.options.start) return;
    const g = this.gpu;
    const real = this.forward(x), fake = this.forward(recon);
    const n = real.logits.size;
    const s = f32Literal(1 / n);
    // loss = mean(relu(1 - real)) + mean(relu(1 + fake))
    const hr = map(g, "max(1.0 - a, 0.0)", [real.logits]),
      hf = map(g, "max(1.0 + a, 0.0)", [fake.logits]);
    const mr = mean(g, hr, { axis: "all" }), mf = mean(g, hf, { axis: "all" });
    map(g, "a + b", [mr, mf], this.#lossD);
    for (const t of [hr, hf, mr, mf]) t.release();
    const dReal = map(g, `select(0.0, -${s}, a < 1.0)`, [real.logits]);
    const dFake = map(g, `select(0.0, ${s}, a > -1.0)`, [fake.logits]);
    const gr = this.backward(real, dReal, false), gf = this.backward(fake, dFake, false);
    this.#dStep++;
    const o = this.train;
    for (const l of this.layers) {
      for (const [k, p] of [[`${l.name}.weight`, l.w], [`${l.name}.bias`, l.b]] as const) {
        const grad = map(g, "a + b", [gr.grads.get(k)!, gf.grads.get(k)!]);
        adamw(g, { param: p, grad, m: this.m.get(k)!, v: this.v.get(k)! }, {
          lr,
          step: this.#dStep,
          beta1: o.beta1,
          beta2: o.beta2,
          weightDecay: 0,
        });
        grad.release();
      }
    }
    for (const t of [...gr.grads.values(), ...gf.grads.values()]) t.release();
  }

  /** D loss and the generator's adversarial term of the last step (0 before `start`). */
  stats(): { names: string[]; tensors: Tensor[] } {
    return { names: ["d_loss", "g_adv"], tensors: [this.#lossD, this.#lossG] };
  }

  /** Parameters and moments to checkpoint; the D step count rides in a (1) tensor. */
  state(): Map<string, Tensor> {
    const st = new Map<string, Tensor>();
    for (const l of this.layers) {
      st.set(`${l.name}.weight`, l.w);
      st.set(`${l.name}.bias`, l.b);
    }
    for (const [k, t] of this.m) st.set(`m.${k}`, t);
    for (const [k, t] of this.v) st.set(`v.${k}`, t);
    this.#stepTensor?.release();
    this.#stepTensor = this.gpu.upload([this.#dStep], [1]);
    st.set("step", this.#stepTensor);
    return st;
  }
  #stepTensor: Tensor | null = null;

  /** Restores what {@link state} saved. */
  load(values: Map<string, Float32Array>): void {
    const all = this.state();
    for (const [k, t] of all) {
      if (k === "step") continue;
      const v = values.get(k);
      if (!v || v.length !== t.size) {
        throw new RangeError(
          `PatchDiscriminator.load: checkpoint lacks ${k} (or it has the wrong size)`,
        );
      }
      this.gpu.write(t, v);
    }
    const step = values.get("step");
    if (!step) throw new RangeError("PatchDiscriminator.load: checkpoint lacks the D step");
    this.#dStep = step[0];
  }

  /** Frees D. */
  release(): void {
    for (const l of this.layers) {
      l.w.release();
      l.b.release();
    }
    for (const t of [...this.m.values(), ...this.v.values(), this.#lossD, this.#lossG]) t.release();
    this.#stepTensor?.release();
  }
}
