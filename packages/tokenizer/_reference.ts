/**
 * CPU reference of the whole VQGAN (plain loops from the kernels' CPU references): the forward pass
 * and the training loss, for tests on configurations the PyTorch fixture does not cover (e.g. the
 * nin_shortcut of blocks that change the channel count). Slow: small configs only.
 * @module
 */
import { conv2dCpu, type Conv2dOptions, groupNormCpu, vqNearestCpu } from "@lvm/kernels";
import { geometry, GROUPS, layout, NORM_EPS, type VqganConfig } from "./config.ts";
import type { VqganWeights } from "./weights.ts";

type Act = { data: Float32Array; shape: number[] };

/** The reference forward of one config and weight set. */
export class VqganCpu {
  constructor(readonly config: VqganConfig, readonly w: VqganWeights) {}

  #conv(x: Act, name: string, opts: Conv2dOptions = {}, residual?: Float32Array): Act {
    const wt = this.w.get(`${name}.weight`)!;
    // 1x1: quant_conv, post_quant_conv, nin_shortcut; every other conv is 3x3.
    const k = name.endsWith("quant_conv") || name.endsWith("nin_shortcut") ? 1 : 3;
    const wShape = [wt.length / (x.shape[1] * k * k), x.shape[1], k, k];
    const data = conv2dCpu(x.data, wt, this.w.get(`${name}.bias`)!, {
      ...opts,
      xShape: x.shape,
      wShape,
      residual,
    });
    const [B, , H, W] = x.shape;
    const up = opts.upsample2x ? 2 : 1, s = opts.stride ?? 1;
    const pad = opts.pad === undefined
      ? [0, 0, 0, 0]
      : typeof opts.pad === "number"
      ? [opts.pad, opts.pad, opts.pad, opts.pad]
      : opts.pad;
    const Ho = Math.floor((H * up + pad[0] + pad[1] - k) / s) + 1;
    const Wo = Math.floor((W * up + pad[2] + pad[3] - k) / s) + 1;
    return { data, shape: [B, wShape[0], Ho, Wo] };
  }

  #norm(x: Act, name: string): Act {
    const y = groupNormCpu(
      x.data,
      x.shape,
      this.w.get(`${name}.weight`)!,
      this.w.get(`${name}.bias`)!,
      GROUPS,
      NORM_EPS,
      true,
    ).y;
    return { data: Float32Array.from(y), shape: x.shape };
  }

  #res(x: Act, name: string, nin: boolean): Act {
    let h = this.#conv(this.#norm(x, `${name}.norm1`), `${name}.conv1`, { pad: 1 });
    h = this.#norm(h, `${name}.norm2`);
    const skip = nin ? this.#conv(x, `${name}.nin_shortcut`).data : x.data;
    return this.#conv(h, `${name}.conv2`, { pad: 1 }, skip);
  }

  /** Encoder + quant_conv: x (B,3,R,R) -> z (B,E,h,w). */
  encode(x: Float32Array, B: number): Act {
    const R = this.config.resolution, L = layout(this.config);
    let h = this.#conv({ data: x, shape: [B, 3, R, R] }, "encoder.conv_in", { pad: 1 });
    for (const lv of L.down) {
      for (const s of lv.blocks) h = this.#res(h, s.name, s.cin !== s.cout);
      if (lv.downsample) h = this.#conv(h, lv.downsample, { stride: 2, pad: [0, 1, 0, 1] });
    }
    for (const s of L.encMid) h = this.#res(h, s.name, false);
    h = this.#conv(this.#norm(h, "encoder.norm_out"), "encoder.conv_out", { pad: 1 });
    return this.#conv(h, "quant_conv");
  }

  /** Nearest codes of z (B,E,h,w) -> ids (B*h*w), raster order. */
  codes(z: Act): Int32Array {
    const [B, E, H, W] = z.shape;
    const rows = new Float32Array(B * H * W * E);
    for (let b = 0; b < B; b++) {
      for (let e = 0; e < E; e++) {
        for (let s = 0; s < H * W; s++) {
          rows[(b * H * W + s) * E + e] = z.data[(b * E + e) * H * W + s];
        }
      }
    }
    return vqNearestCpu(
      rows,
      this.w.get("quantize.embedding.weight")!,
      B * H * W,
      this.config.numEmbeddings,
      E,
    ).ids;
  }

  /** Code vectors of ids as (B,E,h,w). */
  lookup(ids: Int32Array, B: number): Act {
    const E = this.config.quantizedEmbedDim, G = geometry(this.config).grid;
    const cb = this.w.get("quantize.embedding.weight")!;
    const q = new Float32Array(B * E * G * G);
    for (let b = 0; b < B; b++) {
      for (let s = 0; s < G * G; s++) {
        for (let e = 0; e < E; e++) q[(b * E + e) * G * G + s] = cb[ids[b * G * G + s] * E + e];
      }
    }
    return { data: q, shape: [B, E, G, G] };
  }

  /** post_quant_conv + decoder: q (B,E,h,w) -> unclamped images. */
  decode(q: Act): Act {
    const L = layout(this.config);
    let h = this.#conv(q, "post_quant_conv");
    h = this.#conv(h, "decoder.conv_in", { pad: 1 });
    for (const s of L.decMid) h = this.#res(h, s.name, false);
    for (const lv of L.up) {
      for (const s of lv.blocks) h = this.#res(h, s.name, s.cin !== s.cout);
      if (lv.upsample) h = this.#conv(h, lv.upsample, { pad: 1, upsample2x: true });
    }
    return this.#conv(this.#norm(h, "decoder.norm_out"), "decoder.conv_out", { pad: 1 });
  }

  /** The training loss (L2 reconstruction + (1 + beta) mean((e - z)^2)) with the given ids. */
  loss(x: Float32Array, B: number, ids?: Int32Array): number {
    const z = this.encode(x, B);
    const id = ids ?? this.codes(z);
    const q = this.lookup(id, B);
    const r = this.decode(q).data;
    let rec = 0, vq = 0;
    for (let i = 0; i < r.length; i++) rec += (r[i] - x[i]) ** 2;
    for (let i = 0; i < q.data.length; i++) vq += (q.data[i] - z.data[i]) ** 2;
    return rec / r.length + (1 + this.config.commitmentCost) * (vq / q.data.length);
  }
}
