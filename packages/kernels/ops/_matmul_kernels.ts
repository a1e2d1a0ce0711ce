/**
 * WGSL of the matmul family (private to ops/matmul.ts). Every kernel computes, for each batch `bi`,
 * `out[bi] = alpha * A[bi] B[bi] (+ bias) (+ out[bi])` in f32 with f32 accumulation, and shares one
 * epilogue ({@link EPILOGUE}). Operands are read either from storage buffers through stride
 * parameters (so transposes and a shared B cost nothing but index math) or, in the llvmpipe
 * kernels, from textures that a copy or a pack kernel filled.
 *
 * Storage-operand parameter block (naive, blocked, tiled, gemv), element (bi, m, k) of A is
 * `a[bi*sAb + m*sAm + k*sAk]`, element (bi, k, n) of B is `b[bi*sBb + k*sBk + n*sBn]`:
 *   batch, M, N, K, sAb, sAm, sAk, sBb, sBk, sBn, alpha, flags
 * Every kernel binds: operand 0, operand 1, bias, out, params.
 * @module
 */

/** What the kernel is specialised on besides its tile sizes. */
export interface KernelFlags {
  /** B is packed f16 (two halves per u32). */
  bF16: boolean;
}

/**
 * Epilogue switches, a runtime bit field (`p.flags`) rather than compile-time variants so that one
 * pipeline serves every combination: bias (a (N) tensor, always bound; a dummy when unused) and
 * accumulate (out is read before it is written).
 */
export const FLAG_BIAS = 1, FLAG_ACC = 2;

/** The storage-operand parameter struct. */
export const STRIDE_PARAMS = `struct P {
  batch: u32, M: u32, N: u32, K: u32,
  sAb: u32, sAm: u32, sAk: u32,
  sBb: u32, sBk: u32, sBn: u32,
  alpha: f32, flags: u32,
}`;

/** Bindings after the operands: bias, out, then the parameters. */
function tailBindings(params: string): string {
  return `@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${params}
@group(0) @binding(4) var<uniform> p: P;`;
}

/** Bindings of a storage-operand kernel: a, b, bias, out, params. */
function storageBindings(f: KernelFlags): string {
  return `@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<${f.bF16 ? "u32" : "f32"}>;
${tailBindings(STRIDE_PARAMS)}`;
}

/** `ldA(i)` / `ldB(i)`: one element of A / B at a flat index (f16 B is unpacked). */
function loaders(f: KernelFlags): string {
  const ldB = f.bF16
    ? `fn ldB(i: u32) -> f32 { return unpack2x16float(b[i >> 1u])[i & 1u]; }`
    : `fn ldB(i: u32) -> f32 { return b[i]; }`;
  return `fn ldA(i: u32) -> f32 { return a[i]; }\n${ldB}`;
}

/** `put(o, n, v)`: writes alpha*v (+ bias[n]) (+ out[o]) to out[o]. */
export const EPILOGUE = `fn put(o: u32, n: u32, v: f32) {
  var r = p.alpha * v;
  if ((p.flags & ${FLAG_BIAS}u) != 0u) { r += bias[n]; }
  if ((p.flags & ${FLAG_ACC}u) != 0u) { r += out[o]; }
  out[o] = r;
}`;

/** Rung 0: one output per invocation, a plain dot product. The reference the others are held to. */
export function naiveKernel(f: KernelFlags): string {
  return `${storageBindings(f)}
${loaders(f)}
${EPILOGUE}
@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = g.x; let m = g.y; let bi = g.z;
  if (n >= p.N || m >= p.M || bi >= p.batch) { return; }
  let ao = bi * p.sAb + m * p.sAm;
  let bo = bi * p.sBb + n * p.sBn;
  var s = 0.0;
  for (var k = 0u; k < p.K; k++) { s = fma(ldA(ao + k * p.sAk), ldB(bo + k * p.sBk), s); }
  put((bi * p.M + m) * p.N + n, n, s);
}`;
}

/**
 * Rung 1: register-blocked, no shared memory: each invocation keeps a TMxTN block of C in registers;
 * out-of-range rows/columns are clamped (computed twice, never stored) so the K loop has no branches.
 * Lanes run along N, so the A loads of a workgroup row are uniform.
 */
