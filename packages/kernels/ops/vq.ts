/**
 * Vector quantisation for the VQGAN tokenizer: nearest codebook entry by squared L2, code lookup,
 * NCHW <-> rows transposes, and the deterministic scatter-add / bincount that training needs.
 *
 * `vqNearest` computes dist(n, k) = (|z_n|^2 + |e_k|^2) - 2 z_n.e_k, as the official open-muse code
 * does, in f32 with every dot product summed in index order d = 0..D-1 (fused multiply-adds), and
 * takes the smallest distance with ties going to the lowest index. Equal codebook rows therefore give
 * bit-identical distances and the first of them wins; an all-zero codebook gives id 0 everywhere.
 * The result can differ from the direct sum((z - e)^2) in the last bits, as the official code does.
 *
 * Kernel: z and the codebook are staged into rgba32float textures (one row = D/4 texels; the codebook
 * row carries |e|^2 in one more texel) because texel reads are vectorised on lavapipe while
 * storage-buffer reads in a loop are not. An invocation computes an RT x CT tile of dot products
 * (RT rows x CT codes) over a chunk of codes, keeping the running (min, argmin) per row; the chunks'
 * results are merged in ascending chunk order by a second pass. No atomics.
 *
 * `scatterAddRows` (the codebook gradient: sum of rows per id) is a counting sort done on the GPU:
 * per-chunk counts with u32 atomics, a prefix scan, a stable placement (a row's rank among equal ids
 * earlier in its chunk), then per-code sums in row order: deterministic, no float atomics.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { TexturePool, textureView } from "@lvm/gpu";

/** Result of {@link vqNearest}. */
export interface VqResult {
  /** (N) i32: the nearest code of each row. */
  ids: Tensor;
  /** (N) f32: its distance (|z|^2 + |e|^2 - 2 z.e; may be slightly negative by rounding). */
  dist: Tensor;
}

function check2d(fn: string, name: string, t: Tensor, what: string): [number, number] {
  if (t.shape.length !== 2 || t.dtype !== "f32") {
    throw new RangeError(
      `${fn}: ${name} must be an f32 ${what} tensor, got [${t.shape}] ${t.dtype}`,
    );
  }
  return t.shape as [number, number];
}

function checkIds(fn: string, ids: Tensor, N?: number) {
  if (ids.dtype !== "i32" || (N !== undefined && ids.size !== N)) {
    throw new RangeError(
      `${fn}: ids must be i32${
        N !== undefined ? ` with ${N} elements` : ""
      }, got [${ids.shape}] ${ids.dtype}`,
    );
  }
}

// --- textures (a small per-device pool) ---

const pool = new TexturePool("vq");

/** Destroys the textures vqNearest keeps for reuse (made again when needed). */
export function vqReleaseTextures(gpu: Gpu): void {
  pool.release(gpu);
}

/** Rows of RW texels, wrapped into bands of `H` rows side by side: row r -> ((r / H) * RW + c, r % H). */
interface RowTex {
  tex: GPUTexture;
  view: GPUTextureView;
  RW: number;
  H: number;
}

const STAGE_WGSL = `
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var tex: texture_storage_2d<rgba32float, write>;
struct P { N: u32, D: u32, D4: u32, RW: u32, H: u32, norm: u32 }
@group(0) @binding(2) var<uniform> p: P;
fn at(r: u32, d: u32) -> f32 {
  if (d >= p.D) { return 0.0; }
  return src[r * p.D + d];
}
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let r = ${WG_INDEX} * 64u + li;
  if (r >= p.N) { return; }
  let u0 = (r / p.H) * p.RW;
  let v = r % p.H;
  var nrm = 0.0;
  for (var c = 0u; c < p.D4; c++) {
    let e = vec4f(at(r, 4u * c), at(r, 4u * c + 1u), at(r, 4u * c + 2u), at(r, 4u * c + 3u));
    nrm = fma(e.w, e.w, fma(e.z, e.z, fma(e.y, e.y, fma(e.x, e.x, nrm))));
    textureStore(tex, vec2u(u0 + c, v), e);
  }
  if (p.norm != 0u) { textureStore(tex, vec2u(u0 + p.D4, v), vec4f(nrm, 0.0, 0.0, 0.0)); }
}`;

