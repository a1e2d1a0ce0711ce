/**
 * Block-quantized weights on the GPU: a {@link QuantWeight} keeps a Linear weight W [out, in] as
 * GGML `Q8_0` or `Q4_0` blocks (32 weights and one f16 scale each; @lvm/weights' quant.ts), packed
 * as GGUF stores them, and the kernels dequantize inside the product, in registers or workgroup
 * memory, never into a full-precision copy of W:
 *
 * - {@link linearQ}: y = x W^T (HF Linear without bias), f32 activations, f32 accumulation.
 * - {@link embeddingQ}: rows of a quantized table, dequantized to f32.
 * - {@link linearAny} / {@link embeddingAny}: one call for any weight a model may hold (f32/f16
 *   tensor, packed, quantized).
 *
 * A weight's blocks live in storage buffers (real GPUs) or, on a CPU adapter, in two rgba32uint
 * textures (llvmpipe fetches a texel with a vectorized gather but loads from a storage buffer in a
 * loop over the lanes); every kernel reads either ({@link QuantLayout}).
 *
 * Variants of linearQ (WGSL in ./_quant_kernels.ts), each checked against {@link linearQCpu}:
 * - `gemv`    one row of x (decode) on a CPU adapter: x in a uniform buffer (broadcast loads),
 *             Q4_0's -8 folded into x's block sums. Texture layout: 16 (Q4_0) / 8 (Q8_0) rows of W
 *             per invocation, each quant isolated by one mask and converted as a signed integer
 *             against x prescaled by a power of two, scales 8 blocks per fetch. Storage layout: 8
 *             rows, shift-and-mask, scales 8 blocks per load where rows allow (K % 256 == 0).
 * - `gemvInt` one row of x against Q4_0 on a CPU adapter, where the weight asks for it
 *             ({@link QuantWeightOptions.quantizeX}; not the default: not exact): x quantized per
 *             block of 32 to 8 bits with an f32 scale by a pre-pass (GGML's Q8_0 of an activation,
 *             as llama.cpp's integer dot products), then two 4-bit x 8-bit products per 32-bit
 *             integer multiply and one float multiply-add per block. Not the exact dequantized
 *             product: checked against {@link linearQIntCpu} (the same math) and within x's
 *             rounding bound of {@link linearQCpu}.
 * - `gemvWg`  one row of x on a real GPU: 8 rows of W per workgroup, 32 lanes per row over its
 *             blocks, a tree reduction in workgroup memory.
 * - `blocked` many rows (prefill, scoring) on a CPU adapter: 8 rows x 8 outputs per invocation in
 *             registers, x's rows chosen per workgroup (uniform loads), each block of W dequantized
 *             once per 8 rows; no workgroup memory, no barriers.
 * - `tiled`   many rows on a real GPU: 64x64 output tiles; per block of K, x's tile and W's 64
 *             dequantized blocks go through workgroup memory.
 *
 * Default choice: one row -> gemv (gemvInt for a Q4_0 weight made with quantizeX) on a CPU
 * adapter, gemvWg on a GPU; else blocked / tiled. Measured on
 * llvmpipe (2 cores shared with a training run, so +-50% from run to run: compare the ratios of
 * one process; `deno task bench --filter linearQ`): 512x4096x4096, blocked 7-10 GFLOP/s, as fast as
 * the f16 texture kernel. Decode (`--filter "linearQ[ratio]"`, CPU time, distinct weights): one
 * token through 4096x4096, Q4_0 ~2.3 ms (gemvInt; gemv 3.0), Q8_0 ~3.9, the unpacked f16 GEMV
 * ~11.6 (f16/Q4_0 5.1-5.7x, f16/Q8_0 3.0-3.7x over the 7B's three shapes;
 * tools/bench/quant_matmul.ts). The texture layout stores each group of 8 rows side by side, so the
 * 8 lanes on 8 adjacent rows fetch neighbouring bytes: at K = 11008, where a row is 5.5 KiB (Q4_0)
 * apart, that halved gemvInt's time.
 * @module
 */