export function blockedKernel(f: KernelFlags, TM = 4, TN = 4, WGX = 16, WGY = 4): string {
  const r = [...Array(TM).keys()], c = [...Array(TN).keys()];
  return `${storageBindings(f)}
${loaders(f)}
${EPILOGUE}
@compute @workgroup_size(${WGX}, ${WGY})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n0 = g.x * ${TN}u; let m0 = g.y * ${TM}u; let bi = g.z;
  if (n0 >= p.N || m0 >= p.M || bi >= p.batch) { return; }
  ${r.map((i) => `let ao${i} = bi * p.sAb + min(m0 + ${i}u, p.M - 1u) * p.sAm;`).join("\n  ")}
  ${c.map((j) => `let bo${j} = bi * p.sBb + min(n0 + ${j}u, p.N - 1u) * p.sBn;`).join("\n  ")}
  ${r.map((i) => c.map((j) => `var c${i}_${j} = 0.0;`).join(" ")).join("\n  ")}
  for (var k = 0u; k < p.K; k++) {
    let ka = k * p.sAk; let kb = k * p.sBk;
    ${c.map((j) => `let b${j} = ldB(bo${j} + kb);`).join(" ")}
    ${
    r.map((i) =>
      `{ let av = ldA(ao${i} + ka); ${
        c.map((j) => `c${i}_${j} = fma(av, b${j}, c${i}_${j});`).join(" ")
      } }`
    ).join("\n    ")
  }
  }
  ${
    r.map((i) =>
      `if (m0 + ${i}u < p.M) { let o = (bi * p.M + m0 + ${i}u) * p.N + n0; ${
        c.map((j) => `if (n0 + ${j}u < p.N) { put(o + ${j}u, n0 + ${j}u, c${i}_${j}); }`).join(" ")
      } }`
    ).join("\n  ")
  }
}`;
}

/** Tile shape of {@link tiledKernel}: a BMxBN tile of C per workgroup, TMxTN per invocation. */
export interface TileConfig {
  /** Rows of C per workgroup. */
  BM: number;
  /** Columns of C per workgroup. */
  BN: number;
  /** K per stage through workgroup memory. */
  BK: number;
  /** Rows of C per invocation (BM / TM invocations down). */
  TM: number;
  /** Columns of C per invocation (BN / TN invocations across). */
  TN: number;
}

/** Workgroup memory (bytes) {@link tiledKernel} takes for a tile shape. */
export function tileBytes(t: TileConfig): number {
  return ((t.BM + 1) * t.BK + (t.BN + 1) * t.BK) * 4;
}

/** Why a tile shape cannot be generated (null when it can). */
export function tileProblem(t: TileConfig): string | null {
  const { BM, BN, BK, TM, TN } = t;
  for (const [k, v] of Object.entries(t)) {
    if (!Number.isInteger(v) || v < 1) return `${k} must be a positive integer, got ${v}`;
  }
  if (BM % TM || BN % TN) return `BM % TM and BN % TN must be 0 (${BM}/${TM}, ${BN}/${TN})`;
  const T = (BM / TM) * (BN / TN);
  if (T > 256) return `${T} invocations per workgroup (at most 256)`;
  if ((BM * BK) % T || (BN * BK) % T) {
    return `each tile stage (${BM}x${BK}, ${BK}x${BN}) must split evenly over ${T} invocations`;
  }
  return null;
}

/**
 * Rung 2 (real GPUs): shared-memory tiling. A workgroup of (BN/TN) x (BM/TM) invocations computes
 * a BMxBN tile of C, each invocation TMxTN outputs in registers, strided across the tile
 * (row ty + i*BM/TM, column tx + j*BN/TN) so that neighbouring invocations read neighbouring
 * words of workgroup memory and write neighbouring words of C. K advances BK at a time: the
 * workgroup copies A's BMxBK and B's BKxBN stage into workgroup memory, the invocations walking the
 * operand's contiguous dimension (`aK`: A's k is contiguous, A not transposed; `bN`: B's n is, B not
 * transposed) so global reads coalesce; rows are padded by one word against bank conflicts.
 * On llvmpipe barriers are emulated and this loses to {@link texKernel}; it is here for GPUs.
 *
 * `split` (split-K, for outputs too small to fill the GPU with tiles): workgroup z is
 * `bi * p.nSplit + s`, which sums k in [s * p.kChunk, (s + 1) * p.kChunk) and writes its raw sums
 * to slice s of `out` (a (nSplit, batch, M, N) scratch); {@link splitSumKernel} adds the slices in
 * order and applies the epilogue.
 */
export function tiledKernel(
  f: KernelFlags,
  t: TileConfig = { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 },
  aK = true,
  bN = true,
  split = false,
): string {
  const bindings = split
    ? storageBindings(f).replace(
      "alpha: f32, flags: u32,",
      "alpha: f32, flags: u32, kChunk: u32, nSplit: u32,",
    )
    : storageBindings(f);
  return tiledCore({
    tile: t,
    aK,
    bN,
    split,
    header: `${bindings}
${loaders(f)}
${EPILOGUE}
fn tileA(bi: u32, m: u32, k: u32) -> f32 { return ldA(bi * p.sAb + m * p.sAm + k * p.sAk); }
fn tileB(bi: u32, k: u32, n: u32) -> f32 { return ldB(bi * p.sBb + k * p.sBk + n * p.sBn); }
fn tileOut(bi: u32, m: u32, n: u32, v: f32) { put((bi * p.M + m) * p.N + n, n, v); }`,
    // Split-K slices write raw sums; the bias binding is still declared (every storage kernel
    // binds it), so it must be used for the automatic layout to keep it.
    prelude: split ? "_ = bias[0];" : "",
  });
}