/** Stages (N, D) rows into a texture of ceil(D/4) texels per row (+1 texel holding |row|^2 if `norm`). */
function stageRows(gpu: Gpu, src: Tensor, N: number, D: number, norm: boolean): RowTex {
  const max = gpu.limits.maxTextureDimension2D;
  const D4 = Math.ceil(D / 4);
  const RW = D4 + (norm ? 1 : 0);
  const H = Math.min(N, max);
  const bands = Math.ceil(N / H);
  if (bands * RW > max) {
    throw new RangeError(`vq: ${N} rows of ${D} do not fit one ${max}^2 texture`);
  }
  const tex = pool.take(gpu, bands * RW, H);
  const view = textureView(tex);
  gpu.dispatch(
    gpu.pipeline("vq_stage", STAGE_WGSL),
    [src, view],
    new Params().u32(N).u32(D).u32(D4).u32(RW).u32(H).u32(norm ? 1 : 0),
    grid(Math.ceil(N / 64)),
  );
  return { tex, view, RW, H };
}

// --- nearest code ---

const RT = 8; // rows per invocation
const CT = 8; // codes per inner block
const WG = 64;

/**
 * The search kernel, with the texels per row (D4), the codes per chunk and the code count baked in:
 * lavapipe (22.3) inlines uniforms that steer loops and branches when that shrinks the shader by
 * half, and then compiles the inlined shader again at every dispatch (no variant cache). With these
 * three as uniforms, 512 rows x 512 codes x 32 (the `tiny` tokenizer's batch of 8) took that path:
 * ~10 ms of JIT compile per call (the tiny training step's vq_nearest: 10-15 ms), ~1.5 ms baked.
 */