import { type Gpu, grid, makeTexture, Params, type Tensor, type TexSlot } from "@lvm/gpu";
import {
  BLOCK_BYTES,
  dequantize,
  QK,
  quantize,
  quantizedBytes,
  type QuantType,
} from "@lvm/weights";
import { embedding } from "./embedding.ts";
import { linear, type PackedWeight } from "./matmul.ts";
import {
  blockedKernel,
  blockWords,
  embeddingKernel,
  gemvIntKernel,
  gemvKernel,
  gemvTexKernel,
  gemvWgKernel,
  quantizeXKernel,
  type QuantLayout,
  splitKernel,
  splitTexKernel,
  texels,
  texSize,
  tiledKernel,
  unsplitTexKernel,
  XQ_STRIDE,
} from "./_quant_kernels.ts";

export type { QuantLayout } from "./_quant_kernels.ts";

/**
 * Host bytes {@link QuantWeight.fromF32} quantizes into, kept for the next call (a loader
 * quantizes tensor after tensor: one buffer of the largest instead of one per tensor).
 */
let scratch: Uint8Array | null = null;

/** Kernel variants of {@link linearQ}. */
export type QuantVariant = "gemv" | "gemvInt" | "gemvWg" | "blocked" | "tiled";

/** Options of {@link QuantWeight.fromBlocks} and {@link QuantWeight.fromF32}. */
export interface QuantWeightOptions {
  /**
   * Where the blocks live: default textures on a CPU adapter where the weight fits one
   * (8 K / 32 texels, K / 16 for Q8_0, per group of 8 rows at most the adapter's texture width),
   * storage buffers otherwise.
   */
  layout?: QuantLayout;
  /**
   * Q4_0 only: decode's one-row product on a CPU adapter quantizes x to 8 bits per block and
   * multiplies integers (variant `gemvInt`, llama.cpp's numerics: ~1.2-1.4x faster than the exact
   * `gemv` on llvmpipe, off the exact product by x's rounding). Default false.
   */
  quantizeX?: boolean;
}

/** log2 of the texture rows per layer: the largest power of two the adapter's textures allow. */
function rowsLog2(gpu: Gpu): number {
  return Math.floor(Math.log2(gpu.limits.maxTextureDimension2D));
}

/** Whether a [N, K] weight of `type` fits the texture layout on this adapter. */
function texFits(gpu: Gpu, type: QuantType, N: number, K: number): boolean {
  const [w, , layers] = texSize((K / QK) * texels(type), N, rowsLog2(gpu));
  return w <= gpu.limits.maxTextureDimension2D && layers <= gpu.limits.maxTextureArrayLayers;
}

/**
 * A weight W [N, K] (Linear [out, in]; K a multiple of 32) as GGML blocks on the GPU, in one of two
 * layouts ({@link QuantLayout}): storage buffers as @lvm/weights' split layout (`quants`: 4 u32 per
 * Q4_0 block, 8 per Q8_0 block, blocks row after row; `scales`: the f16 scales two per u32), or two
 * rgba32uint textures (a block's quants as 1 or 2 texels of its row, the scales 8 blocks per
 * texel, the rows of each group of 8 side by side: N padded to a multiple of 8 there). The same
 * bytes as the GGUF tensor either way.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { linearQ, QuantWeight } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const W = QuantWeight.fromF32(gpu, "Q8_0", [2, 32], new Float32Array(64).fill(0.5));
 * const y = linearQ(gpu, gpu.upload(new Float32Array(32).fill(1), [1, 32]), W); // (1, 2)
 * console.log(await gpu.readF32(y)); // Float32Array [16, 16]
 * W.release();
 * ```
 */
export class QuantWeight {
  /** Blocks per row (K / 32). */
  readonly nb: number;
  /** log2 of the texture rows per layer (texture layout). */
  readonly rs: number;
  /** See {@link QuantWeightOptions.quantizeX}. */
  readonly quantizeX: boolean;
  #released = false;
  readonly #store: { scales: Tensor; quants: Tensor } | { tq: TexSlot; ts: TexSlot };