/**
 * What {@link tiledCore} builds a shared-memory tiled GEMM from: the header declares the uniform
 * `p` (with fields `batch`, `M`, `N`, `K`, and `kChunk`, `nSplit` for split-K), the bindings (one
 * named `out` for split-K's raw sums) and three functions called only in range:
 * `tileA(bi, m, k) -> f32`, `tileB(bi, k, n) -> f32` (the operands' elements, any gather) and
 * `tileOut(bi, m, n, v)` (the epilogue and the store).
 */
export interface TiledCoreSpec {
  tile: TileConfig;
  /** A's k is its contiguous dimension (stage loads walk k across invocations), else m. */
  aK: boolean;
  /** B's n is its contiguous dimension, else k. */
  bN: boolean;
  /** Split-K: workgroup z is bi * p.nSplit + slice; raw sums to `out` slice by slice. */
  split?: boolean;
  header: string;
  /** Statements at the top of main (after bi is known). */
  prelude?: string;
  /**
   * B's per-column work done once: where each invocation loads one fixed column n of B in every
   * stage (B's n contiguous and the workgroup a multiple of BN), `colPre(n) -> T` is called once
   * and the loads call `tileBCol(bi, k, n, pre)` instead of tileB (the conv's pixel coordinates).
   */
  colPre?: boolean;
}

/**
 * The tiled GEMM of {@link tiledKernel} with its operand reads and its store supplied by the caller
 * ({@link TiledCoreSpec}): the implicit-GEMM convolution (conv2d_gemm.ts) is this loop with an
 * im2col gather as B.
 */
export function tiledCore(spec: TiledCoreSpec): string {
  const t = spec.tile, split = spec.split ?? false;
  const bad = tileProblem(t);
  if (bad) throw new RangeError(`tiledKernel: ${bad}`);
  const { BM, BN, BK, TM, TN } = t;
  const WX = BN / TN, WY = BM / TM, T = WX * WY;
  const SA = BM + 1, SB = BN + 1; // padded row strides of the stages in workgroup memory
  const r = [...Array(TM).keys()], c = [...Array(TN).keys()];
  // Stage loads: element e of this invocation is flat index li + e*T of the stage, split so the
  // operand's contiguous dimension varies fastest across invocations.
  const loadA = spec.aK
    ? `let kk = idx % ${BK}u; let mm = idx / ${BK}u;`
    : `let mm = idx % ${BM}u; let kk = idx / ${BM}u;`;
  const loadB = spec.bN
    ? `let nn = idx % ${BN}u; let kk = idx / ${BN}u;`
    : `let kk = idx % ${BK}u; let nn = idx / ${BK}u;`;
  // One fixed column per invocation: B's n walks across invocations and T is a multiple of BN.
  const col = !!spec.colPre && spec.bN && T % BN === 0;
  const kRange = split
    ? `let bi = wg.z / p.nSplit; let sp = wg.z % p.nSplit;
  let kBeg = sp * p.kChunk; let kEnd = min(p.K, kBeg + p.kChunk);`
    : `let bi = wg.z; let kBeg = 0u; let kEnd = p.K;`;
  const store = (row: string, n: string, v: string) =>
    split
      ? `out[((sp * p.batch + bi) * p.M + ${row}) * p.N + ${n}] = ${v};`
      : `tileOut(bi, ${row}, ${n}, ${v});`;
  return `${spec.header}
var<workgroup> As: array<f32, ${SA * BK}>; // (BK, BM + 1)
var<workgroup> Bs: array<f32, ${SB * BK}>; // (BK, BN + 1)
@compute @workgroup_size(${WX}, ${WY})
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) l: vec3u) {
  ${kRange}
  ${spec.prelude ?? ""}
  let m0 = wg.y * ${BM}u; let n0 = wg.x * ${BN}u;
  let li = l.y * ${WX}u + l.x;
  let live = bi < p.batch;
  ${col ? `let pre = colPre(n0 + li % ${BN}u);` : ""}
  ${r.map((i) => c.map((j) => `var c${i}_${j} = 0.0;`).join(" ")).join("\n  ")}
  for (var k0 = kBeg; k0 < kEnd; k0 += ${BK}u) {
    for (var e = 0u; e < ${(BM * BK) / T}u; e++) {
      let idx = li + e * ${T}u;
      ${loadA}
      let k = k0 + kk; let m = m0 + mm;
      var v = 0.0;
      if (live && k < kEnd && m < p.M) { v = tileA(bi, m, k); }
      As[kk * ${SA}u + mm] = v;
    }
    for (var e = 0u; e < ${(BN * BK) / T}u; e++) {
      let idx = li + e * ${T}u;
      ${loadB}
      let k = k0 + kk; let n = n0 + nn;
      var v = 0.0;
      if (live && k < kEnd && n < p.N) { v = ${
    col ? "tileBCol(bi, k, n, pre)" : "tileB(bi, k, n)"
  }; }
      Bs[kk * ${SB}u + nn] = v;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${BK}u; kk++) {
      let ar = kk * ${SA}u + l.y; let br = kk * ${SB}u + l.x;
      ${r.map((i) => `let a${i} = As[ar + ${i * WY}u];`).join(" ")}
      ${c.map((j) => `let b${j} = Bs[br + ${j * WX}u];`).join(" ")}
      ${
    r.map((i) => c.map((j) => `c${i}_${j} = fma(a${i}, b${j}, c${i}_${j});`).join(" ")).join(
      "\n      ",
    )
  }
    }
    workgroupBarrier();
  }
  if (!live) { return; }
  ${
    r.map((i) =>
      `if (m0 + l.y + ${i * WY}u < p.M) { let row = m0 + l.y + ${i * WY}u; ${
        c.map((j) =>
          `{ let n = n0 + l.x + ${j * WX}u; if (n < p.N) { ${store("row", "n", `c${i}_${j}`)} } }`
        ).join(" ")
      } }`
    ).join("\n  ")
  }
}`;
}

