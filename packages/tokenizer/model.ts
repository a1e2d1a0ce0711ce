/**
 * The VQGAN on WebGPU (open-muse `VQGANModel`, f32 everywhere): encoder + quant_conv, nearest-code
 * quantizer, post_quant_conv + decoder, and the backward pass of all of it for training.
 *
 * Forward, per res block (the fused kernels keep it to 4-5 dispatches each):
 *   a = silu(norm1(x))            groupNorm with fused SiLU
 *   h = conv1(a)                  3x3 pad 1
 *   b = silu(norm2(h))
 *   y = conv2(b) + skip           residual fused into the conv's epilogue; skip = nin_shortcut(x)
 *                                 (1x1) when cin != cout, else x
 * Downsample = 3x3 stride-2 conv on x zero-padded bottom/right by 1; Upsample = nearest x2 fused into
 * the following 3x3 conv (four phase convs of the source, or the Winograd path's staging).
 * Each norm is a per-channel scale and shift that the next conv applies with the SiLU while it
 * stages its input (conv2d's `prologue`): a and b are never written. In training the staged
 * activation is kept for that conv's weight gradient (a `Conv2dStash`) and the backward takes the
 * conv's input gradient through the norm from x and the norm's statistics.
 *
 * Backward: a forward run with a {@link Tape} records one closure per module; `tape.backward(dy)`
 * runs them in reverse, each turning its output gradient into its input gradient and storing its
 * parameter gradients (`d<name>` in `tape.grads`, keyed by the open-muse parameter name). Every
 * activation a closure needs is kept until it has run, then released.
 * @module
 */
import {
  conv2d,
  conv2dBackward,
  Conv2dGroupStats,
  type Conv2dOptions,
  Conv2dStash,
  Conv2dWeightCache,
  type Gpu,
  groupNormAffineStatsFromStats,
  groupNormFastBackward,
  groupNormPlaneAffineStats,
  map,
  nchwToRows,
  rowsToNchw,
  type Tensor,
  vqLookup,
  vqNearest,
} from "./_deps.ts";
import { Rng } from "@lvm/util";
import {
  geometry,
  GROUPS,
  layout,
  NORM_EPS,
  type ResBlockSpec,
  type VqganConfig,
  type VqganGeometry,
  vqganParamSpecs,
} from "./config.ts";
import type { VqganWeights } from "./weights.ts";

/** Records the backward closures of a forward run; see the module doc. */
export class Tape {
  #steps: ((dy: Tensor) => Tensor | null)[] = [];
  /** Parameter gradients (open-muse names), filled by {@link backward}. */
  readonly grads: Map<string, Tensor> = new Map();

  /** Adds a module's backward: output gradient -> input gradient (it may release `dy`). */
  push(step: (dy: Tensor) => Tensor | null): void {
    this.#steps.push(step);
  }

  /**
   * Runs the recorded closures in reverse from `dy` (which it releases); returns the gradient of the
   * run's input, or null when the first module was told not to compute it.
   */
  backward(dy: Tensor): Tensor | null {
    let d: Tensor | null = dy;
    while (this.#steps.length) {
      if (!d) throw new Error("Tape.backward: an inner module returned no input gradient");
      d = this.#steps.pop()!(d);
    }
    return d;
  }

  /** Stores a parameter gradient (each parameter is used once in a forward run). */
  setGrad(name: string, g: Tensor | null): void {
    if (!g) return;
    if (this.grads.has(name)) throw new Error(`Tape: gradient of ${name} computed twice`);
    this.grads.set(name, g);
  }
}

const PAD1 = { pad: 1 } as const;
const DOWN = { stride: 2, pad: [0, 1, 0, 1] } as const;
const UP = { pad: 1, upsample2x: true } as const;

/** The VQGAN's parameters on the GPU and its forward/backward passes. */
export class Vqgan {
  /** Derived sizes (levels, grid, tokens per image). */
  readonly geometry: VqganGeometry;

  private constructor(
    readonly gpu: Gpu,
    readonly config: VqganConfig,
    /** Parameters by open-muse name, shapes as {@link vqganParamSpecs}. */
    readonly params: Map<string, Tensor>,
  ) {
    this.geometry = geometry(config);
  }

  /** Uploads host weights (every parameter of the config, checked by size). */
  static fromWeights(gpu: Gpu, config: VqganConfig, weights: VqganWeights): Vqgan {
    const params = new Map<string, Tensor>();
    for (const s of vqganParamSpecs(config)) {
      const w = weights.get(s.name);
      const n = s.shape.reduce((a, b) => a * b, 1);
      if (!w || w.length !== n) {
        for (const t of params.values()) t.release();
        throw new RangeError(
          `Vqgan: weight ${s.name} needs ${n} values for shape [${s.shape}], found ${
            w ? w.length : "none"
          }`,
        );
      }
      params.set(s.name, gpu.upload(w, s.shape));
    }
    return new Vqgan(gpu, config, params);
  }