  private constructor(
    readonly gpu: Gpu,
    readonly type: QuantType,
    readonly shape: readonly [number, number],
    readonly layout: QuantLayout,
    store: { scales: Tensor; quants: Tensor } | { tq: TexSlot; ts: TexSlot },
    quantizeX: boolean,
  ) {
    this.nb = shape[1] / QK;
    this.quantizeX = quantizeX;
    this.rs = rowsLog2(gpu);
    this.#store = store;
  }

  /** What the kernels bind as the quants and the scales (bindings 1 and 2). */
  get bindings(): [Tensor | GPUTextureView, Tensor | GPUTextureView] {
    const s = this.#store;
    return "tq" in s ? [s.tq.view, s.ts.view] : [s.quants, s.scales];
  }

  /** Checks `shape` ([N, K], K a multiple of 32) and returns it as a pair. */
  static #shape(type: QuantType, shape: readonly number[]): [number, number] {
    if (shape.length !== 2 || !shape.every((d) => Number.isInteger(d) && d >= 1)) {
      throw new RangeError(
        `QuantWeight: shape must be [out, in] of positive sizes, got [${shape}]`,
      );
    }
    if (shape[1] % QK !== 0) {
      throw new RangeError(
        `QuantWeight: ${type} rows need a multiple of ${QK} values, got [${shape}] (in = ${
          shape[1]
        })`,
      );
    }
    if (type !== "Q4_0" && type !== "Q8_0") {
      throw new TypeError(
        `QuantWeight: type must be "Q8_0" or "Q4_0", got ${JSON.stringify(type)}`,
      );
    }
    return [shape[0], shape[1]];
  }

  /** From GGUF block bytes of `type` (row after row) for a weight of `shape` [N, K]. */
  static fromBlocks(
    gpu: Gpu,
    type: QuantType,
    shape: readonly number[],
    bytes: Uint8Array,
    opts: QuantWeightOptions = {},
  ): QuantWeight {
    const [N, K] = QuantWeight.#shape(type, shape);
    if (opts.quantizeX && type !== "Q4_0") {
      throw new RangeError(`QuantWeight: quantizeX takes Q4_0 weights, got ${type}`);
    }
    const fits = texFits(gpu, type, N, K);
    const layout = opts.layout ?? (gpu.kind === "cpu" && fits ? "texture" : "storage");
    if (layout === "texture" && !fits) {
      throw new RangeError(
        `QuantWeight: [${shape}] ${type} does not fit this adapter's textures (${
          (K / QK) * texels(type) * 8
        } texels per 8 rows, max ${gpu.limits.maxTextureDimension2D})`,
      );
    }
    const blocks = (N * K) / QK, B = BLOCK_BYTES[type];
    if (bytes.length !== blocks * B) {
      throw new RangeError(
        `QuantWeight: [${shape}] ${type} needs ${blocks} blocks (${
          blocks * B
        } bytes), got ${bytes.length} bytes`,
      );
    }
    // The blocks go up as they are (4-byte aligned writes, the tail padded) and a kernel splits
    // them: no host copy of the split layout (a 7B would churn ~7 GB of host arrays). The upload
    // buffer is not pooled but destroyed once the split is submitted (its memory is freed after
    // the work runs), so a loader leaves no idle buffer of each tensor size behind.
    const raw = gpu.device.createBuffer({
      label: "quant blocks upload",
      size: Math.ceil(bytes.length / 4) * 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
    });
    const body = bytes.length & ~3;
    if (body) gpu.writeBytes(raw, bytes.subarray(0, body));
    if (body < bytes.length) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(body));
      gpu.writeBytes(raw, tail, body);
    }
    let store: { scales: Tensor; quants: Tensor } | { tq: TexSlot; ts: TexSlot };
    if (layout === "texture") {
      const rs = rowsLog2(gpu), nb = K / QK, G = Math.ceil(nb / 8);
      const opts = { format: "rgba32uint" as const };
      store = {
        tq: makeTexture(
          gpu,
          ...texSize(nb * texels(type), N, rs),
          `quant ${type} [${N}, ${K}]`,
          opts,
        ),
        ts: makeTexture(gpu, ...texSize(G, N, rs), `quant ${type} scales [${N}, ${K}]`, opts),
      };
      const pipe = gpu.pipeline(`quant/splittex/${type}/${rs}`, () => splitTexKernel(type, rs));
      const p = new Params().u32(N).u32(nb).u32(G);
      gpu.dispatch(pipe, [raw, store.tq.view, store.ts.view], p, grid(Math.ceil((N * G) / 64)));
    } else {
      store = {
        scales: gpu.empty([Math.ceil(blocks / 2)], "u32"),
        quants: gpu.empty([blocks * blockWords(type)], "u32"),
      };
      const pipe = gpu.pipeline(`quant/split/${type}`, () => splitKernel(type));
      const p = new Params().u32(blocks);
      gpu.dispatch(pipe, [raw, store.scales, store.quants], p, grid(Math.ceil(blocks / 128)));
    }
    gpu.submit();
    raw.destroy();
    return new QuantWeight(gpu, type, [N, K], layout, store, opts.quantizeX ?? false);
  }

  /** Quantizes f32 host values of a weight of `shape` [N, K] (row-major) as `type`. */
  static fromF32(
    gpu: Gpu,
    type: QuantType,
    shape: readonly number[],
    values: ArrayLike<number>,
    opts: QuantWeightOptions = {},
  ): QuantWeight {
    const [N, K] = QuantWeight.#shape(type, shape);
    if (values.length !== N * K) {
      throw new RangeError(
        `QuantWeight: [${shape}] needs ${N * K} values, got ${values.length}`,
      );
    }
    // The blocks are quantized into one reused host buffer (see fromBlocks).
    const bytes = quantizedBytes(type, N * K);
    if (!scratch || scratch.length < bytes) scratch = new Uint8Array(bytes);
    const blocks = quantize(type, values, scratch).subarray(0, bytes);
    return QuantWeight.fromBlocks(gpu, type, shape, blocks, opts);
  }

  /** GPU bytes of the packed weight (scales and quants; the pool may round buffers up). */
  get bytes(): number {
    const s = this.#store;
    if ("tq" in s) return (s.tq.w + s.ts.w) * s.tq.h * s.tq.l * 16;
    return s.scales.byteLength + s.quants.byteLength;
  }

  /** Whether {@link release} was called. */
  get released(): boolean {
    return this.#released;
  }

  /** Reads the blocks back in GGUF's layout (scale then quants, per block). */
  async readBlocks(): Promise<Uint8Array> {
    const blocks = (this.shape[0] * this.shape[1]) / QK;
    const s = this.#store;
    let split = s as { scales: Tensor; quants: Tensor };
    if ("tq" in s) {
      // Back to the storage layout first (a kernel; textures are not read back directly).
      const { gpu, type, rs } = this;
      split = {
        scales: gpu.empty([Math.ceil(blocks / 2)], "u32"),
        quants: gpu.empty([blocks * blockWords(type)], "u32"),
      };
      const pipe = gpu.pipeline(`quant/unsplit/${type}/${rs}`, () => unsplitTexKernel(type, rs));
      const p = new Params().u32(blocks).u32(this.nb);
      gpu.dispatch(
        pipe,
        [s.tq.view, s.ts.view, split.scales, split.quants],
        p,
        grid(Math.ceil(blocks / 128)),
      );
    }
    const [sc, qs] = await this.gpu.readMany([split.scales, split.quants]);
    if (split !== s) {
      split.scales.release();
      split.quants.release();
    }
    const QB = blockWords(this.type) * 4, B = QB + 2;
    const d = new Uint8Array(sc.buffer, sc.byteOffset, sc.byteLength);
    const q = new Uint8Array(qs.buffer, qs.byteOffset, qs.byteLength);
    const out = new Uint8Array(blocks * B);
    for (let i = 0; i < blocks; i++) {
      out[i * B] = d[i * 2];
      out[i * B + 1] = d[i * 2 + 1];
      out.set(q.subarray(i * QB, (i + 1) * QB), i * B + 2);
    }
    return out;
  }

  /** Reads the weight back dequantized (N*K f32, row-major), exactly as the kernels see it. */
  async readF32(): Promise<Float32Array> {
    return dequantize(this.type, await this.readBlocks(), this.shape[0] * this.shape[1]);
  }

  /** Returns both tensors to the pool (or destroys both textures). Idempotent. */
  release(): void {
    if (this.#released) return;
    this.#released = true;
    const s = this.#store;
    if ("tq" in s) {
      this.gpu.submit(); // recorded work may still read them
      s.tq.texture.destroy();
      s.ts.texture.destroy();
    } else {
      s.scales.release();
      s.quants.release();
    }
  }
}