/**
 * The second pass of a split-K product ({@link tiledKernel} with `split`): out[i] = epilogue of the
 * sum of the nSplit slices of `parts` at i, added in slice order (deterministic, no atomics).
 */
export function splitSumKernel(): string {
  return `@group(0) @binding(0) var<storage, read> parts: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
struct P { total: u32, N: u32, nSplit: u32, alpha: f32, flags: u32 }
@group(0) @binding(3) var<uniform> p: P;
${EPILOGUE}
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(num_workgroups) nw: vec3u) {
  let i = g.x + g.y * nw.x * 256u;
  if (i >= p.total) { return; }
  var s = 0.0;
  for (var sp = 0u; sp < p.nSplit; sp++) { s += parts[sp * p.total + i]; }
  put(i, i % p.N, s);
}`;
}

/**
 * Matrix-vector kernel for tiny M (decode) from storage buffers (real GPUs; on llvmpipe only when
 * no texture path applies): memory bound, so each invocation streams one column of B (one row of
 * W when B is transposed) once and applies it to all MR rows of A. `vecK`: B transposed, A not,
 * K % 4 == 0, so four consecutive k are one vec4 (f32) or vec2<u32> (f16) load; else scalar loads.
 */
export function gemvKernel(f: KernelFlags, MR: number, vecK: boolean, WG = 64): string {
  const rows = [...Array(MR).keys()];
  if (!vecK) {
    return `${storageBindings(f)}
${loaders(f)}
${EPILOGUE}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = g.x; let bi = g.z;
  if (n >= p.N || bi >= p.batch) { return; }
  let bo = bi * p.sBb + n * p.sBn;
  ${rows.map((i) => `let ao${i} = bi * p.sAb + ${i}u * p.sAm; var s${i} = 0.0;`).join("\n  ")}
  for (var k = 0u; k < p.K; k++) {
    let bv = ldB(bo + k * p.sBk);
    ${rows.map((i) => `s${i} = fma(ldA(ao${i} + k * p.sAk), bv, s${i});`).join(" ")}
  }
  ${rows.map((i) => `put((bi * p.M + ${i}u) * p.N + n, n, s${i});`).join("\n  ")}
}`;
  }
  // Vector path (B transposed, A not, K % 4 == 0): a is read as vec4<f32>, b as vec4<f32> or
  // vec2<u32> (4 halves); sAk = sBk = 1, so every row start is a multiple of 4 elements.
  const binds = [
    `@group(0) @binding(0) var<storage, read> a: array<vec4<f32>>;`,
    `@group(0) @binding(1) var<storage, read> b: array<${f.bF16 ? "vec2<u32>" : "vec4<f32>"}>;`,
    tailBindings(STRIDE_PARAMS),
  ];
  const ldB4 = f.bF16
    ? `fn ldB4(i: u32) -> vec4f { let w = b[i]; return vec4f(unpack2x16float(w.x), unpack2x16float(w.y)); }`
    : `fn ldB4(i: u32) -> vec4f { return b[i]; }`;
  return `${binds.join("\n")}
${ldB4}
${EPILOGUE}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = g.x; let bi = g.z;
  if (n >= p.N || bi >= p.batch) { return; }
  let bo = (bi * p.sBb + n * p.sBn) / 4u;
  ${
    rows.map((i) => `let ao${i} = (bi * p.sAb + ${i}u * p.sAm) / 4u; var s${i} = vec4f(0.0);`).join(
      "\n  ",
    )
  }
  let K4 = p.K / 4u;
  for (var k4 = 0u; k4 < K4; k4++) {
    let bv = ldB4(bo + k4);
    ${rows.map((i) => `s${i} = fma(a[ao${i} + k4], bv, s${i});`).join(" ")}
  }
  ${
    rows.map((i) => `put((bi * p.M + ${i}u) * p.N + n, n, s${i}.x + s${i}.y + s${i}.z + s${i}.w);`)
      .join("\n  ")
  }
}`;
}

