/**
 * Matrix multiplication: `out = alpha * op(A) op(B) (+ bias) (+ out)`, f32 output, f32 accumulation,
 * any shape (batched, transposed, B shared across the batch, B stored as packed f16), plus the
 * HF-Linear wrappers {@link linear} / {@link linearBackward} that the transformer uses.
 *
 * A ladder of variants, each checked against {@link matmulCpu} (kernels in ./_matmul_kernels.ts):
 * - `naive`   one output per invocation, plain dot product (the GPU-side reference).
 * - `blocked` 4x4 outputs per invocation in registers, storage-buffer operands, no shared memory.
 * - `tiled`   shared-memory tiles (64x128 of 4x8 per invocation on big outputs, smaller tiles on
 *             small ones; {@link tiledConfig}), coalesced stage loads: the real-GPU kernel.
 * - `tex`     llvmpipe: A and B first packed into rgba32float textures (Mesa fetches texels
 *             vectorised but loops lane by lane over every bounds-checked storage-buffer load),
 *             16x8 outputs per invocation, no barriers; textures a little wider than the matrix
 *             so that rows are not a multiple of 4 KiB apart (see `pitchTexels`). Contiguous
 *             operands are packed by a plain buffer-to-texture copy; a weight can be packed once
 *             into a {@link PackedWeight} (f16 weights stay 16-bit there).
 * - `gemv`    M <= 4 (decode), memory bound: B streamed once. On llvmpipe from a texture (a
 *             PackedWeight, or a Linear weight copied as is) with A in a uniform buffer; elsewhere
 *             from the storage buffer (f16 read as vec2<u32>).
 *
 * Default choice ({@link chooseVariant}): M <= 4 -> gemv; a real GPU -> tiled; llvmpipe -> tex
 * (blocked for tiny products or outputs wider than a texture).
 *
 * Figures (llvmpipe, 2 cores): tools/bench/matmul.ts, `deno task bench --filter matmul --torch`.
 @module
 */
import { type Gpu, grid, Params } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { makeTexture, type TexSlot, TextureCache } from "@lvm/gpu";
import {
  blockedKernel,
  colSumKernel,
  FLAG_ACC,
  FLAG_BIAS,
  gemvKernel,
  gemvRowsKernel,
  gemvTexKernel,
  type KernelFlags,
  naiveKernel,
  packKernel,
  packTKernel,
  texKernel,
  tileBytes,
  type TileConfig,
  tiledKernel,
  tileProblem,
} from "./_matmul_kernels.ts";
import { splitPlan, sumSplits, unusedBinding } from "./_tiled.ts";

export type { TileConfig } from "./_matmul_kernels.ts";
export { tileBytes } from "./_matmul_kernels.ts";

/** Kernel variants of {@link matmul}. */
export type MatmulVariant = "naive" | "blocked" | "tiled" | "tex" | "gemv";

/** Options of {@link matmul}. */
export interface MatmulOptions {
  /** A is stored (K,M) / (B,K,M). */
  transA?: boolean;
  /** B is stored (N,K) / (B,N,K) (a Linear weight [out, in]). Ignored for a {@link PackedWeight}. */
  transB?: boolean;
  /** Output tensor (f32, batch*M*N elements); must not alias a, b or bias. */
  out?: Tensor;
  /** out += result (needs `out`). */
  accumulate?: boolean;
  /** Scale of the product (default 1): out = alpha * A B (+ bias) (+ out). */
  alpha?: number;
  /** (N) added to every row of the result (not scaled by alpha). */
  bias?: Tensor;
  /** Force a kernel variant (tests, benchmarks). */
  variant?: MatmulVariant;
  /** The `tiled` variant's tile shape (tuning; default {@link tiledConfig}). */
  tile?: TileConfig;
  /** The `tiled` variant's K slices (split-K; 1: none; default {@link tiledSplit}). */
  splitK?: number;
}

/** Resolved problem: batch of (M,K) x (K,N) with strides of each operand. */
interface Plan {
  batch: number;
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  aBatched: boolean;
  bBatched: boolean;
  bF16: boolean;
  outShape: number[];
}

/** What follows the product: out = alpha * P (+ bias) (+ out). */
interface Epi {
  alpha: number;
  bias?: Tensor;
  acc: boolean;
}

/** The bias, or a 4-byte tensor where the kernel's bias binding is unused (every kernel declares it). */
function biasBinding(gpu: Gpu, bias: Tensor | undefined): Tensor {
  return bias ?? unusedBinding(gpu);
}

/** The `p.flags` bits of an epilogue (bias only where `withBias`, e.g. the first of K chunks). */
function epiFlags(e: Epi, withBias = true, accumulate = e.acc): number {
  return (e.bias && withBias ? FLAG_BIAS : 0) | (accumulate ? FLAG_ACC : 0);
}

/**
 * CPU reference: C (B,M,N) = op(A) op(B) with op = transpose when the flag is set.
 * `a` holds B*M*K values, laid out (B,M,K) or, with transA, (B,K,M); `b` holds B*K*N values
 * ((B,K,N) or, with transB, (B,N,K)) or K*N values shared by every batch. Accumulates in f64.
 */