function nearestWgsl(T: number, U: number, D4: number, chunk: number, K: number): string {
  const G = WG / T;
  const L: string[] = [];
  L.push(`@group(0) @binding(0) var zt: texture_2d<f32>;`);
  L.push(`@group(0) @binding(1) var et: texture_2d<f32>;`);
  L.push(`@group(0) @binding(2) var<storage, read_write> pbest: array<f32>;`);
  L.push(`@group(0) @binding(3) var<storage, read_write> pid: array<i32>;`);
  L.push(
    `struct P { N: u32, rowBlocks: u32, chunks: u32, zRW: u32, zH: u32, eRW: u32, eH: u32 }`,
  );
  L.push(`@group(0) @binding(4) var<uniform> p: P;`);
  L.push(`fn zc(r: u32, c: u32) -> vec2u { return vec2u((r / p.zH) * p.zRW + c, r % p.zH); }`);
  L.push(`fn ec(k: u32, c: u32) -> vec2u { return vec2u((k / p.eH) * p.eRW + c, k % p.eH); }`);
  L.push(`@compute @workgroup_size(${WG})`);
  L.push(`fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u) {`);
  L.push(`  let rb0 = wg.x * ${T}u + li % ${T}u;`);
  L.push(`  let ch0 = wg.y * ${G}u + li / ${T}u;`);
  L.push(`  let live = rb0 < p.rowBlocks && ch0 < p.chunks;`);
  L.push(`  let rb = min(rb0, p.rowBlocks - 1u);`);
  L.push(`  let ch = min(ch0, p.chunks - 1u);`);
  // Rows past N repeat the last row (never stored).
  for (let r = 0; r < RT; r++) L.push(`  let row${r} = min(rb * ${RT}u + ${r}u, p.N - 1u);`);
  for (let r = 0; r < RT; r++) {
    L.push(`  var zn${r} = 0.0;`);
    L.push(`  var best${r} = 3.4028234663852886e38;`);
    L.push(`  var bid${r} = 0i;`);
  }
  L.push(`  for (var c = 0u; c < ${D4}u; c++) {`);
  for (let r = 0; r < RT; r++) {
    L.push(`    let z${r} = textureLoad(zt, zc(row${r}, c), 0);`);
    L.push(
      `    zn${r} = fma(z${r}.w, z${r}.w, fma(z${r}.z, z${r}.z, fma(z${r}.y, z${r}.y, fma(z${r}.x, z${r}.x, zn${r}))));`,
    );
  }
  L.push(`  }`);
  L.push(`  let k0 = ch * ${chunk}u;`);
  L.push(`  let k1 = min(k0 + ${chunk}u, ${K}u);`);
  L.push(`  for (var kb = k0; kb < k1; kb += ${CT}u) {`);
  for (let j = 0; j < CT; j++) L.push(`    let code${j} = min(kb + ${j}u, ${K}u - 1u);`);
  for (let r = 0; r < RT; r++) for (let j = 0; j < CT; j++) L.push(`    var a${r}_${j} = 0.0;`);
  // U texels per iteration and one chained assignment per accumulator: lavapipe pays a masked
  // load/blend/store for every assignment to a loop-carried variable.
  L.push(`    for (var c = 0u; c < ${D4}u; c += ${U}u) {`);
  for (let u = 0; u < U; u++) {
    for (let r = 0; r < RT; r++) {
      L.push(`      let z${r}_${u} = textureLoad(zt, zc(row${r}, c + ${u}u), 0);`);
    }
    for (let j = 0; j < CT; j++) {
      L.push(`      let e${j}_${u} = textureLoad(et, ec(code${j}, c + ${u}u), 0);`);
    }
  }
  for (let r = 0; r < RT; r++) {
    for (let j = 0; j < CT; j++) {
      let e = `a${r}_${j}`;
      for (let u = 0; u < U; u++) {
        for (const cc of ["x", "y", "z", "w"]) e = `fma(z${r}_${u}.${cc}, e${j}_${u}.${cc}, ${e})`;
      }
      L.push(`      a${r}_${j} = ${e};`);
    }
  }
  L.push(`    }`);
  for (let j = 0; j < CT; j++) {
    L.push(`    if (kb + ${j}u < k1) {`);
    L.push(`      let en = textureLoad(et, ec(code${j}, ${D4}u), 0).x;`);
    for (let r = 0; r < RT; r++) {
      L.push(
        `      { let d = (zn${r} + en) - 2.0 * a${r}_${j}; if (d < best${r}) { best${r} = d; bid${r} = i32(code${j}); } }`,
      );
    }
    L.push(`    }`);
  }
  L.push(`  }`);
  L.push(`  if (!live) { return; }`);
  for (let r = 0; r < RT; r++) {
    L.push(
      `  if (rb * ${RT}u + ${r}u < p.N) { pbest[ch * p.N + row${r}] = best${r}; pid[ch * p.N + row${r}] = bid${r}; }`,
    );
  }
  L.push(`}`);
  return L.join("\n");
}

const MERGE_WGSL = `
@group(0) @binding(0) var<storage, read> pbest: array<f32>;
@group(0) @binding(1) var<storage, read> pid: array<i32>;
@group(0) @binding(2) var<storage, read_write> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> dist: array<f32>;
struct P { N: u32, chunks: u32 }
@group(0) @binding(4) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let n = ${WG_INDEX} * 64u + li;
  if (n >= p.N) { return; }
  var best = pbest[n];
  var id = pid[n];
  for (var c = 1u; c < p.chunks; c++) {
    let d = pbest[c * p.N + n];
    if (d < best) { best = d; id = pid[c * p.N + n]; }
  }
  ids[n] = id;
  dist[n] = best;
}`;

function nextPow2(n: number): number {
  return 2 ** Math.ceil(Math.log2(Math.max(1, n)));
}

/**
 * Nearest codebook entry of each row: z (N, D), codebook (K, D) -> ids (N) i32 and the distance (N),
 * by squared L2 as |z|^2 + |e|^2 - 2 z.e with ties to the lowest index.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { vqNearest } from "./vq.ts";
 * const gpu = await getGpu();
 * const z = gpu.upload([0.9, 0.1, -1, -1], [2, 2]);
 * const codebook = gpu.upload([0, 0, 1, 0, -1, -1], [3, 2]);
 * const { ids } = vqNearest(gpu, z, codebook);
 * console.log(await gpu.read(ids)); // Int32Array [1, 2]
 * ```
 */