// ---------------------------------------------------------------------------------------------
// Texture path (llvmpipe). Mesa bounds-checks every storage-buffer load with a per-lane loop, but
// fetches rgba32float texels vectorised, so both operands are first packed into textures:
//   A texture: texel (k4, y, layer) = A[row, 4k4 .. 4k4+3], row = chunk*HA + y,
//              layer = bi*chunks + chunk (rows of one batch split into chunks of HA <= 16384 rows)
//   B texture: texel (t, k, layer)  = B[k, 4t .. 4t+3], layer = bi (or 0 when B is shared)
//   B texture, "u16" (a packed f16 weight): rgba32uint, texel (t, k) = B[k, 8t .. 8t+7] as 4 pairs
//              of halves: half the fetches and half the memory of the f32 layout.
// Padding texels (k >= K, row >= M, column >= N) hold zeros, so the main loop has no bounds checks.

/**
 * Operand textures are bound as read-only storage textures: llvmpipe's image-load path is ~15%
 * cheaper per texel than the sampled-texture path (no level-of-detail handling), measured at 1024^3.
 */
function texRead(format: string): string {
  return `texture_storage_2d_array<${format}, read>`;
}

/** Parameters of the pack kernels. */
export const PACK_PARAMS = `struct P {
  rows: u32, cols: u32, W: u32, H: u32, layers: u32, chunks: u32, HA: u32,
  s0: u32, sR: u32, sC: u32, b0: u32, off: u32,
}`;

/**
 * Writes a (rows, cols) strided matrix per batch into a texture array, 4 consecutive columns per
 * rgba32float texel (or 8 per rgba32uint texel as halves when `dstU16`). Rows of a batch are split
 * into `chunks` of HA rows, one layer each (B uses one chunk). Element (bi, r, c) is
 * `src[(b0 + bi)*s0 + off + r*sR + c*sC]`.
 */
export function packKernel(srcF16: boolean, dstU16 = false, vec = false): string {
  const per = dstU16 ? 8 : 4;
  // vec: the columns of a texel are contiguous f32 (sC == 1, everything a multiple of 4): read them
  // as vec4 loads, a quarter of the per-lane bounds-checked loads of the scalar path.
  const src = vec ? "vec4<f32>" : srcF16 ? "u32" : "f32";
  const ld = srcF16
    ? `fn ld(i: u32) -> f32 { return unpack2x16float(src[i >> 1u])[i & 1u]; }`
    : vec
    ? ""
    : `fn ld(i: u32) -> f32 { return src[i]; }`;
  const read = vec
    ? `let base = ((p.b0 + bi) * p.s0 + p.off + r * p.sR) / 4u;
    for (var q = 0u; q < ${per / 4}u; q++) {
      let c = g.x * ${per}u + q * 4u;
      if (c < p.cols) { let x = src[base + c / 4u]; for (var j = 0u; j < 4u; j++) { v[q * 4u + j] = x[j]; } }
    }`
    : `let base = (p.b0 + bi) * p.s0 + p.off + r * p.sR;
    for (var j = 0u; j < ${per}u; j++) {
      let c = g.x * ${per}u + j;
      if (c < p.cols) { v[j] = ld(base + c * p.sC); }
    }`;
  const store = dstU16
    ? `textureStore(dst, vec2u(g.x, g.y), g.z, vec4u(pack2x16float(vec2f(v[0], v[1])),
      pack2x16float(vec2f(v[2], v[3])), pack2x16float(vec2f(v[4], v[5])), pack2x16float(vec2f(v[6], v[7]))));`
    : `textureStore(dst, vec2u(g.x, g.y), g.z, vec4f(v[0], v[1], v[2], v[3]));`;
  return `@group(0) @binding(0) var<storage, read> src: array<${src}>;
@group(0) @binding(1) var dst: texture_storage_2d_array<${
    dstU16 ? "rgba32uint" : "rgba32float"
  }, write>;
${PACK_PARAMS}
@group(0) @binding(2) var<uniform> p: P;
${ld}
@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3u) {
  // g.x: texel column, g.y: row within the layer, g.z: layer
  if (g.x >= p.W || g.y >= p.H || g.z >= p.layers) { return; }
  let bi = g.z / p.chunks;
  let r = (g.z % p.chunks) * p.HA + g.y;
  var v: array<f32, ${per}>;
  if (r < p.rows) {
    ${read}
  }
  ${store}
}`;
}

/**
 * Pack of a transposed operand (sR == 1: rows are contiguous, columns sC apart; a Linear weight
 * [N, K] as B, or A^T): each invocation reads a 4x4 block as four vec4 loads along the rows and
 * writes four texels, where the scalar pack would issue sixteen lane-by-lane loads. Needs f32
 * source, s0, off and sC multiples of 4, and H a multiple of 4 (rows past `rows` read as zeros).
 */