export function matmulCpu(
  a: Float32Array,
  b: Float32Array,
  B: number,
  M: number,
  K: number,
  N: number,
  transA: boolean,
  transB: boolean,
): Float32Array {
  if (a.length !== B * M * K) {
    throw new RangeError(`matmulCpu: a has ${a.length} values, expected B*M*K = ${B * M * K}`);
  }
  const bShared = b.length === K * N && B > 1;
  if (!bShared && b.length !== B * K * N) {
    throw new RangeError(`matmulCpu: b has ${b.length} values, expected ${B * K * N} or ${K * N}`);
  }
  const out = new Float32Array(B * M * N);
  for (let bi = 0; bi < B; bi++) {
    const ao = bi * M * K, bo = bShared ? 0 : bi * K * N;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = transA ? a[ao + k * M + m] : a[ao + m * K + k];
          const bv = transB ? b[bo + n * K + k] : b[bo + k * N + n];
          s += av * bv;
        }
        out[(bi * M + m) * N + n] = s;
      }
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Textures (llvmpipe path)

/**
 * Scratch textures per context and operand slot ("A", "B", "W"), kept by exact size, at most 8
 * sizes per slot (see `../textures.ts`).
 */
const scratch = new TextureCache("matmul scratch", 8);

function scratchTexture(
  gpu: Gpu,
  slot: "A" | "B" | "W",
  w: number,
  h: number,
  l: number,
  format: GPUTextureFormat = "rgba32float",
): TexSlot {
  return scratch.get(gpu, slot, pitchTexels(gpu, w), h, l, { format });
}

/**
 * Width to allocate for an operand texture whose kernels read `w` texel columns: `w` rounded up to
 * an odd number of 64-byte lines (4 texels), where the limit allows. llvmpipe stores a texture's
 * rows linearly, 64-byte aligned, so a matrix 1024 floats wide has rows exactly 4 KiB apart and the
 * 16 rows of A and 4 rows of B that one k step of {@link texKernel} reads all fall in one set of
 * the L1 cache (4 KiB per way): they evict each other. An odd line count spreads them over all
 * sets. Measured at 1024^3 in one process, A/B interleaved on a loaded machine: the 16x2 kernel
 * from 23-25 to 34-37 GFLOP per CPU-second. The columns past `w` are never read.
 */
function pitchTexels(gpu: Gpu, w: number): number {
  if (!matmulTuning.padPitch) return w;
  const lines = Math.ceil(w / 4);
  const p = (lines % 2 === 0 ? lines + 1 : lines) * 4;
  return p <= gpu.limits.maxTextureDimension2D ? p : w;
}

/** Frees the scratch textures the `tex` variant keeps between calls (they are re-made on demand). */
export function matmulTrim(gpu: Gpu): void {
  scratch.trim(gpu);
}

/** Where one operand's (rows, cols) matrices are in a tensor, and how they land in a texture. */
interface PackSpec {
  rows: number;
  cols: number;
  W: number;
  H: number;
  layers: number;
  chunks: number;
  s0: number;
  sR: number;
  sC: number;
  b0: number;
  off: number;
  /** Rows past `rows` may keep stale values (A: they only feed output rows never stored). */
  padFree?: boolean;
}

/**
 * Records one pack dispatch: element (bi, r, c) = src[(b0+bi)*s0 + off + r*sR + c*sC] of a
 * (rows, cols) matrix per batch goes to texel (c/4, r % H, bi*chunks + r/H) of `dst`; padding is 0.
 */
function pack(gpu: Gpu, src: Tensor, dst: TexSlot, o: PackSpec, dstU16 = false): void {
  const f16 = src.dtype === "f16";
  if (!f16 && !dstU16 && canCopy(o)) {
    // Rows already are texels: a plain copy (a memcpy in lavapipe, ~30x cheaper than the kernel,
    // whose image stores go lane by lane). Rows past `rows` keep stale values (padFree only).
    for (let bi = 0; bi < o.layers / o.chunks; bi++) {
      for (let c = 0; c < o.chunks; c++) {
        const h = Math.min(o.H, o.rows - c * o.H);
        if (h <= 0) continue;
        const offset = ((o.b0 + bi) * o.s0 + o.off + c * o.H * o.sR) * 4;
        gpu.copyToTexture(
          src,
          { offset, bytesPerRow: o.sR * 4, rowsPerImage: h },
          { texture: dst.texture, origin: [0, 0, bi * o.chunks + c] },
          [o.W, h, 1],
        );
      }
    }
    return;
  }
  const p = new Params().u32(o.rows).u32(o.cols).u32(o.W).u32(o.H).u32(o.layers).u32(o.chunks)
    .u32(o.H).u32(o.s0).u32(o.sR).u32(o.sC).u32(o.b0).u32(o.off);
  if (!f16 && !dstU16 && o.sR === 1 && (o.s0 | o.sC | o.off | o.H) % 4 === 0) {
    const pipe = gpu.pipeline("matmul/packT", packTKernel);
    gpu.dispatch(pipe, [src, dst.view], p, [Math.ceil(o.W / 16), Math.ceil(o.H / 16), o.layers]);
    return;
  }
  const vec = !f16 && o.sC === 1 && o.cols % 4 === 0 && (o.s0 | o.sR | o.off) % 4 === 0;
  const key = `matmul/pack/${f16}/${dstU16}/${vec}`;
  const pipe = gpu.pipeline(key, () => packKernel(f16, dstU16, vec));
  gpu.dispatch(pipe, [src, dst.view], p, [Math.ceil(o.W / 16), Math.ceil(o.H / 4), o.layers]);
}

/**
 * Whether a pack is a plain copy: contiguous rows exactly one texture row wide (no column
 * padding), rows a multiple of 256 bytes apart (WebGPU's copy rule), 16-byte aligned, and no
 * padding rows unless they may be stale (B's rows past K must read as zeros).
 */
function canCopy(o: PackSpec): boolean {
  return o.sC === 1 && o.cols === o.W * 4 && o.sR === o.cols && (o.sR * 4) % 256 === 0 &&
    o.s0 % 4 === 0 && o.off % 4 === 0 && (o.padFree || o.rows === o.H * o.chunks);
}