export function vqNearest(gpu: Gpu, z: Tensor, codebook: Tensor): VqResult {
  const fn = "vqNearest";
  const [N, D] = check2d(fn, "z", z, "(N, D)");
  const [K, D2] = check2d(fn, "codebook", codebook, "(K, D)");
  if (D !== D2) throw new RangeError(`${fn}: z rows have ${D} values but codebook rows have ${D2}`);
  if (K < 1 || N < 1) {
    throw new RangeError(`${fn}: needs at least one row and one code, got N=${N}, K=${K}`);
  }
  const zt = stageRows(gpu, z, N, D, false);
  const et = stageRows(gpu, codebook, K, D, true);
  const rowBlocks = Math.ceil(N / RT);
  // Enough chunks of codes for ~16 workgroups on a CPU (~256 on a GPU), each a multiple of CT codes.
  const target = (gpu.kind === "cpu" ? 16 : 256) * WG;
  const maxChunks = Math.ceil(K / CT);
  const want = Math.max(1, Math.min(maxChunks, Math.ceil(target / rowBlocks)));
  const chunk = Math.ceil(Math.ceil(K / want) / CT) * CT;
  const chunks = Math.ceil(K / chunk);
  const T = Math.min(WG, nextPow2(rowBlocks));
  const D4 = Math.ceil(D / 4);
  const U = D4 % 4 === 0 ? 4 : D4 % 2 === 0 ? 2 : 1; // texels per inner iteration
  const pbest = gpu.empty([chunks, N]);
  const pid = gpu.empty([chunks, N], "i32");
  gpu.dispatch(
    gpu.pipeline(`vq_nearest|${T}|${U}|${D4}|${chunk}|${K}`, () => nearestWgsl(T, U, D4, chunk, K)),
    [zt.view, et.view, pbest, pid],
    new Params().u32(N).u32(rowBlocks).u32(chunks).u32(zt.RW).u32(zt.H).u32(et.RW).u32(et.H),
    [Math.ceil(rowBlocks / T), Math.ceil(chunks / (WG / T)), 1],
  );
  const ids = gpu.empty([N], "i32");
  const dist = gpu.empty([N]);
  gpu.dispatch(
    gpu.pipeline("vq_merge", MERGE_WGSL),
    [pbest, pid, ids, dist],
    new Params().u32(N).u32(chunks),
    grid(Math.ceil(N / 64)),
  );
  pool.put(gpu, zt.tex);
  pool.put(gpu, et.tex);
  pbest.release();
  pid.release();
  return { ids, dist };
}

// --- lookup, transposes ---

const LOOKUP_WGSL = `
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> cb: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct P { N: u32, D: u32, K: u32 }
@group(0) @binding(3) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;
  if (i >= p.N * p.D) { return; }
  let id = ids[i / p.D];
  var v = 0.0;
  if (id >= 0 && u32(id) < p.K) { v = cb[u32(id) * p.D + i % p.D]; }
  out[i] = v;
}`;

/** Codebook rows of `ids`: ids (N) i32, codebook (K, D) -> (N, D). Ids outside [0, K) give zero rows. */
export function vqLookup(gpu: Gpu, ids: Tensor, codebook: Tensor): Tensor {
  const [K, D] = check2d("vqLookup", "codebook", codebook, "(K, D)");
  checkIds("vqLookup", ids);
  const N = ids.size;
  const out = gpu.empty([N, D]); // (N, D)
  gpu.dispatch(
    gpu.pipeline("vq_lookup", LOOKUP_WGSL),
    [ids, codebook, out],
    new Params().u32(N).u32(D).u32(K),
    grid(Math.ceil((N * D) / 256)),
  );
  return out;
}

const TRANSPOSE_WGSL = (toRows: boolean) => `
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
struct P { N: u32, C: u32, HW: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;   // index into the rows layout (b*HW + s, c)
  if (i >= p.N) { return; }
  let c = i % p.C;
  let bs = i / p.C;
  let b = bs / p.HW;
  let s = bs % p.HW;
  let j = (b * p.C + c) * p.HW + s; // index into NCHW
  ${toRows ? "dst[i] = src[j];" : "dst[j] = src[i];"}
}`;