export function packTKernel(): string {
  return `@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var dst: texture_storage_2d_array<rgba32float, write>;
${PACK_PARAMS}
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3u) {
  // g.x: texel column (columns 4x..4x+3), g.y: row quad within the layer, g.z: layer
  if (g.x >= p.W || g.y * 4u >= p.H || g.z >= p.layers) { return; }
  let bi = g.z / p.chunks;
  let r0 = (g.z % p.chunks) * p.HA + g.y * 4u;
  var v: array<vec4f, 4>; // v[j] = rows r0..r0+3 of column 4x+j
  for (var j = 0u; j < 4u; j++) {
    let c = g.x * 4u + j;
    if (c >= p.cols || r0 >= p.rows) { continue; }
    let i = (p.b0 + bi) * p.s0 + p.off + c * p.sC + r0;
    if (r0 + 4u <= p.rows) {
      v[j] = src[i / 4u];
    } else {
      // The last, partial quad: an aligned load, rows past the end zeroed.
      let w = src[i / 4u];
      for (var q = 0u; q < 4u; q++) { if (r0 + q < p.rows) { v[j][q] = w[q]; } }
    }
  }
  for (var q = 0u; q < 4u; q++) {
    textureStore(dst, vec2u(g.x, g.y * 4u + q), g.z, vec4f(v[0][q], v[1][q], v[2][q], v[3][q]));
  }
}`;
}

/** Parameters of the texture matmul. */
export const TEX_PARAMS = `struct P {
  M: u32, N: u32, K4: u32, NG: u32, RB: u32, batch: u32, chunks: u32, HA: u32,
  bLayered: u32, b0: u32, alpha: f32, flags: u32,
}`;

/** `put4(m, bi, t, v)`: stores columns 4t..4t+3 of row m (bounds-checked) through `put`. */
const PUT4 = `${EPILOGUE}
fn put4(m: u32, bi: u32, t: u32, v: vec4f) {
  if (m >= p.M) { return; }
  let n = t * 4u;
  let o = ((p.b0 + bi) * p.M + m) * p.N + n;
  for (var j = 0u; j < 4u; j++) { if (n + j < p.N) { put(o + j, n + j, v[j]); } }
}`;

/**
 * `put4` when N % 4 == 0 and `out` is bound as vec4s: a texel of C is in or out of range as a
 * whole, so one vec4 store (and one vec4 read to accumulate) per texel. Each storage access is a
 * lane-by-lane loop on llvmpipe; this quarters them and halves the kernel's compile time at 16x2.
 */
const PUT4_VEC = `fn put4(m: u32, bi: u32, t: u32, v: vec4f) {
  let n = t * 4u;
  if (m >= p.M || n >= p.N) { return; }
  var r = p.alpha * v;
  if ((p.flags & ${FLAG_BIAS}u) != 0u) { r += vec4f(bias[n], bias[n + 1u], bias[n + 2u], bias[n + 3u]); }
  let o = (((p.b0 + bi) * p.M + m) * p.N + n) / 4u;
  if ((p.flags & ${FLAG_ACC}u) != 0u) { r += out[o]; }
  out[o] = r;
}`;

/**
 * Rung 3 (llvmpipe): both operands from textures, R rows x 4*CB columns of C per invocation in
 * registers, no shared memory, no barriers, 1-D workgroups of 64. Invocation t of batch z owns B
 * texels cg + c*NG with cg = t % NG (lanes read adjacent texels), rows rb*R .. rb*R+R-1, rb = t / NG. Per k4 step it fetches R texels
 * of A and 4*CB of B (2*CB for u16) for 16*R*CB FMAs: texel fetches are the cost on llvmpipe (~70
 * cycles per 8 lanes), so R and CB are as large as the shape allows. `bU16`: B is the rgba32uint
 * half layout (CB even; each texel is two vec4 column blocks). `aT` / `bT`: the operand's texture is
 * its transpose (texel (m/4, k) of A, texel (k/4, n) of B), i.e. a plain copy of A stored (K,M) or
 * B stored (N,K) (a Linear weight): the same fetch count, no transposing pack. `vecOut`: N % 4 == 0,
 * `out` is bound as vec4s and each texel of C is one store.
 */