/**
 * Texel columns of a packed B: N rounded up to 16 columns so every column grouping CB|4 fits;
 * 4 columns per rgba32float texel, 8 per rgba32uint (`u16`) texel.
 */
function packedCols(N: number, u16 = false): number {
  return Math.ceil(N / 16) * (u16 ? 2 : 4);
}

/**
 * A weight matrix B packed once into the texture layout of the llvmpipe kernels (K rows of N/4
 * rgba32float texels; an f16 weight stays 16-bit: N/8 rgba32uint texels of halves), so matmuls on
 * llvmpipe skip packing it every call and decode's matrix-vector product streams it with vectorised
 * texel fetches. Weights change only at optimizer steps: call {@link PackedWeight.refresh} after
 * the source tensor changed. On a real GPU matmul reads {@link PackedWeight.source} directly and
 * no texture is made.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { linear, packWeight } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const W = gpu.upload(new Float32Array(6).fill(0.5), [2, 3]); // [out, in]
 * const Wp = packWeight(gpu, W, { transB: true });
 * const y = linear(gpu, gpu.upload([1, 2, 3], [1, 3]), Wp); // (1, 2): [3, 3]
 * console.log(await gpu.readF32(y));
 * Wp.release();
 * ```
 */
export class PackedWeight {
  /** Rows of B (the contraction size). */
  readonly K: number;
  /** Columns of B (outputs). */
  readonly N: number;
  /** Texel columns of the texture. */
  readonly NT: number;
  /** The texture holds halves (rgba32uint, 8 columns per texel). */
  readonly u16: boolean;
  #tex: TexSlot | null = null;

  constructor(readonly gpu: Gpu, readonly source: Tensor, readonly transB: boolean) {
    if (source.shape.length !== 2) {
      throw new RangeError(`packWeight: weight must be 2-D, got shape [${source.shape}]`);
    }
    if (source.dtype !== "f32" && source.dtype !== "f16") {
      throw new TypeError(`packWeight: weight must be f32 or f16, got ${source.dtype}`);
    }
    [this.K, this.N] = transB ? [source.shape[1], source.shape[0]] : source.shape as number[];
    this.u16 = source.dtype === "f16";
    this.NT = packedCols(this.N, this.u16);
    this.refresh();
  }

  /** The texture, or null when this adapter does not use the texture path. */
  get texture(): TexSlot | null {
    return this.#tex;
  }

  /** Re-packs the texture from {@link source} (records a dispatch; ordered after earlier work). */
  refresh(): void {
    const { K, N, NT } = this;
    if (this.gpu.kind !== "cpu" || !texFits(this.gpu, K, N)) return;
    const H = Math.max(Math.ceil(K / 4) * 4, 1);
    const format = this.u16 ? "rgba32uint" : "rgba32float";
    this.#tex ??= makeTexture(this.gpu, pitchTexels(this.gpu, NT), H, 1, "packed weight", {
      format,
    });
    pack(this.gpu, this.source, this.#tex, {
      rows: K,
      cols: N,
      W: NT,
      H,
      layers: 1,
      chunks: 1,
      s0: 0,
      sR: this.transB ? 1 : N,
      sC: this.transB ? K : 1,
      b0: 0,
      off: 0,
    }, this.u16);
  }

  /** Frees the texture (the source tensor is the caller's). */
  release(): void {
    if (!this.#tex) return;
    this.gpu.submit();
    this.#tex.texture.destroy();
    this.#tex = null;
  }
}

/**
 * Packs a weight for repeated use as the B operand of {@link matmul} / {@link linear}.
 * `transB`: the weight is stored (N,K), e.g. a Linear weight [out, in].
 */
export function packWeight(gpu: Gpu, w: Tensor, opts: { transB?: boolean } = {}): PackedWeight {
  return new PackedWeight(gpu, w, opts.transB ?? false);
}

/** Whether a texture can hold K rows and N columns of B (larger K is split into chunks). */
function texFits(gpu: Gpu, K: number, N: number): boolean {
  const max = gpu.limits.maxTextureDimension2D;
  return K >= 1 && Math.ceil(K / 4) * 4 <= max && packedCols(N) <= max;
}

/** Knobs for benchmarks and tuning (not for normal use). */
export const matmulTuning: {
  /** Force the tex kernel's tile: R rows x 4*CB columns per invocation (CB must divide 4). */
  texTile: [number, number] | null;
  /** Allocate operand textures with an odd number of 64-byte lines per row (see pitchTexels). */
  padPitch: boolean;
  /** Force the tex kernel's workgroup size in lanes (a multiple of 8); null: the shape's choice. */
  texLanes: number | null;
} = { texTile: null, padPitch: true, texLanes: null };

/**
 * Output tile (R rows x 4*CB columns per invocation) of the texture kernel for a shape, and its
 * workgroup size in lanes.
 */