  /** Parameter `name` (open-muse naming). */
  p(name: string): Tensor {
    const t = this.params.get(name);
    if (!t) throw new RangeError(`Vqgan: no parameter named ${name}`);
    return t;
  }

  /** Reads every parameter back to the host. */
  async readWeights(): Promise<VqganWeights> {
    const names = [...this.params.keys()];
    const data = await this.gpu.readMany(names.map((n) => this.params.get(n)!));
    return new Map(names.map((n, i) => [n, data[i] as Float32Array]));
  }

  /** Frees the parameters (and the staged weights of {@link cacheWeights}). */
  release(): void {
    this.cacheWeights(false);
    for (const t of this.params.values()) t.release();
  }

  #weights: Conv2dWeightCache | null = null;

  /**
   * Keep every conv's staged weights between inference calls (encode/decode without a tape):
   * for a model whose weights no longer change (a loaded tokenizer). Later calls skip the staging
   * passes (6% of an `lvm` encode or decode on lavapipe) at the cost of {@link cachedWeightBytes}
   * (0.45 GB for the `lvm` encoder, 0.9 GB for its decoder). `false` frees them; do that before
   * changing parameter values, or the old weights keep being used. On the "gpu" kernel kind the
   * convs are implicit GEMMs that read the weights as they are: nothing is staged or held.
   */
  cacheWeights(on = true): void {
    if (on) this.#weights ??= new Conv2dWeightCache();
    else {
      this.#weights?.release(this.gpu);
      this.#weights = null;
    }
  }

  /** Bytes held by {@link cacheWeights} (0 when off). */
  get cachedWeightBytes(): number {
    return this.#weights?.bytes ?? 0;
  }

  /**
   * The convs whose output a GroupNorm reads next gather its statistics as they write it (conv2d's
   * `stats`: all but the upsampled conv's direct phases and the gpu kind's implicit GEMMs), so the
   * norm does not read the activation again (`false`: every norm reads its input; the same results
   * to rounding). In inference and training alike.
   */
  gatherStats = true;

  /** Statistics gathered for activations, until their norm takes them (or a conv drops them). */
  #stats = new Map<Tensor, Conv2dGroupStats>();