export function texKernel(
  R: number,
  CB: number,
  bU16 = false,
  aT = false,
  bT = false,
  vecOut = false,
  WG = 64,
): string {
  const rs = [...Array(R).keys()], cs = [...Array(CB).keys()];
  const binds = [
    `@group(0) @binding(0) var tA: ${texRead("rgba32float")};`,
    `@group(0) @binding(1) var tB: ${texRead(bU16 ? "rgba32uint" : "rgba32float")};`,
    vecOut
      ? `@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4f>;
${TEX_PARAMS}
@group(0) @binding(4) var<uniform> p: P;`
      : tailBindings(TEX_PARAMS),
  ];
  // In llvmpipe's SoA code every vec4 component is its own register, so regrouping fetched
  // components (the transposed layouts below) costs nothing: only the fetch count matters.
  const fmaRow = (r: number, c: number) =>
    `c${r}_${c} = fma(vec4f(a${r}.w), b3_${c}, fma(vec4f(a${r}.z), b2_${c}, fma(vec4f(a${r}.y), b1_${c}, fma(vec4f(a${r}.x), b0_${c}, c${r}_${c}))));`;
  // f32: column block c is texel cg + c*NG. u16: texel cg + (c/2)*NG holds blocks c (even) and c+1.
  const texel = (c: number) => bU16 ? `cg + ${c >> 1}u * p.NG` : `cg + ${c}u * p.NG`;
  const block = (c: number) => bU16 ? `(cg + ${c >> 1}u * p.NG) * 2u + ${c & 1}u` : texel(c);
  // b{i}_{c}: row k+i of B, columns of block c.
  let loadB: string;
  if (bU16) {
    loadB = cs.filter((c) => c % 2 === 0).map((c) =>
      [0, 1, 2, 3].map((j) =>
        `let w${j}_${c} = textureLoad(tB, vec2u(${texel(c)}, k + ${j}u), bL); ` +
        `let b${j}_${c} = vec4f(unpack2x16float(w${j}_${c}.x), unpack2x16float(w${j}_${c}.y)); ` +
        `let b${j}_${c + 1} = vec4f(unpack2x16float(w${j}_${c}.z), unpack2x16float(w${j}_${c}.w));`
      ).join("\n    ")
    ).join("\n    ");
  } else if (bT) {
    // B^T layout: texel (k4, n) = B[k..k+3, n]; fetch the block's 4 columns, regroup by k.
    loadB = cs.map((c) =>
      [0, 1, 2, 3].map((j) =>
        `let w${j}_${c} = textureLoad(tB, vec2u(k4, (${texel(c)}) * 4u + ${j}u), bL);`
      ).join(" ") + " " +
      [0, 1, 2, 3].map((i) =>
        `let b${i}_${c} = vec4f(w0_${c}[${i}], w1_${c}[${i}], w2_${c}[${i}], w3_${c}[${i}]);`
      ).join(" ")
    ).join("\n    ");
  } else {
    loadB = cs.map((c) =>
      [0, 1, 2, 3].map((j) =>
        `let b${j}_${c} = textureLoad(tB, vec2u(${texel(c)}, k + ${j}u), bL);`
      ).join(" ")
    ).join("\n    ");
  }
  // a{r}: row row0+r of A, columns k..k+3.
  const loadA = aT
    // A^T layout: texel (m4, k) = A[m..m+3, k]; R/4 texel columns x 4 rows of k, regrouped by row.
    ? [...Array(R / 4).keys()].map((q) =>
      [0, 1, 2, 3].map((i) =>
        `let t${q}_${i} = textureLoad(tA, vec2u(row0 / 4u + ${q}u, k + ${i}u), aL);`
      ).join(" ") + " " +
      [0, 1, 2, 3].map((u) =>
        `let a${4 * q + u} = vec4f(t${q}_0[${u}], t${q}_1[${u}], t${q}_2[${u}], t${q}_3[${u}]);`
      ).join(" ")
    ).join("\n    ")
    : rs.map((r) => `let a${r} = textureLoad(tA, vec2u(k4, ay + ${r}u), aL);`).join("\n    ");
  return `${binds.join("\n")}
${vecOut ? PUT4_VEC : PUT4}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  // One invocation per (column group, row block) of batch wg.z, column groups fastest.
  let t = (wg.x + wg.y * nwg.x) * ${WG}u + li;
  let cg = t % p.NG; let rb = t / p.NG; let bi = wg.z;
  if (rb >= p.RB || bi >= p.batch) { return; }
  let row0 = rb * ${R}u;
  let ay = row0 % p.HA;
  let aL = bi * p.chunks + row0 / p.HA;
  let bL = bi * p.bLayered;
  ${rs.map((r) => cs.map((c) => `var c${r}_${c} = vec4f(0.0);`).join(" ")).join("\n  ")}
  for (var k4 = 0u; k4 < p.K4; k4++) {
    let k = k4 * 4u;
    ${loadB}
    ${loadA}
    ${rs.map((r) => cs.map((c) => fmaRow(r, c)).join(" ")).join("\n    ")}
  }
  ${
    rs.map((r) => cs.map((c) => `put4(row0 + ${r}u, bi, ${block(c)}, c${r}_${c});`).join(" "))
      .join("\n  ")
  }
}`;
}

/** Parameters of the texture matrix-vector kernel. */
export const GEMV_TEX_PARAMS = `struct P {
  M: u32, N: u32, K: u32, KX: u32, NT: u32, k0: u32, alpha: f32, flags: u32,
}`;

/**
 * Matrix-vector product for a packed weight on llvmpipe (decode): each invocation owns one B
 * texel column (4 columns, or 8 for u16) and streams it down K once; the MR <= 4 rows of A come
 * from a uniform buffer (row m at float offset m*KX), whose loads llvmpipe turns into cheap gathers
 * where a storage load would loop over the lanes. Memory bound: one texel fetch per 4 (8) weights.
 * Handles texture rows k0 .. k0+K-1 (K is split into chunks that fit the uniform buffer).
 */