/**
 * CPU reference of {@link linearQ}: y (M, N) = x (M, K) W^T with W [N, K] given as GGUF blocks of
 * `type`, dequantized with @lvm/weights' `dequantize`, accumulated in f64.
 */
export function linearQCpu(
  x: ArrayLike<number>,
  type: QuantType,
  bytes: Uint8Array,
  N: number,
  K: number,
): Float32Array {
  if (x.length % K !== 0) {
    throw new RangeError(`linearQCpu: x has ${x.length} values, not a multiple of K = ${K}`);
  }
  const M = x.length / K;
  const w = dequantize(type, bytes, N * K);
  const y = new Float32Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      y[m * N + n] = s;
    }
  }
  return y;
}

/**
 * x (M, K) quantized as {@link linearQ}'s `gemvInt` does it (GGML's Q8_0 of an activation, f32
 * scale), in f32 as the kernel computes it: per block of 32, dx = max|x| / 127, id = 1 / dx (0 for
 * an all-zero block), xq = round_half_even(x * id), clamped to [-127, 127].
 */
export function quantizeXCpu(x: Float32Array): { q: Int8Array; d: Float32Array } {
  if (x.length % QK !== 0) {
    throw new RangeError(`quantizeXCpu: x has ${x.length} values, not a multiple of ${QK}`);
  }
  const f = Math.fround, q = new Int8Array(x.length), d = new Float32Array(x.length / QK);
  for (let b = 0; b < d.length; b++) {
    let m = 0;
    for (let k = b * QK; k < (b + 1) * QK; k++) m = Math.max(m, Math.abs(x[k]));
    const dx = f(m / 127), id = dx !== 0 ? f(1 / dx) : 0;
    d[b] = dx;
    for (let k = b * QK; k < (b + 1) * QK; k++) {
      const v = f(x[k] * id), r = Math.round(v);
      // Round half to even (WGSL's round), not JS's half up.
      const e = r - v === 0.5 && r % 2 !== 0 ? r - 1 : r;
      q[k] = Math.max(-127, Math.min(127, e));
    }
  }
  return { q, d };
}