/** NCHW latents to rows: x (B, C, H, W) -> (B*H*W, C), row index b*H*W + h*W + w (raster order). */
export function nchwToRows(gpu: Gpu, x: Tensor): Tensor {
  if (x.shape.length !== 4 || x.dtype !== "f32") {
    throw new RangeError(
      `nchwToRows: x must be an f32 (B,C,H,W) tensor, got [${x.shape}] ${x.dtype}`,
    );
  }
  const [B, C, H, W] = x.shape;
  const out = gpu.empty([B * H * W, C]);
  gpu.dispatch(
    gpu.pipeline("vq_to_rows", () => TRANSPOSE_WGSL(true)),
    [x, out],
    new Params().u32(x.size).u32(C).u32(H * W),
    grid(Math.ceil(x.size / 256)),
  );
  return out;
}

/** Rows back to NCHW: rows (B*H*W, C) -> (B, C, H, W); the inverse of {@link nchwToRows}. */
export function rowsToNchw(gpu: Gpu, rows: Tensor, B: number, H: number, W: number): Tensor {
  if (rows.shape.length !== 2 || rows.dtype !== "f32" || rows.shape[0] !== B * H * W) {
    throw new RangeError(
      `rowsToNchw: rows must be an f32 (B*H*W = ${
        B * H * W
      }, C) tensor, got [${rows.shape}] ${rows.dtype}`,
    );
  }
  const C = rows.shape[1];
  const out = gpu.empty([B, C, H, W]);
  gpu.dispatch(
    gpu.pipeline("vq_to_nchw", () => TRANSPOSE_WGSL(false)),
    [rows, out],
    new Params().u32(rows.size).u32(C).u32(H * W),
    grid(Math.ceil(rows.size / 256)),
  );
  return out;
}

// --- bincount, scatter-add (counting sort) ---

const CHUNK = 256; // rows per placement chunk

const BINCOUNT_WGSL = `
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read_write> counts: array<atomic<u32>>;
struct P { N: u32, K: u32, chunk: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;
  if (i >= p.N) { return; }
  let id = ids[i];
  if (id < 0 || u32(id) >= p.K) { return; }
  // chunk = 0 counts over all rows; else counts per chunk of rows: counts[(i / chunk) * K + id].
  var slot = u32(id);
  if (p.chunk != 0u) { slot += (i / p.chunk) * p.K; }
  atomicAdd(&counts[slot], 1u);
}`;

/**
 * Occurrences of each id in [0, K): ids (N) i32 -> (K) u32. Ids outside the range are ignored.
 * With `into` (a (K) u32 tensor), the counts are added to it (a running tally: the dead-code
 * restarts' usage window) and `into` is returned.
 */
export function bincount(gpu: Gpu, ids: Tensor, K: number, into?: Tensor): Tensor {
  checkIds("bincount", ids);
  if (into && (into.dtype !== "u32" || into.size !== K)) {
    throw new RangeError(
      `bincount: into must be u32 with ${K} elements, got [${into.shape}] ${into.dtype}`,
    );
  }
  const counts = into ?? gpu.zeros([K], "u32");
  gpu.dispatch(
    gpu.pipeline("vq_bincount", BINCOUNT_WGSL),
    [ids, counts],
    new Params().u32(ids.size).u32(K).u32(0),
    grid(Math.ceil(ids.size / 256)),
  );
  return counts;
}

const COUNT_NONZERO_WGSL = `
@group(0) @binding(0) var<storage, read> counts: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct P { K: u32 }
@group(0) @binding(2) var<uniform> p: P;
var<workgroup> part: array<u32, 64>;
@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32) {
  var n = 0u;
  for (var k = li; k < p.K; k += 64u) { n += select(0u, 1u, counts[k] != 0u); }
  part[li] = n;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (li < s) { part[li] += part[li + s]; }
    workgroupBarrier();
  }
  if (li == 0u) { out[0] = f32(part[0]); }
}`;

/**
 * How many of the (K) u32 `counts` are non-zero, as a (1) f32 tensor (exact up to 2^24): the codes
 * a window used, kept on the GPU until a read.
 */