export function gemvTexKernel(MR: number, bU16: boolean, WG = 64): string {
  const rows = [...Array(MR).keys()];
  const halves = bU16 ? [0, 1] : [0];
  const binds = [
    `@group(0) @binding(0) var tB: ${texRead(bU16 ? "rgba32uint" : "rgba32float")};`,
    `@group(0) @binding(1) var<uniform> X: array<vec4f, 4096>;`,
    tailBindings(GEMV_TEX_PARAMS),
  ];
  const fetch = (k: string) =>
    bU16
      ? `let w = textureLoad(tB, vec2u(t, p.k0 + ${k}), 0); let w0 = vec4f(unpack2x16float(w.x), unpack2x16float(w.y)); let w1 = vec4f(unpack2x16float(w.z), unpack2x16float(w.w));`
      : `let w0 = textureLoad(tB, vec2u(t, p.k0 + ${k}), 0);`;
  const accum = (x: (m: number) => string) =>
    rows.map((m) =>
      halves.map((h) => `s${m}_${h} = fma(vec4f(${x(m)}), w${h}, s${m}_${h});`).join(" ")
    )
      .join(" ");
  const per = bU16 ? 8 : 4;
  return `${binds.join("\n")}
${EPILOGUE}
fn xs(i: u32) -> f32 { return X[i / 4u][i % 4u]; }
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let t = g.x;
  if (t >= p.NT) { return; }
  ${rows.map((m) => halves.map((h) => `var s${m}_${h} = vec4f(0.0);`).join(" ")).join("\n  ")}
  let K4 = p.K / 4u;
  for (var k4 = 0u; k4 < K4; k4++) {
    ${rows.map((m) => `let x${m} = X[(${m}u * p.KX) / 4u + k4];`).join(" ")}
    ${
    [0, 1, 2, 3].map((j) => `{ ${fetch(`k4 * 4u + ${j}u`)} ${accum((m) => `x${m}[${j}]`)} }`).join(
      "\n    ",
    )
  }
  }
  for (var k = K4 * 4u; k < p.K; k++) {
    ${fetch("k")} ${accum((m) => `xs(${m}u * p.KX + k)`)}
  }
  ${
    rows.map((m) =>
      halves.map((h) =>
        `for (var j = 0u; j < 4u; j++) { let n = t * ${per}u + ${
          h * 4
        }u + j; if (n < p.N) { put(${m}u * p.N + n, n, s${m}_${h}[j]); } }`
      ).join("\n  ")
    ).join("\n  ")
  }
}`;
}

/** Parameters of the row-major-weight matrix-vector kernel. */
export const GEMV_ROWS_PARAMS = `struct P {
  M: u32, N: u32, K: u32, KX: u32, HN: u32, t0: u32, alpha: f32, flags: u32,
}`;

/**
 * Matrix-vector product straight from a Linear weight W [N, K] copied as is into a texture (a
 * memcpy: texel (k/4, n % HN, n / HN) = W[n, k..k+3], or W[n, k..k+7] as halves for `bU16`), for
 * decode with weights that were not packed: invocation n streams row n of W (K % 8 == 0 here, so no
 * tail) against the MR <= 4 rows of A in the uniform buffer (row m at float offset m*KX).
 * Handles texel columns t0 .. t0 + K/per - 1 (K split into chunks that fit the uniform buffer).
 */
export function gemvRowsKernel(MR: number, bU16: boolean, WG = 64): string {
  const rows = [...Array(MR).keys()];
  const body = bU16
    ? `let w = textureLoad(tB, vec2u(p.t0 + k8, y), layer);
    let lo = vec4f(unpack2x16float(w.x), unpack2x16float(w.y));
    let hi = vec4f(unpack2x16float(w.z), unpack2x16float(w.w));
    ${
      rows.map((m) =>
        `s${m} = fma(X[(${m}u * p.KX) / 4u + 2u * k8], lo, fma(X[(${m}u * p.KX) / 4u + 2u * k8 + 1u], hi, s${m}));`
      ).join("\n    ")
    }`
    : `let w = textureLoad(tB, vec2u(p.t0 + k8, y), layer);
    ${rows.map((m) => `s${m} = fma(X[(${m}u * p.KX) / 4u + k8], w, s${m});`).join("\n    ")}`;
  return `@group(0) @binding(0) var tB: ${texRead(bU16 ? "rgba32uint" : "rgba32float")};
@group(0) @binding(1) var<uniform> X: array<vec4f, 4096>;
${tailBindings(GEMV_ROWS_PARAMS)}
${EPILOGUE}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = g.x;
  if (n >= p.N) { return; }
  let y = n % p.HN; let layer = n / p.HN;
  ${rows.map((m) => `var s${m} = vec4f(0.0);`).join(" ")}
  let T = p.K / ${bU16 ? 8 : 4}u;
  for (var k8 = 0u; k8 < T; k8++) {
    ${body}
  }
  ${rows.map((m) => `put(${m}u * p.N + n, n, s${m}.x + s${m}.y + s${m}.z + s${m}.w);`).join("\n  ")}
}`;
}

/** Column sums of a (M, N) matrix: out[n] (+)= sum_m x[m, n]. For the bias gradient. */
export function colSumKernel(acc: boolean): string {
  return `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
struct P { M: u32, N: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  let n = g.x;
  if (n >= p.N) { return; }
  var s = 0.0;
  for (var m = 0u; m < p.M; m++) { s += x[m * p.N + n]; }
  out[n] = ${acc ? "out[n] + s" : "s"};
}`;
}