/**
 * CPU reference of {@link linearQ}'s `gemvInt`: y = sum over blocks of dx * sum(w * xq), x
 * quantized by {@link quantizeXCpu}, W dequantized, accumulated in f64 (the kernel's integer sums
 * are exact; only its f32 accumulation over blocks differs).
 */
export function linearQIntCpu(
  x: Float32Array,
  type: QuantType,
  bytes: Uint8Array,
  N: number,
  K: number,
): Float32Array {
  if (x.length % K !== 0) {
    throw new RangeError(`linearQIntCpu: x has ${x.length} values, not a multiple of K = ${K}`);
  }
  // Each quantized x value times its block's scale, exact in f64 (an 8-bit integer times an f32).
  const { q, d } = quantizeXCpu(x);
  const xd = Float64Array.from(q, (v, i) => v * d[Math.floor(i / QK)]);
  return linearQCpu(xd, type, bytes, N, K);
}

/** CPU reference of {@link embeddingQ}: rows `ids` (clamped into [0, V)) of a (V, C) table. */
export function embeddingQCpu(
  ids: ArrayLike<number>,
  type: QuantType,
  bytes: Uint8Array,
  V: number,
  C: number,
): Float32Array {
  const table = dequantize(type, bytes, V * C);
  const out = new Float32Array(ids.length * C);
  for (let n = 0; n < ids.length; n++) {
    const id = Math.min(Math.max(ids[n], 0), V - 1);
    out.set(table.subarray(id * C, (id + 1) * C), n * C);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

/**
 * The uniform buffer decode's x chunks are copied into (64 KiB: WebGPU's uniform binding limit),
 * or quantized into by gemvInt's pre-pass (a storage binding there); and 7 blocks of zeros that pad
 * a copied chunk to the texture GEMV's 8-block steps.
 */
const xUniform = new WeakMap<Gpu, { ubo: GPUBuffer; zeros: GPUBuffer }>();
const X_FLOATS = 16384;

function xBuffer(gpu: Gpu): { ubo: GPUBuffer; zeros: GPUBuffer } {
  let b = xUniform.get(gpu);
  if (!b) {
    const usage = GPUBufferUsage.UNIFORM | GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
    b = {
      ubo: gpu.device.createBuffer({ label: "quant gemv x uniform", size: X_FLOATS * 4, usage }),
      // WebGPU buffers start zeroed.
      zeros: gpu.device.createBuffer({
        label: "quant gemv x padding",
        size: 7 * QK * 4,
        usage: GPUBufferUsage.COPY_SRC,
      }),
    };
    xUniform.set(gpu, b);
  }
  return b;
}

/** Rows of W per invocation of the CPU-adapter GEMV, storage layout (8 measured best of 2, 4, 8, 16). */
const GEMV_ROWS = 8;
/**
 * Rows of W per invocation of the texture GEMV: 8 (with its 8-block steps unrolled, Q4_0 at 16
 * rows took 2.3 s to compile on llvmpipe and ran slower than at 8, as did 16 rows of Q8_0 but at
 * 11008x4096, 4 rows of either everywhere).
 */
const GEMV_TEX_ROWS = { Q4_0: 8, Q8_0: 8 };
/** Rows of W per invocation of gemvInt (of 4, 8 and 16, 8 ran fastest on the three 7B shapes). */
const GEMV_INT_ROWS = 8;

/**
 * The variant {@link linearQ} uses for M rows of x on this adapter when none is forced: on a CPU
 * adapter one row of x takes gemvInt where the weight asks for it ({@link QuantWeight.quantizeX}).
 */
export function chooseQuantVariant(gpu: Gpu, M: number, quantizeX = false): QuantVariant {
  if (gpu.kind === "cpu") return M === 1 ? (quantizeX ? "gemvInt" : "gemv") : "blocked";
  return M === 1 ? "gemvWg" : "tiled";
}

/** Options of {@link linearQ}. */
export interface LinearQOptions {
  /** Output (f32, (..., N)); must not alias x. */
  out?: Tensor;
  /** Force a kernel variant (tests, benchmarks). */
  variant?: QuantVariant;
}

/**
 * y = x W^T for a quantized W [N, K]: x (..., K) f32 -> y (..., N) f32 (accumulated in f32).
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { linearQ, QuantWeight } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const w = Float32Array.from({ length: 3 * 64 }, (_, i) => (i % 7) - 3); // [3, 64]
 * const W = QuantWeight.fromF32(gpu, "Q4_0", [3, 64], w);
 * const y = linearQ(gpu, gpu.upload(new Float32Array(2 * 64).fill(1), [2, 64]), W); // (2, 3)
 * console.log((await gpu.readF32(y)).length); // 6
 * W.release();
 * ```
 */
export function linearQ(
  gpu: Gpu,
  x: Tensor,
  W: QuantWeight,
  opts: LinearQOptions = {},
): Tensor {
  const [N, K] = W.shape;
  if (W.released) throw new RangeError("linearQ: the QuantWeight was released");
  if (x.dtype !== "f32") throw new TypeError(`linearQ: x must be f32, got ${x.dtype}`);
  if (x.shape.length < 1 || x.shape[x.shape.length - 1] !== K) {
    throw new RangeError(`linearQ: x must be (..., ${K}) for W [${W.shape}], got [${x.shape}]`);
  }
  const M = x.size / K;
  const shape = [...x.shape.slice(0, -1), N];
  const out = opts.out ?? gpu.empty(shape);
  if (out.dtype !== "f32" || out.size !== M * N) {
    throw new RangeError(
      `linearQ: out must be f32 with ${M * N} values ([${shape}]), got ${out.dtype} [${out.shape}]`,
    );
  }
  if (out.buffer === x.buffer) throw new RangeError("linearQ: out aliases x");
  if (M === 0) return out;
  const variant = opts.variant ?? chooseQuantVariant(gpu, M, W.quantizeX);
  const { type, nb, layout, rs } = W;
  const [qb, sb] = W.bindings;
  const binds = [x, qb, sb, out];
  const p = new Params().u32(M).u32(N).u32(K).u32(nb);
  const lk = `${layout}/${rs}`;
  switch (variant) {
    case "gemv": {
      const { ubo, zeros } = xBuffer(gpu);
      const wide = nb % 8 === 0;
      const tex = layout === "texture";
      const R = tex ? GEMV_TEX_ROWS[type] : GEMV_ROWS;
      const pipe = tex
        ? gpu.pipeline(`quant/gemvtex/${type}/${R}/${rs}`, () => gemvTexKernel(type, R, rs))
        : gpu.pipeline(`quant/gemv/${type}/${R}/${wide}`, () => gemvKernel(type, R, wide));
      // Invocations: the texture kernel's 8 lanes own 8 adjacent rows, R rows apart by 8.
      const wgs = tex ? Math.ceil((Math.ceil(N / (8 * R)) * 8) / 64) : Math.ceil(N / R / 64);
      const BC = X_FLOATS / QK; // blocks per chunk (a multiple of 8: wide scale loads stay aligned)
      for (let m = 0; m < M; m++) {
        for (let b0 = 0; b0 < nb; b0 += BC) {
          const nbc = Math.min(BC, nb - b0);
          gpu.copy(x, ubo, nbc * QK * 4, (m * K + b0 * QK) * 4, 0);
          // The texture kernel steps 8 blocks: zeros past the chunk (not the last GEMV's x).
          const pad = (8 - (nbc % 8)) % 8;
          if (tex && pad) gpu.copy(zeros, ubo, pad * QK * 4, 0, nbc * QK * 4);
          const gp = new Params().u32(N).u32(nb).u32(b0).u32(nbc).u32(b0 > 0 ? 1 : 0).u32(m * N);
          gpu.dispatch(pipe, [ubo, qb, sb, out], gp, wgs);
        }
      }
      return out;
    }
    case "gemvInt": {
      if (type !== "Q4_0") {
        throw new RangeError(
          `linearQ: variant gemvInt takes Q4_0 weights, got ${type} (Q8_0's products overflow ` +
            `its 16-bit fields; use gemv)`,
        );
      }
      const { ubo } = xBuffer(gpu);
      const R = GEMV_INT_ROWS;
      const pre = gpu.pipeline("quant/quantizex", () => quantizeXKernel());
      const pipe = gpu.pipeline(`quant/gemvint/${R}/${lk}`, () => gemvIntKernel(R, layout, rs));
      const wgs = Math.ceil((Math.ceil(N / (8 * R)) * 8) / 64);
      const BC = X_FLOATS / 4 / XQ_STRIDE; // blocks per chunk: their records fill the buffer (512)
      for (let m = 0; m < M; m++) {
        for (let b0 = 0; b0 < nb; b0 += BC) {
          const nbc = Math.min(BC, nb - b0), nbp = Math.ceil(nbc / 8) * 8;
          const pp = new Params().u32((m * K + b0 * QK) / 4).u32(nbc).u32(nbp);
          gpu.dispatch(pre, [x, ubo], pp, Math.ceil(nbp / 64));
          const gp = new Params().u32(N).u32(nb).u32(b0).u32(nbc).u32(b0 > 0 ? 1 : 0).u32(m * N);
          gpu.dispatch(pipe, [ubo, qb, sb, out], gp, wgs);
        }
      }
      return out;
    }
    case "gemvWg": {
      const RW = 8;
      const pipe = gpu.pipeline(
        `quant/gemvwg/${type}/${lk}`,
        () => gemvWgKernel(type, layout, rs, RW),
      );
      const [gx, gy] = grid(Math.ceil(N / RW));
      gpu.dispatch(pipe, binds, p, [gx, gy, M]);
      return out;
    }
    case "blocked": {
      // 8 rows x 8 columns per invocation: of 16x4, 16x8, 8x8 and 32x4 the fastest at
      // 512x1024x1024 on llvmpipe (~5 GFLOP/s there, 2 busy cores), and ~1-2 s to compile.
      const [R, C] = [8, 8];
      const pipe = gpu.pipeline(
        `quant/blocked/${type}/${R}x${C}/${lk}`,
        () => blockedKernel(type, R, C, layout, rs),
      );
      gpu.dispatch(pipe, binds, p, [Math.ceil(N / (64 * C)), Math.ceil(M / R)]);
      return out;
    }
    case "tiled": {
      const pipe = gpu.pipeline(`quant/tiled/${type}/${lk}`, () => tiledKernel(type, layout, rs));
      gpu.dispatch(pipe, binds, p, [Math.ceil(N / 64), Math.ceil(M / 64)]);
      return out;
    }
    default:
      throw new RangeError(`linearQ: unknown variant ${variant}`);
  }
}

/**
 * Rows of a quantized table (V, C) for `ids` (any shape, i32): (...ids.shape, C) f32. Ids outside
 * [0, V) are clamped (validate them on the host first, as for `embedding`).
 */
export function embeddingQ(gpu: Gpu, ids: Tensor, table: QuantWeight, out?: Tensor): Tensor {
  if (ids.dtype !== "i32") throw new TypeError(`embeddingQ: ids must be i32, got ${ids.dtype}`);
  const [V, C] = table.shape;
  const N = ids.size;
  const shape = [...ids.shape, C];
  const o = out ?? gpu.empty(shape);
  if (o.size !== N * C || o.dtype !== "f32") {
    throw new RangeError(`embeddingQ: out is [${o.shape}] ${o.dtype}, expected [${shape}] f32`);
  }
  const { type, layout, rs } = table;
  const pipe = gpu.pipeline(
    `quant/embedding/${type}/${layout}/${rs}`,
    () => embeddingKernel(type, layout, rs),
  );
  const p = new Params().u32(N).u32(V).u32(table.nb);
  gpu.dispatch(pipe, [ids, ...table.bindings, o], p, grid(N));
  return o;
}

/** Embedding lookup from an f32/f16 table tensor or a quantized one ({@link embeddingQ}). */
export function embeddingAny(
  gpu: Gpu,
  ids: Tensor,
  table: Tensor | QuantWeight,
  out?: Tensor,
): Tensor {
  return table instanceof QuantWeight
    ? embeddingQ(gpu, ids, table, out)
    : embedding(gpu, ids, table, out);
}

/**
 * HF Linear for whatever a model holds: y = x W^T (+ bias) with W a tensor [out, in] (f32/f16), a
 * {@link PackedWeight} or a {@link QuantWeight} (no bias with a quantized weight).
 */
export function linearAny(
  gpu: Gpu,
  x: Tensor,
  W: Tensor | PackedWeight | QuantWeight,
  bias?: Tensor,
  out?: Tensor,
): Tensor {
  if (W instanceof QuantWeight) {
    if (bias) throw new RangeError("linearAny: a quantized weight takes no bias");
    return linearQ(gpu, x, W, { out });
  }
  return linear(gpu, x, W, bias, out);
}