function texTile(M: number, N: number, batch: number): [number, number, number] {
  if (matmulTuning.texTile) return [...matmulTuning.texTile, matmulTuning.texLanes ?? 64];
  // Few tiles, so few pipelines to compile: the big one wherever there are enough invocations to
  // keep the cores busy (512 = 8 workgroups of 64), smaller ones for small products. 16x2 ran as
  // fast as 16x4, 8x4 and 32x4 at 1024^3 (within noise) and compiles ~4x faster than 16x4 (LLVM
  // time grows faster than linearly with the unrolled tile: seconds for 16x4 on this machine).
  // Re-measured after the padded pitch (1024^3, GFLOP per CPU-second as a ratio to 16x2 in the
  // same process, loaded machine): 20x2 1.0 (wastes rows unless M % 20 == 0), 16x4 0.88, 12x2
  // 0.87, 24x2 0.84, 8x2 0.79, 8x4 0.77, 32x2 0.64. Also slower than 16x2: two or four k steps
  // per iteration chained into one fma expression per accumulator, as the conv kernel does (0.63-
  // 0.71), A read from a storage buffer (0.51) or a uniform buffer (0.57) at a workgroup-uniform
  // address; no faster: no early return, 2-D instead of array textures, workgroups of 8 column
  // groups x 8 row blocks (B reused across row blocks from cache).
  const threads = (R: number, CB: number) => Math.ceil(M / R) * Math.ceil(N / (4 * CB)) * batch;
  // Skinny products (a prefill's 16 rows): the 16x2 tile still, in workgroups small enough that
  // there are 8 or more of them. llvmpipe runs a workgroup on one thread: the 100m prefill's
  // 640-wide products are 80 invocations of 16x2, which in 64-lane groups left a core idle for most
  // of each dispatch (and 4x1 at 64 lanes fetches 2.6x more per FMA). `deno task bench --filter
  // 16x`: 16x640x1664 and 16x1664x640 at 44-47 GFLOP/s, 33-34 in 4x1 at 64 lanes (the old choice).
  if (M <= 64 && threads(16, 2) >= 64) {
    const n = threads(16, 2);
    const lanes = matmulTuning.texLanes ?? [64, 32, 16, 8].find((l) => n >= 8 * l) ?? 8;
    return [16, 2, lanes];
  }
  const tiles: [number, number][] = [[16, 2], [8, 2]];
  for (const [R, CB] of tiles) {
    if (threads(R, CB) >= 512) return [R, CB, matmulTuning.texLanes ?? 64];
  }
  return [4, 1, matmulTuning.texLanes ?? 64];
}

function texMatmul(
  gpu: Gpu,
  pl: Plan,
  a: Tensor,
  b: Tensor | PackedWeight,
  out: Tensor,
  e: Epi,
): void {
  const { M, N, K, batch } = pl;
  const maxDim = gpu.limits.maxTextureDimension2D;
  const bSrc = b instanceof PackedWeight ? b.source : b;
  const maxLayers = gpu.limits.maxTextureArrayLayers;
  const packed = b instanceof PackedWeight ? b.texture : null;
  const u16 = packed !== null && (b as PackedWeight).u16;
  let [R, CB, WG] = texTile(M, N, batch);
  if (u16 && CB < 2) CB = 2; // a u16 texel is two column blocks
  const NT = packed ? (b as PackedWeight).NT : Math.ceil(Math.ceil(N / 4) / CB) * CB;
  const NG = NT / (u16 ? CB / 2 : CB);
  const KT = Math.ceil(K / 4), Kp = KT * 4;
  const Mp = Math.ceil(M / R) * R, RB = Mp / R;
  // Transposed operands keep their storage layout in the texture (a plain copy when rows are 256-
  // byte multiples): A stored (K,M) as texels (m/4, k), B stored (N,K) as texels (k/4, n).
  const aT = pl.transA && Mp / 4 <= maxDim;
  const bT = pl.transB && !packed && NT * 4 <= maxDim;
  const HA = aT ? Mp : Math.min(Mp, Math.floor(maxDim / R) * R);
  const chunks = Math.ceil(Mp / HA);
  const perRound = Math.max(1, Math.floor(maxLayers / chunks));
  const sAm = pl.transA ? 1 : K, sAk = pl.transA ? M : 1;
  const sBk = pl.transB ? 1 : N, sBn = pl.transB ? K : 1;
  // K beyond one texture's height is split into chunks that accumulate into out.
  const KC = Math.min(Kp, Math.floor(maxDim / 4) * 4);
  const nK = Math.ceil(K / KC);
  for (let b0 = 0; b0 < batch; b0 += perRound) {
    const nb = Math.min(perRound, batch - b0);
    for (let kc = 0; kc < nK; kc++) {
      const k0 = kc * KC, kn = Math.min(KC, K - k0), KTc = Math.ceil(kn / 4);
      const s0 = pl.aBatched ? M * K : 0;
      const tA = aT
        ? scratchTexture(gpu, "A", Mp / 4, KTc * 4, nb)
        : scratchTexture(gpu, "A", KTc, HA, nb * chunks);
      pack(
        gpu,
        a,
        tA,
        aT
          ? {
            rows: kn,
            cols: M,
            W: Mp / 4,
            H: KTc * 4,
            layers: nb,
            chunks: 1,
            s0,
            sR: sAk,
            sC: sAm,
            b0,
            off: k0 * sAk,
          }
          : {
            rows: M,
            cols: kn,
            W: KTc,
            H: HA,
            layers: nb * chunks,
            chunks,
            s0,
            sR: sAm,
            sC: sAk,
            b0,
            off: k0 * sAk,
            padFree: true,
          },
      );
      let tB = packed;
      if (!tB) {
        const bLayers = pl.bBatched ? nb : 1;
        tB = bT
          ? scratchTexture(gpu, "B", KTc, NT * 4, bLayers)
          : scratchTexture(gpu, "B", NT, KTc * 4, bLayers);
        if (pl.bBatched || b0 === 0 || nK > 1) {
          const sb = pl.bBatched ? K * N : 0;
          pack(
            gpu,
            bSrc,
            tB,
            bT
              ? {
                rows: N,
                cols: kn,
                W: KTc,
                H: NT * 4,
                layers: bLayers,
                chunks: 1,
                s0: sb,
                sR: sBn,
                sC: sBk,
                b0,
                off: k0 * sBk,
                padFree: true,
              }
              : {
                rows: kn,
                cols: N,
                W: NT,
                H: KTc * 4,
                layers: bLayers,
                chunks: 1,
                s0: sb,
                sR: sBk,
                sC: sBn,
                b0,
                off: k0 * sBk,
              },
          );
        }
      }
      const vec = N % 4 === 0;
      const key = `matmul/tex/${R}x${CB}/${u16}/${aT}/${bT}/${vec}/${WG}`;
      const pipe = gpu.pipeline(key, () => texKernel(R, CB, u16, aT, bT, vec, WG));
      const p = new Params().u32(M).u32(N).u32(KTc).u32(NG).u32(RB).u32(nb).u32(chunks).u32(HA)
        .u32(pl.bBatched ? 1 : 0).u32(b0).f32(e.alpha).u32(epiFlags(e, kc === 0, e.acc || kc > 0));
      const binds = [tA.view, tB.view, biasBinding(gpu, e.bias), out];
      const [gx, gy] = grid(Math.ceil((NG * RB) / WG));
      gpu.dispatch(pipe, binds, p, [gx, gy, nb]);
    }
  }
}