export function countNonzero(gpu: Gpu, counts: Tensor): Tensor {
  if (counts.dtype !== "u32") {
    throw new RangeError(`countNonzero: counts must be u32, got [${counts.shape}] ${counts.dtype}`);
  }
  const out = gpu.empty([1]);
  gpu.dispatch(
    gpu.pipeline("vq_count_nonzero", COUNT_NONZERO_WGSL),
    [counts, out],
    new Params().u32(counts.size),
    [1, 1, 1],
  );
  return out;
}

// Per code: exclusive prefix over chunks in place, total per code out.
const CHUNK_SCAN_WGSL = `
@group(0) @binding(0) var<storage, read_write> counts: array<u32>;
@group(0) @binding(1) var<storage, read_write> total: array<u32>;
struct P { K: u32, chunks: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let k = ${WG_INDEX} * 256u + li;
  if (k >= p.K) { return; }
  var s = 0u;
  for (var c = 0u; c < p.chunks; c++) {
    let v = counts[c * p.K + k];
    counts[c * p.K + k] = s;
    s += v;
  }
  total[k] = s;
}`;

// Exclusive scan of total (K) into offsets (K + 1) by one workgroup: each invocation scans a run.
const OFFSETS_WGSL = `
@group(0) @binding(0) var<storage, read> total: array<u32>;
@group(0) @binding(1) var<storage, read_write> offsets: array<u32>;
struct P { K: u32 }
@group(0) @binding(2) var<uniform> p: P;
var<workgroup> sh: array<u32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32) {
  let run = (p.K + 255u) / 256u;
  let k0 = li * run;
  let k1 = min(k0 + run, p.K);
  var s = 0u;
  for (var k = k0; k < k1; k++) { s += total[k]; }
  sh[li] = s;
  workgroupBarrier();
  if (li == 0u) {
    var acc = 0u;
    for (var t = 0u; t < 256u; t++) { let v = sh[t]; sh[t] = acc; acc += v; }
  }
  workgroupBarrier();
  var o = sh[li];
  for (var k = k0; k < k1; k++) { offsets[k] = o; o += total[k]; }
  if (li == 255u) { offsets[p.K] = o; }
}`;

const PLACE_WGSL = `
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> chunkBase: array<u32>;
@group(0) @binding(2) var<storage, read> offsets: array<u32>;
@group(0) @binding(3) var<storage, read_write> perm: array<u32>;
struct P { N: u32, K: u32, chunk: u32 }
@group(0) @binding(4) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;
  if (i >= p.N) { return; }
  let id = ids[i];
  if (id < 0 || u32(id) >= p.K) { return; }
  let c = i / p.chunk;
  var r = 0u;
  for (var j = c * p.chunk; j < i; j++) { if (ids[j] == id) { r++; } }
  perm[offsets[u32(id)] + chunkBase[c * p.K + u32(id)] + r] = i;
}`;

const SEGSUM_WGSL = `
@group(0) @binding(0) var<storage, read> rows: array<f32>;
@group(0) @binding(1) var<storage, read> perm: array<u32>;
@group(0) @binding(2) var<storage, read> offsets: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
struct P { K: u32, D: u32 }
@group(0) @binding(4) var<uniform> p: P;
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * 256u + li;   // (k, d)
  if (i >= p.K * p.D) { return; }
  let k = i / p.D;
  let d = i % p.D;
  var s = 0.0;
  for (var t = offsets[k]; t < offsets[k + 1u]; t++) { s += rows[perm[t] * p.D + d]; }
  out[i] = s;
}`;

/**
 * Sums rows by id: ids (N) i32, rows (N, D) -> (K, D) with out[k] = sum of rows[n] where ids[n] = k,
 * added in ascending n (deterministic, no float atomics). Ids outside [0, K) are ignored. This is the
 * codebook gradient given per-row gradients.
 */