  /** A fresh stats object for a conv whose output a norm may read next. */
  #gather(): Conv2dGroupStats | undefined {
    return this.gatherStats ? new Conv2dGroupStats() : undefined;
  }

  /** Takes the statistics gathered for x (its norm reads them, or nothing does: then freed). */
  #take(x: Tensor): Conv2dGroupStats | undefined {
    const st = this.#stats.get(x);
    this.#stats.delete(x);
    return st;
  }

  /** Attaches what a conv gathered to its output. */
  #keep(y: Tensor, st?: Conv2dGroupStats): Tensor {
    if (st?.part) this.#stats.set(y, st);
    else st?.release();
    return y;
  }

  /** Releases an inference activation with what was gathered for it. */
  #free(t: Tensor): void {
    this.#stats.get(t)?.release();
    this.#stats.delete(t);
    t.release();
  }

  // ----------------------------------------------------------------------------------- modules

  /**
   * conv `name` on x. With a tape, records its backward, which releases x when `ownX` (the tape
   * owns the activations between modules) and skips dx when `dx` is false (the images).
   */
  #conv(
    x: Tensor,
    name: string,
    opts: Conv2dOptions,
    tape?: Tape,
    ownX = true,
    dx = true,
    normNext = false,
  ): Tensor {
    const w = this.p(`${name}.weight`), b = this.p(`${name}.bias`);
    const stash = tape ? new Conv2dStash() : undefined; // x as staged, for the backward's dW
    if (tape) this.#take(x)?.release(); // gathered for a norm that x does not go through
    const stats = normNext ? this.#gather() : undefined;
    const y = this.#keep(
      conv2d(this.gpu, x, w, b, {
        ...opts,
        stash,
        weights: tape ? undefined : this.#weights ?? undefined,
        stats,
      }),
      stats,
    );
    tape?.push((dy) => {
      const g = conv2dBackward(this.gpu, x, w, dy, { ...opts, dx, stash });
      tape.setGrad(`${name}.weight`, g.dw);
      tape.setGrad(`${name}.bias`, g.dbias);
      dy.release();
      if (ownX) x.release();
      return g.dx;
    });
    return y;
  }

  /**
   * conv `conv`(silu(norm `norm`(x))) (+ residual): the norm is a per-channel affine that conv2d
   * applies as it stages x (its prologue), so no normalized copy of x is made. With a tape
   * (training) the staged activation is kept for the weight gradient and the recorded backward
   * takes the conv's input gradient through the norm (releasing x when `ownX`; the residual's
   * gradient is the caller's). `normNext`: the output's statistics are gathered for the next norm.
   * `addToDx.t`, when the backward runs, is added to its input gradient in the norm's dx pass (a
   * res block's skip gradient).
   */
  #normSiluConv(
    x: Tensor,
    norm: string,
    conv: string,
    residual?: Tensor,
    normNext = true,
    tape?: Tape,
    ownX = true,
    addToDx?: { t: Tensor | null },
  ): Tensor {
    const gpu = this.gpu;
    const gamma = this.p(`${norm}.weight`), beta = this.p(`${norm}.bias`);
    const w = this.p(`${conv}.weight`);
    // From the statistics the conv that made x gathered, else by reading x (the norm's mean and
    // rstd are kept for the backward in training).
    const xs = this.#take(x);
    const [B, C] = x.shape;
    const st = xs
      ? groupNormAffineStatsFromStats(gpu, xs, B, C, gamma, beta, GROUPS, NORM_EPS)
      : groupNormPlaneAffineStats(gpu, x, gamma, beta, GROUPS, NORM_EPS);
    xs?.release();
    const prologue = { ss: st.ss, silu: true };
    const stash = tape ? new Conv2dStash() : undefined;
    const stats = normNext ? this.#gather() : undefined;
    const y = this.#keep(
      conv2d(gpu, x, w, this.p(`${conv}.bias`), {
        ...PAD1,
        residual,
        prologue,
        stash,
        weights: tape ? undefined : this.#weights ?? undefined,
        stats,
      }),
      stats,
    );
    if (!tape) {
      for (const t of [st.ss, st.mean, st.rstd]) t.release();
      return y;
    }
    tape.push((dy) => {
      const g = conv2dBackward(gpu, x, w, dy, { ...PAD1, stash, prologue });
      tape.setGrad(`${conv}.weight`, g.dw);
      tape.setGrad(`${conv}.bias`, g.dbias);
      if (!residual) dy.release(); // else the caller's closure still sends it to the skip
      st.ss.release();
      const add = addToDx?.t ?? undefined;
      const gn = groupNormFastBackward(
        gpu,
        x,
        gamma,
        beta,
        st.mean,
        st.rstd,
        g.dx!,
        true,
        undefined,
        add,
      );
      g.dx!.release();
      tape.setGrad(`${norm}.weight`, gn.dgamma);
      tape.setGrad(`${norm}.bias`, gn.dbeta);
      st.mean.release();
      st.rstd.release();
      if (ownX) x.release();
      return gn.dx;
    });
    return y;
  }

  /** One res block; x is kept (the caller owns it) unless a tape takes it over. */
  #res(s: ResBlockSpec, x: Tensor, tape?: Tape): Tensor {
    const gpu = this.gpu, n = s.name;
    const nin = s.cin !== s.cout;
    const ninStash = tape && nin ? new Conv2dStash() : undefined;
    const skip = nin // (B,cout,H,W)
      ? conv2d(gpu, x, this.p(`${n}.nin_shortcut.weight`), this.p(`${n}.nin_shortcut.bias`), {
        stash: ninStash,
        weights: tape ? undefined : this.#weights ?? undefined,
      })
      : x;
    if (!tape) {
      const h = this.#normSiluConv(x, `${n}.norm1`, `${n}.conv1`); // (B,cout,H,W)
      const y = this.#normSiluConv(h, `${n}.norm2`, `${n}.conv2`, skip);
      this.#free(h);
      if (nin) skip.release();
      return y;
    }
    // h = conv1(silu(norm1(x))), y = conv2(silu(norm2(h))) + skip: the normalized activations are
    // never written (each conv applies its norm as it stages its input).
    const sub = new Tape();
    const skipGrad: { t: Tensor | null } = { t: null };
    const h = this.#normSiluConv(
      x,
      `${n}.norm1`,
      `${n}.conv1`,
      undefined,
      true,
      sub,
      false,
      skipGrad,
    );
    const y = this.#normSiluConv(h, `${n}.norm2`, `${n}.conv2`, skip, true, sub);
    if (nin) skip.release();
    tape.push((dy) => {
      // y = conv2(b) + skip(x): dy flows to both branches (conv2's closure leaves dy to this one).
      // The skip's gradient (dy, or the shortcut conv's dx) is added in norm1's dx pass.
      let dskip: Tensor = dy;
      if (nin) {
        const gs = conv2dBackward(gpu, x, this.p(`${n}.nin_shortcut.weight`), dy, {
          stash: ninStash,
        });
        tape.setGrad(`${n}.nin_shortcut.weight`, gs.dw);
        tape.setGrad(`${n}.nin_shortcut.bias`, gs.dbias);
        dskip = gs.dx!;
      }
      skipGrad.t = dskip;
      const dx = sub.backward(dy)!; // through conv2, norm2, conv1, norm1, plus dskip
      for (const [k, v] of sub.grads) tape.setGrad(k, v);
      if (nin) dskip.release();
      dy.release();
      x.release();
      return dx;
    });
    return y;
  }

  /**
   * Encoder + quant_conv: images x (B,3,R,R) in [0,1] -> latents z (B,E,h,w). With a tape the
   * backward is recorded (x stays owned by the caller; the input gradient is not computed).
   */
  encode(x: Tensor, tape?: Tape): Tensor {
    const { resolution: R, numChannels } = this.config;
    if (
      x.shape.length !== 4 || x.shape[1] !== numChannels || x.shape[2] !== R || x.shape[3] !== R
    ) {
      throw new RangeError(
        `Vqgan.encode: x must be (B,${numChannels},${R},${R}), got [${x.shape}]`,
      );
    }
    const L = layout(this.config);
    // (B,hidden,R,R)
    let h = this.#conv(x, "encoder.conv_in", PAD1, tape, false, false, true);
    const step = (next: Tensor) => {
      if (!tape) this.#free(h);
      h = next;
    };
    for (const lv of L.down) {
      for (const s of lv.blocks) step(this.#res(s, h, tape));
      // (B,C,H/2,W/2)
      if (lv.downsample) step(this.#conv(h, lv.downsample, DOWN, tape, true, true, true));
    }
    for (const s of L.encMid) step(this.#res(s, h, tape));
    // (B,z,h,w)
    step(this.#normSiluConv(h, "encoder.norm_out", "encoder.conv_out", undefined, false, tape));
    step(this.#conv(h, "quant_conv", {}, tape)); // (B,E,h,w)
    return h;
  }

  /** post_quant_conv + decoder: latents q (B,E,h,w) -> unclamped images (B,3,R,R). q stays the caller's. */
  decode(q: Tensor, tape?: Tape): Tensor {
    const { grid: G } = this.geometry;
    const E = this.config.quantizedEmbedDim;
    if (q.shape.length !== 4 || q.shape[1] !== E || q.shape[2] !== G || q.shape[3] !== G) {
      throw new RangeError(`Vqgan.decode: q must be (B,${E},${G},${G}), got [${q.shape}]`);
    }
    const L = layout(this.config);
    let h = this.#conv(q, "post_quant_conv", {}, tape, false); // (B,z,h,w)
    const step = (next: Tensor) => {
      if (!tape) this.#free(h);
      h = next;
    };
    step(this.#conv(h, "decoder.conv_in", PAD1, tape, true, true, true)); // (B,mid,h,w)
    for (const s of L.decMid) step(this.#res(s, h, tape));
    for (const lv of L.up) {
      for (const s of lv.blocks) step(this.#res(s, h, tape));
      // (B,C,2H,2W)
      if (lv.upsample) step(this.#conv(h, lv.upsample, UP, tape, true, true, true));
    }
    // (B,3,R,R)
    step(this.#normSiluConv(h, "decoder.norm_out", "decoder.conv_out", undefined, false, tape));
    return h;
  }

  /** Nearest codes of latents z (B,E,h,w) -> ids (B*h*w) i32, raster order per image. */
  codes(z: Tensor): Tensor {
    const rows = nchwToRows(this.gpu, z); // (B*h*w, E)
    const r = vqNearest(this.gpu, rows, this.p("quantize.embedding.weight"));
    rows.release();
    r.dist.release();
    return r.ids;
  }

  /** Code vectors of ids (B*h*w) i32 as latents (B,E,h,w). Ids must be in range (checked by callers). */
  lookup(ids: Tensor, B: number): Tensor {
    const { grid: G } = this.geometry;
    const rows = vqLookup(this.gpu, ids, this.p("quantize.embedding.weight")); // (B*h*w, E)
    const q = rowsToNchw(this.gpu, rows, B, G, G);
    rows.release();
    return q;
  }

  /** Images (B,3,R,R) in [0,1] -> ids (B*h*w) i32. */
  encodeIds(x: Tensor): Tensor {
    const z = this.encode(x);
    const ids = this.codes(z);
    z.release();
    return ids;
  }

  /** ids (B*h*w) i32 -> images (B,3,R,R) clamped to [0,1]. */
  decodeIds(ids: Tensor, B: number): Tensor {
    const q = this.lookup(ids, B);
    const raw = this.decode(q);
    q.release();
    const img = map(this.gpu, "clamp(a, 0.0, 1.0)", [raw]);
    raw.release();
    return img;
  }

  /** Bytes of the largest tensor one image needs (see {@link activationBytesPerImage}). */
  activationBytesPerImage(): number {
    return activationBytesPerImage(this.config);
  }

  /** Largest batch whose tensors fit one storage binding of this adapter (at least 1). */
  maxBatch(): number {
    return Math.max(1, maxBatchFor(this.config, this.gpu.limits.maxStorageBufferBindingSize));
  }
}

/**
 * Bytes of the largest tensor (with conv padding slack) that one image needs in a forward or a
 * training step of `config`: every buffer of a batch of B images stays under B times this (checked
 * against the allocations of a training step in train_test.ts). The widest level dominates: the
 * decoder's upsample conv reads the next level's channels at this level's side.
 */
export function activationBytesPerImage(config: VqganConfig): number {
  const { resolution: R, hiddenChannels: hid, channelMult: mult } = config;
  let worst = 0;
  for (let i = 0; i < mult.length; i++) {
    const side = R >> i;
    const ch = hid * Math.max(mult[i], i + 1 < mult.length ? mult[i + 1] : 0);
    worst = Math.max(worst, ch * (side + 4) * (side + 8) * 4);
  }
  return worst;
}

/** Largest batch of `config` whose tensors fit `maxBindingBytes` each (0: not even one image). */
export function maxBatchFor(config: VqganConfig, maxBindingBytes: number): number {
  return Math.floor(maxBindingBytes / activationBytesPerImage(config));
}

/**
 * Throws a RangeError when a batch of `batch` images of `config` cannot fit the adapter's
 * storage-binding limit (`maxBindingBytes`, e.g. `gpu.limits.maxStorageBufferBindingSize`); the
 * message names `label` (e.g. "--batch"), the largest batch that fits, and the sizes.
 */
export function checkBatchFits(
  config: VqganConfig,
  batch: number,
  maxBindingBytes: number,
  label = "batchSize",
): void {
  const per = activationBytesPerImage(config), fit = maxBatchFor(config, maxBindingBytes);
  if (batch <= fit) return;
  const mb = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const R = config.resolution;
  throw new RangeError(
    `${label} ${batch}: at most ${fit} ${
      fit === 1 ? "image" : "images"
    } of ${R}x${R} per step fit this adapter (its largest tensor takes ${
      mb(per)
    } per image; one storage binding holds at most ${mb(maxBindingBytes)})${
      fit ? `; use ${label} ${fit} or less` : ""
    }`,
  );
}

/**
 * Random weights for training from scratch, PyTorch's defaults as open-muse builds the model: conv
 * weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt(5)),
 * GroupNorm weight 1 and bias 0, codebook U(-1/K, 1/K). Deterministic in `seed`.
 */
export function initVqganWeights(config: VqganConfig, seed = 0): VqganWeights {
  const rng = new Rng(seed >>> 0);
  const rnd = () => rng.next();
  const out: VqganWeights = new Map();
  const specs = vqganParamSpecs(config);
  const fanIn = new Map<string, number>();
  for (const sp of specs) {
    if (sp.shape.length === 4) {
      fanIn.set(sp.name.slice(0, -7), sp.shape[1] * sp.shape[2] * sp.shape[3]);
    }
  }
  for (const sp of specs) {
    const n = sp.shape.reduce((a, b) => a * b, 1);
    const w = new Float32Array(n);
    const prefix = sp.name.replace(/\.(weight|bias)$/, "");
    if (sp.name === "quantize.embedding.weight") {
      const K = sp.shape[0];
      for (let i = 0; i < n; i++) w[i] = (rnd() * 2 - 1) / K;
    } else if (fanIn.has(prefix)) {
      const bound = 1 / Math.sqrt(fanIn.get(prefix)!);
      for (let i = 0; i < n; i++) w[i] = (rnd() * 2 - 1) * bound;
    } else if (sp.name.endsWith(".weight")) w.fill(1); // GroupNorm
    out.set(sp.name, w);
  }
  return out;
}