// ---------------------------------------------------------------------------------------------

function resolve(a: Tensor, bT: Tensor, transA: boolean, transB: boolean): Plan {
  if (a.dtype !== "f32") throw new TypeError(`matmul: a must be f32, got ${a.dtype}`);
  if (bT.dtype !== "f32" && bT.dtype !== "f16") {
    throw new TypeError(`matmul: b must be f32 or f16, got ${bT.dtype}`);
  }
  const ra = a.shape.length, rb = bT.shape.length;
  if (ra !== 2 && ra !== 3) throw new RangeError(`matmul: a must be 2-D or 3-D, got [${a.shape}]`);
  if (rb !== 2 && rb !== 3) throw new RangeError(`matmul: b must be 2-D or 3-D, got [${bT.shape}]`);
  const [r0, c0] = a.shape.slice(-2);
  const [r1, c1] = bT.shape.slice(-2);
  const [M, K] = transA ? [c0, r0] : [r0, c0];
  const [Kb, N] = transB ? [c1, r1] : [r1, c1];
  if (K !== Kb) {
    throw new RangeError(
      `matmul: inner sizes differ: a [${a.shape}]${transA ? "^T" : ""} has K=${K}, b [${bT.shape}]${
        transB ? "^T" : ""
      } has K=${Kb}`,
    );
  }
  const aB = ra === 3 ? a.shape[0] : 1, bB = rb === 3 ? bT.shape[0] : 1;
  if (ra === 3 && rb === 3 && aB !== bB) {
    throw new RangeError(`matmul: batch sizes differ: a [${a.shape}], b [${bT.shape}]`);
  }
  const batch = Math.max(aB, bB);
  const outShape = ra === 3 || rb === 3 ? [batch, M, N] : [M, N];
  return {
    batch,
    M,
    N,
    K,
    transA,
    transB,
    aBatched: ra === 3,
    bBatched: rb === 3,
    bF16: bT.dtype === "f16",
    outShape,
  };
}

/** The variant {@link matmul} uses for a problem on this adapter when none is forced. */
export function chooseVariant(
  gpu: Gpu,
  M: number,
  N: number,
  K: number,
  batch = 1,
): MatmulVariant {
  if (M <= 4) return "gemv";
  if (gpu.kind === "gpu") return "tiled";
  const max = gpu.limits.maxTextureDimension2D;
  if (M * N * K * batch < 16 ** 3 || packedCols(N) > max || K === 0) return "blocked";
  return "tex";
}

/**
 * out = alpha * op(a) op(b) (+ bias) (+ out), f32, accumulated in f32.
 *
 * a: (M,K) or (B,M,K) [(K,M) / (B,K,M) with transA], f32. b: (K,N) or (B,K,N) [(N,K) / (B,N,K)
 * with transB], f32 or packed f16, or a {@link PackedWeight}. A 2-D operand is shared across the
 * other's batch. The result is (M,N), or (B,M,N) when either operand has a batch.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { matmul } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const a = gpu.upload([1, 2, 3, 4], [2, 2]);
 * const b = gpu.upload([5, 6, 7, 8], [2, 2]);
 * console.log(await gpu.readF32(matmul(gpu, a, b))); // [19, 22, 43, 50]
 * ```
 */