export function scatterAddRows(gpu: Gpu, ids: Tensor, rows: Tensor, K: number): Tensor {
  const fn = "scatterAddRows";
  const [N, D] = check2d(fn, "rows", rows, "(N, D)");
  checkIds(fn, ids, N);
  if (!Number.isInteger(K) || K < 1) {
    throw new RangeError(`${fn}: K must be a positive integer, got ${K}`);
  }
  const chunks = Math.ceil(N / CHUNK);
  const counts = gpu.zeros([chunks, K], "u32");
  gpu.dispatch(
    gpu.pipeline("vq_bincount", BINCOUNT_WGSL),
    [ids, counts],
    new Params().u32(N).u32(K).u32(CHUNK),
    grid(Math.ceil(N / 256)),
  );
  const total = gpu.empty([K], "u32");
  gpu.dispatch(
    gpu.pipeline("vq_chunk_scan", CHUNK_SCAN_WGSL),
    [counts, total],
    new Params().u32(K).u32(chunks),
    grid(Math.ceil(K / 256)),
  );
  const offsets = gpu.empty([K + 1], "u32");
  gpu.dispatch(gpu.pipeline("vq_offsets", OFFSETS_WGSL), [total, offsets], new Params().u32(K), 1);
  const perm = gpu.empty([Math.max(N, 1)], "u32");
  gpu.dispatch(
    gpu.pipeline("vq_place", PLACE_WGSL),
    [ids, counts, offsets, perm],
    new Params().u32(N).u32(K).u32(CHUNK),
    grid(Math.ceil(N / 256)),
  );
  const out = gpu.empty([K, D]);
  gpu.dispatch(
    gpu.pipeline("vq_segsum", SEGSUM_WGSL),
    [rows, perm, offsets, out],
    new Params().u32(K).u32(D),
    grid(Math.ceil((K * D) / 256)),
  );
  for (const t of [counts, total, offsets, perm]) t.release();
  return out;
}

// --- CPU references ---

/**
 * CPU reference distances of {@link vqNearest} in f64: (|z|^2 + |e|^2) - 2 z.e for every (n, k),
 * row-major (N, K). Exact up to f64 rounding, independent of summation order at f32 precision.
 */
export function vqDistancesCpu(
  z: ArrayLike<number>,
  codebook: ArrayLike<number>,
  N: number,
  K: number,
  D: number,
): Float64Array {
  const out = new Float64Array(N * K);
  const en = new Float64Array(K);
  for (let k = 0; k < K; k++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += codebook[k * D + d] ** 2;
    en[k] = s;
  }
  for (let n = 0; n < N; n++) {
    let zn = 0;
    for (let d = 0; d < D; d++) zn += z[n * D + d] ** 2;
    for (let k = 0; k < K; k++) {
      let dot = 0;
      for (let d = 0; d < D; d++) dot += z[n * D + d] * codebook[k * D + d];
      out[n * K + k] = zn + en[k] - 2 * dot;
    }
  }
  return out;
}

/** CPU reference of {@link vqNearest}: argmin over the f64 distances, ties to the lowest index. */
export function vqNearestCpu(
  z: ArrayLike<number>,
  codebook: ArrayLike<number>,
  N: number,
  K: number,
  D: number,
): { ids: Int32Array; dist: Float64Array; all: Float64Array } {
  const all = vqDistancesCpu(z, codebook, N, K, D);
  const ids = new Int32Array(N), dist = new Float64Array(N);
  for (let n = 0; n < N; n++) {
    let best = Infinity, id = 0;
    for (let k = 0; k < K; k++) {
      if (all[n * K + k] < best) {
        best = all[n * K + k];
        id = k;
      }
    }
    ids[n] = id;
    dist[n] = best;
  }
  return { ids, dist, all };
}

/** CPU reference of {@link scatterAddRows}: f32 sums in ascending row order (bit-exact). */
export function scatterAddRowsCpu(
  ids: ArrayLike<number>,
  rows: ArrayLike<number>,
  N: number,
  D: number,
  K: number,
): Float32Array {
  const out = new Float32Array(K * D);
  for (let n = 0; n < N; n++) {
    const k = ids[n];
    if (k < 0 || k >= K) continue;
    for (let d = 0; d < D; d++) out[k * D + d] = Math.fround(out[k * D + d] + rows[n * D + d]);
  }
  return out;
}