export function matmul(
  gpu: Gpu,
  a: Tensor,
  b: Tensor | PackedWeight,
  opts: MatmulOptions = {},
): Tensor {
  const bT = b instanceof PackedWeight ? b.source : b;
  const transB = b instanceof PackedWeight ? b.transB : opts.transB ?? false;
  const pl = resolve(a, bT, opts.transA ?? false, transB);
  const { bias, accumulate = false, alpha = 1 } = opts;
  if (bias) {
    if (bias.dtype !== "f32" || bias.size !== pl.N) {
      throw new RangeError(
        `matmul: bias must be f32 with N=${pl.N} values, got ${bias.dtype} [${bias.shape}]`,
      );
    }
  }
  if (accumulate && !opts.out) throw new RangeError("matmul: accumulate needs an out tensor");
  let out = opts.out;
  const size = pl.batch * pl.M * pl.N;
  if (out) {
    if (out.dtype !== "f32" || out.size !== size) {
      throw new RangeError(
        `matmul: out must be f32 with ${size} values ([${pl.outShape}]), got ${out.dtype} [${out.shape}]`,
      );
    }
    for (const [name, t] of [["a", a], ["b", bT], ["bias", bias]] as const) {
      if (t && t.buffer === out.buffer) {
        throw new RangeError(
          `matmul: out aliases ${name}; WebGPU cannot bind one buffer twice here`,
        );
      }
    }
  } else out = gpu.empty(pl.outShape, "f32");
  if (size === 0) return out;

  // A batched A times a shared B is one big (B*M, K) x (K, N) product when A is not transposed.
  if (pl.aBatched && !pl.bBatched && !pl.transA && pl.batch > 1 && opts.variant !== "gemv") {
    pl.M *= pl.batch;
    pl.batch = 1;
    pl.aBatched = false;
  }
  const flags: KernelFlags = { bF16: pl.bF16 };
  const e: Epi = { alpha, bias, acc: accumulate };
  let variant = opts.variant ?? chooseVariant(gpu, pl.M, pl.N, pl.K, pl.batch);
  if (pl.K === 0 && variant === "tex") variant = "naive";
  const packedTex = b instanceof PackedWeight ? b.texture : null;
  if (variant === "gemv" && packedTex && !pl.transA && pl.batch === 1 && pl.M <= 4) {
    gemvTex(gpu, pl, a, b as PackedWeight, packedTex, out, e);
    return out;
  }
  if (
    variant === "gemv" && gpu.kind === "cpu" && !(b instanceof PackedWeight) &&
    gemvRowsFits(gpu, pl)
  ) {
    gemvRows(gpu, pl, a, bT, out, e);
    return out;
  }
  if (variant === "tex") {
    if (packedCols(pl.N) > gpu.limits.maxTextureDimension2D) {
      throw new RangeError(`matmul: variant tex cannot hold N=${pl.N} columns on this adapter`);
    }
    texMatmul(gpu, pl, a, b, out, e);
    return out;
  }
  storageMatmul(gpu, variant, pl, a, bT, out, flags, e, opts.tile, opts.splitK);
  return out;
}

/**
 * Tile shapes of the `tiled` variant ({@link tiledConfig} picks one): 64x128 of 4x8 per invocation
 * for outputs of at least 512 such tiles, else 64x64 of 4x4. Both need under 8 KiB of workgroup
 * memory (WebGPU guarantees 16).
 */
export const TILED_CONFIGS: readonly TileConfig[] = [
  { BM: 64, BN: 128, BK: 8, TM: 4, TN: 8 },
  { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 },
];

/**
 * The `tiled` variant's tile shape for a batch of (M, N) outputs (see {@link TILED_CONFIGS}). Chosen
 * on an H200 with tools/tune_tiled.ts (GPU time): the 64x128 tile ran 2048^3 at 13.9 TFLOP/s and
 * 4096^3 at 15.3 (64x64: 11.6, 12.4); 64x64 of 4x4 was best or near it on every smaller shape
 * (1024^3 9.1 TFLOP/s; the `100m` training products) where larger tiles leave SMs idle.
 */
export function tiledConfig(_gpu: Gpu, M: number, N: number, batch = 1): TileConfig {
  const [big, small] = TILED_CONFIGS;
  return Math.ceil(M / big.BM) * Math.ceil(N / big.BN) * batch >= 512 ? big : small;
}

/** The uniform buffer decode's A rows are copied into (64 KiB: WebGPU's uniform binding limit). */
const xUniform = new WeakMap<Gpu, GPUBuffer>();
const X_FLOATS = 16384;

function xBuffer(gpu: Gpu): GPUBuffer {
  let ubo = xUniform.get(gpu);
  if (!ubo) {
    ubo = gpu.device.createBuffer({
      label: "matmul x uniform",
      size: X_FLOATS * 4,
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    });
    xUniform.set(gpu, ubo);
  }
  return ubo;
}

/**
 * Whether decode can read a raw Linear weight through a copied texture: W [N, K] 2-D, rows a
 * multiple of 256 bytes (K % 64 == 0 for f32, % 128 for f16) and not wider than a texture.
 */
function gemvRowsFits(gpu: Gpu, pl: Plan): boolean {
  const per = pl.bF16 ? 8 : 4;
  return pl.transB && !pl.transA && !pl.bBatched && pl.batch === 1 && pl.M <= 4 &&
    pl.K % (per * 16) === 0 && pl.K / per <= gpu.limits.maxTextureDimension2D &&
    Math.ceil(pl.N / gpu.limits.maxTextureDimension2D) <= gpu.limits.maxTextureArrayLayers;
}

/** Decode with an unpacked weight: copy W [N, K] into a texture as is, then stream its rows. */
function gemvRows(gpu: Gpu, pl: Plan, a: Tensor, w: Tensor, out: Tensor, e: Epi): void {
  const { M, N, K } = pl;
  const u16 = pl.bF16, per = u16 ? 8 : 4, rowBytes = K * (u16 ? 2 : 4);
  const HN = Math.min(N, gpu.limits.maxTextureDimension2D), layers = Math.ceil(N / HN);
  const tex = scratchTexture(gpu, "W", K / per, HN, layers, u16 ? "rgba32uint" : "rgba32float");
  for (let l = 0; l < layers; l++) {
    const h = Math.min(HN, N - l * HN);
    gpu.copyToTexture(
      w,
      { offset: l * HN * rowBytes, bytesPerRow: rowBytes, rowsPerImage: h },
      { texture: tex.texture, origin: [0, 0, l] },
      [K / per, h, 1],
    );
  }
  const ubo = xBuffer(gpu);
  const KC = Math.floor(X_FLOATS / M / 8) * 8;
  for (let k0 = 0, kc = 0; k0 < K; k0 += KC, kc++) {
    const kn = Math.min(KC, K - k0);
    for (let m = 0; m < M; m++) gpu.copy(a, ubo, kn * 4, (m * K + k0) * 4, m * kn * 4);
    const pipe = gpu.pipeline(`matmul/gemvrows/${M}/${u16}`, () => gemvRowsKernel(M, u16));
    const p = new Params().u32(M).u32(N).u32(kn).u32(kn).u32(HN).u32(k0 / per).f32(e.alpha)
      .u32(epiFlags(e, kc === 0, e.acc || kc > 0));
    gpu.dispatch(pipe, [tex.view, ubo, biasBinding(gpu, e.bias), out], p, Math.ceil(N / 64));
  }
}

/** Texture matrix-vector product: A (M <= 4, K) through a uniform buffer, K in chunks. */
function gemvTex(
  gpu: Gpu,
  pl: Plan,
  a: Tensor,
  w: PackedWeight,
  tex: TexSlot,
  out: Tensor,
  e: Epi,
): void {
  const { M, N, K } = pl;
  const ubo = xBuffer(gpu);
  const KC = Math.floor(X_FLOATS / M / 4) * 4;
  for (let k0 = 0, kc = 0; k0 < K; k0 += KC, kc++) {
    const kn = Math.min(KC, K - k0), KX = Math.ceil(kn / 4) * 4;
    for (let m = 0; m < M; m++) gpu.copy(a, ubo, kn * 4, (m * K + k0) * 4, m * KX * 4);
    const pipe = gpu.pipeline(`matmul/gemvtex/${M}/${w.u16}`, () => gemvTexKernel(M, w.u16));
    const p = new Params().u32(M).u32(N).u32(kn).u32(KX).u32(w.NT).u32(k0).f32(e.alpha)
      .u32(epiFlags(e, kc === 0, e.acc || kc > 0));
    gpu.dispatch(pipe, [tex.view, ubo, biasBinding(gpu, e.bias), out], p, Math.ceil(w.NT / 64));
  }
}

/**
 * Split-K slices for a `tiled` product of `tiles` workgroups over K: when the output makes under
 * 128 tiles (most of a large GPU idle) and K is long, K is cut into slices of at least 256 so that
 * about 256 workgroups run; 1 otherwise.
 */
export function tiledSplit(tiles: number, K: number): number {
  if (tiles >= 128) return 1;
  return Math.max(1, Math.min(Math.ceil(256 / tiles), Math.floor(K / 256)));
}

function storageMatmul(
  gpu: Gpu,
  variant: MatmulVariant,
  pl: Plan,
  a: Tensor,
  b: Tensor,
  out: Tensor,
  flags: KernelFlags,
  e: Epi,
  tile?: TileConfig,
  splitK?: number,
): void {
  const { M, N, K, batch } = pl;
  const sAm = pl.transA ? 1 : K, sAk = pl.transA ? M : 1;
  const sBk = pl.transB ? 1 : N, sBn = pl.transB ? K : 1;
  const p = new Params().u32(batch).u32(M).u32(N).u32(K)
    .u32(pl.aBatched ? M * K : 0).u32(sAm).u32(sAk)
    .u32(pl.bBatched ? K * N : 0).u32(sBk).u32(sBn).f32(e.alpha).u32(epiFlags(e));
  const fk = `${flags.bF16}`;
  const binds = [a, b, biasBinding(gpu, e.bias), out];
  const c = Math.ceil;
  switch (variant) {
    case "naive":
      gpu.dispatch(gpu.pipeline(`matmul/naive/${fk}`, () => naiveKernel(flags)), binds, p, [
        c(N / 8),
        c(M / 8),
        batch,
      ]);
      return;
    case "blocked":
      gpu.dispatch(gpu.pipeline(`matmul/blocked/${fk}`, () => blockedKernel(flags)), binds, p, [
        c(N / 64),
        c(M / 16),
        batch,
      ]);
      return;
    case "tiled": {
      const t = tile ?? tiledConfig(gpu, M, N, batch);
      const bad = tileProblem(t) ??
        (tileBytes(t) > gpu.limits.maxComputeWorkgroupStorageSize
          ? `${
            tileBytes(t)
          } bytes of workgroup memory (this adapter: ${gpu.limits.maxComputeWorkgroupStorageSize})`
          : null);
      if (bad) throw new RangeError(`matmul: tile ${JSON.stringify(t)}: ${bad}`);
      const aK = !pl.transA, bN = !pl.transB;
      const tiles = c(N / t.BN) * c(M / t.BM) * batch;
      const S = splitK ?? tiledSplit(tiles, K);
      if (!Number.isInteger(S) || S < 1) {
        throw new RangeError(`matmul: splitK must be a positive integer, got ${S}`);
      }
      const { kChunk, nSplit } = splitPlan(K, S, t);
      const key = `matmul/tiled/${fk}/${t.BM}x${t.BN}x${t.BK}/${t.TM}x${t.TN}/${aK}/${bN}`;
      if (nSplit <= 1) {
        gpu.dispatch(gpu.pipeline(key, () => tiledKernel(flags, t, aK, bN)), binds, p, [
          c(N / t.BN),
          c(M / t.BM),
          batch,
        ]);
        return;
      }
      // Split-K: nSplit slices of K, each workgroup's raw sums to its slice, then one summing pass.
      const total = batch * M * N;
      const parts = gpu.empty([nSplit * total], "f32");
      p.u32(kChunk).u32(nSplit);
      const pipe = gpu.pipeline(`${key}/split`, () => tiledKernel(flags, t, aK, bN, true));
      gpu.dispatch(pipe, [a, b, biasBinding(gpu, undefined), parts], p, [
        c(N / t.BN),
        c(M / t.BM),
        batch * nSplit,
      ]);
      sumSplits(gpu, parts, out, {
        total,
        N,
        nSplit,
        alpha: e.alpha,
        flags: epiFlags(e),
        bias: e.bias,
      });
      return;
    }
    case "gemv": {
      if (M > 4) throw new RangeError(`matmul: variant gemv needs M <= 4, got M=${M}`);
      const vecK = pl.transB && !pl.transA && K % 4 === 0;
      const pipe = gpu.pipeline(`matmul/gemv/${M}/${vecK}/${fk}`, () => gemvKernel(flags, M, vecK));
      gpu.dispatch(pipe, binds, p, [c(N / 64), 1, batch]);
      return;
    }
    default:
      throw new RangeError(`matmul: unknown variant ${variant}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Linear (HF semantics: y = x W^T + b, W is [out, in])

function rows(x: Tensor, name: string): [number, number] {
  if (x.shape.length < 1) throw new RangeError(`${name} must have at least 1 dimension`);
  const last = x.shape[x.shape.length - 1];
  return [last === 0 ? 0 : x.size / last, last];
}

/**
 * HF `nn.Linear`: y = x W^T (+ bias). x (..., in), W [out, in] (f32, f16, or a
 * {@link PackedWeight} made with `transB: true`), bias (out). Returns y (..., out).
 */
export function linear(
  gpu: Gpu,
  x: Tensor,
  W: Tensor | PackedWeight,
  bias?: Tensor,
  out?: Tensor,
): Tensor {
  const [Mr, inF] = rows(x, "linear: x");
  if (W instanceof PackedWeight && !W.transB) {
    throw new RangeError(
      "linear: a PackedWeight must be packed with transB: true (W is [out, in])",
    );
  }
  const Wt = W instanceof PackedWeight ? W.source : W;
  if (Wt.shape.length !== 2 || Wt.shape[1] !== inF) {
    throw new RangeError(`linear: W must be [out, ${inF}] for x [${x.shape}], got [${Wt.shape}]`);
  }
  const outF = Wt.shape[0];
  const shape = [...x.shape.slice(0, -1), outF];
  const y = matmul(gpu, x.view([Mr, inF]), W, {
    transB: true,
    bias,
    out: out?.view([Mr, outF]),
  });
  return out ?? y.view(shape);
}

/** Options of {@link linearBackward}. */
export interface LinearBackwardOptions {
  /** Where dW goes (f32 [out, in]); allocated when absent. */
  dW?: Tensor;
  /** dW += and dbias += (gradient accumulation) instead of overwriting; needs dW (and dbias). */
  accumulate?: boolean;
  /** Compute dx (default true). */
  needDx?: boolean;
  /** Where dbias goes (f32 (out)); giving it asks for the bias gradient. */
  dbias?: Tensor;
  /** Compute dbias even when no dbias tensor is given. */
  bias?: boolean;
}

/**
 * Backward of {@link linear}: dx = dy W (..., in), dW (+)= dy^T x [out, in],
 * dbias (+)= sum over rows of dy (out). x (..., in), dy (..., out), W [out, in] or a PackedWeight.
 */
export function linearBackward(
  gpu: Gpu,
  x: Tensor,
  W: Tensor | PackedWeight,
  dy: Tensor,
  opts: LinearBackwardOptions = {},
): { dx?: Tensor; dW: Tensor; dbias?: Tensor } {
  const Wt = W instanceof PackedWeight ? W.source : W;
  const [Mr, inF] = rows(x, "linearBackward: x");
  const [Md, outF] = rows(dy, "linearBackward: dy");
  if (Wt.shape.length !== 2 || Wt.shape[0] !== outF || Wt.shape[1] !== inF || Md !== Mr) {
    throw new RangeError(
      `linearBackward: expected W [${outF}, ${inF}] and dy rows ${Mr}; got x [${x.shape}], W [${Wt.shape}], dy [${dy.shape}]`,
    );
  }
  const accumulate = opts.accumulate ?? false;
  if (accumulate && (!opts.dW || ((opts.bias || opts.dbias) && !opts.dbias))) {
    throw new RangeError("linearBackward: accumulate needs the dW (and dbias) tensors to add into");
  }
  const dy2 = dy.view([Mr, outF]), x2 = x.view([Mr, inF]);
  // dx (Mr, in) = dy (Mr, out) W (out, in)
  const dx = opts.needDx ?? true ? matmul(gpu, dy2, Wt).view(x.shape) : undefined;
  // dW (out, in) = dy^T (out, Mr) x (Mr, in)
  const dW = matmul(gpu, dy2, x2, { transA: true, out: opts.dW, accumulate });
  let dbias: Tensor | undefined;
  if (opts.dbias || opts.bias) {
    dbias = opts.dbias ?? gpu.empty([outF]);
    if (dbias.size !== outF || dbias.dtype !== "f32") {
      throw new RangeError(`linearBackward: dbias must be f32 (${outF}), got [${dbias.shape}]`);
    }
    colSum(gpu, dy2, dbias, accumulate);
  }
  return { dx, dW, dbias };
}

/** out[n] (+)= sum_m x[m, n] for x (M, N). */
export function colSum(gpu: Gpu, x: Tensor, out: Tensor, accumulate = false): Tensor {
  const [M, N] = rows(x, "colSum: x");
  if (out.size !== N) throw new RangeError(`colSum: out must have ${N} values, got [${out.shape}]`);
  const pipe = gpu.pipeline(`matmul/colsum/${accumulate}`, () => colSumKernel(accumulate));
  gpu.dispatch(pipe, [x, out], new Params().u32(M).u32(N), Math.ceil(N / 64));
  return out;
}
