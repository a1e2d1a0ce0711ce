/**
 * Fused kernels of one decode step (one token, batch 1), so a layer costs 5 dispatches instead of
 * 16 (issue 11 item 2): {@link decodeQkv}, {@link decodeAttention}, {@link decodeLinearAdd} (o
 * projection), {@link decodeFfn}, {@link decodeLinearAdd} (down projection); the step ends with
 * {@link decodeNormLinear} (final norm + LM head). Small layers on llvmpipe take 2:
 * {@link decodeQkv} and {@link decodeTail} (attention, o projection, FFN and down projection in one
 * workgroup; there a dispatch costs ~40-50 us before any work, more than the `tiny` preset's whole
 * tail: its GPU-sampled decode 380 -> 462 tokens/s, `deno task bench --filter "gpu-sampled tiny"`).
 * - {@link decodeQkv}: RMSNorm of x, the q/k/v projections, RoPE (HF rotate-half: pairs d and
 *   d + hd/2 of each head) on q and k, and the KV-cache append of k and v at position `pos`.
 * - {@link decodeAttention}: attention over positions 0..pos of the cache, one workgroup per head
 *   (the split-K `attentionDecode` needs a second, combining dispatch).
 * - {@link decodeLinearAdd}: x += W a, the residual added in place by the projection itself (on
 *   llvmpipe, big weights go through matmul's gemv, which streams them faster).
 * - {@link decodeFfn}: RMSNorm of x, the gate and up projections and SwiGLU: act = silu(g) * u.
 * - {@link decodeNormLinear}: RMSNorm then one projection.
 * Every workgroup recomputes the row's rstd from x itself (x is one row of D floats), so no
 * normalized copy of x is ever written.
 *
 * Variants, chosen per adapter like the matmul's:
 * - `tex` (llvmpipe): weights read from matmul's {@link PackedWeight} textures (K rows of 4-column
 *   texels, or 8 halves), one invocation per 4 output columns looping over K (for q and k, 4 rotation
 *   pairs: 4 columns of each half of a head), x staged normalized in workgroup memory a chunk at a
 *   time, the cache written with texel stores. Needs packed weights, the "tex" KV layout and a head
 *   dimension that is a multiple of 8 (a group of 4 pairs is then one texel of each half).
 * - `buffer` (real GPUs; any head dimension): weights read from the f32/f16 tensors [out, in], one
 *   workgroup per output (per rotation pair for q and k) whose lanes stride over K and reduce; the
 *   cache is written in place ("buffer" KV layout) or through {@link kvWrite} ("tex").
 * The rotation's cos/sin for `pos` travel in the uniform parameters (the f32 table of
 * {@link ropeTables}, as {@link rope} uses).
 *
 * CPU references: {@link decodeQkvCpu}, {@link decodeFfnCpu}, {@link decodeNormLinearCpu},
 * {@link decodeLinearAddCpu} (composed from rmsnormCpu, a plain product, ropeCpu and swigluCpu);
 * decodeAttention is held to attention.ts's `attentionCpu`. Figures: tools/bench/decode.ts
 * (tokens/s and `dispatches_per_token`, fused and `fuse: false`).
 * @module
 */
import { type Gpu, grid, Params, type Tensor, WG_INDEX } from "@lvm/gpu";
import { attentionCpu, type KvBuffers, kvWrite } from "./attention.ts";
import { onlineStep, splitMerge } from "./_merge.ts";
import { matmul, PackedWeight } from "./matmul.ts";
import { rmsnormCpu } from "./rmsnorm.ts";
import { ropeCpu, ropeTables } from "./rope.ts";
import { swigluCpu } from "./swiglu.ts";

/** Kernel variants of the fused decode kernels (see the module doc). */
export type DecodeFusedVariant = "tex" | "buffer";

/** A weight the fused kernels read: an f32/f16 Linear weight [out, in] or its packed copy. */
export type DecodeWeight = Tensor | PackedWeight;

// ---------------------------------------------------------------------------------------------
// CPU references.

/** y (N) = W x for W [N, K] row-major (a Linear weight) and x (K), f64 sums rounded to f32. */
function gemvCpu(w: ArrayLike<number>, x: ArrayLike<number>, N: number, K: number): Float32Array {
  const y = new Float32Array(N);
  for (let n = 0; n < N; n++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += w[n * K + k] * x[k];
    y[n] = s;
  }
  return y;
}

/**
 * CPU reference of {@link decodeQkv}: h = rmsnorm(x) * norm; q = rope(Wq h), k = rope(Wk h),
 * v = Wv h at position `pos`. x (D), Wq [H*hd, D], Wk and Wv [KVH*hd, D]. Returns q (H*hd) and the
 * k, v (KVH*hd) the cache receives.
 */
export function decodeQkvCpu(
  x: ArrayLike<number>,
  norm: ArrayLike<number>,
  w: { q: ArrayLike<number>; k: ArrayLike<number>; v: ArrayLike<number> },
  o: { heads: number; kvHeads: number; headDim: number; pos: number; eps?: number; theta?: number },
): { q: Float32Array; k: Float32Array; v: Float32Array } {
  const D = x.length, { heads: H, kvHeads: KVH, headDim: hd, pos } = o;
  const h = rmsnormCpu(x, norm, D, o.eps ?? 1e-6).y;
  const ro = { theta: o.theta ?? 10000, posOffset: pos };
  return {
    q: ropeCpu(gemvCpu(w.q, h, H * hd, D), 1, H, hd, ro),
    k: ropeCpu(gemvCpu(w.k, h, KVH * hd, D), 1, KVH, hd, ro),
    v: gemvCpu(w.v, h, KVH * hd, D),
  };
}

/** CPU reference of {@link decodeFfn}: silu(Wg h) * (Wu h), h = rmsnorm(x) * norm; W [F, D]. */
export function decodeFfnCpu(
  x: ArrayLike<number>,
  norm: ArrayLike<number>,
  w: { gate: ArrayLike<number>; up: ArrayLike<number> },
  F: number,
  eps = 1e-6,
): Float32Array {
  const D = x.length;
  const h = rmsnormCpu(x, norm, D, eps).y;
  return swigluCpu(gemvCpu(w.gate, h, F, D), gemvCpu(w.up, h, F, D));
}

/** CPU reference of {@link decodeNormLinear}: (rmsnorm(x) * norm) W^T for W [N, D]. */
export function decodeNormLinearCpu(
  x: ArrayLike<number>,
  norm: ArrayLike<number>,
  w: ArrayLike<number>,
  N: number,
  eps = 1e-6,
): Float32Array {
  return gemvCpu(w, rmsnormCpu(x, norm, x.length, eps).y, N, x.length);
}

/** CPU reference of {@link decodeLinearAdd}: out (N) + W a for W [N, K] and a (K). */
export function decodeLinearAddCpu(
  out: ArrayLike<number>,
  w: ArrayLike<number>,
  a: ArrayLike<number>,
): Float32Array {
  const N = out.length, y = gemvCpu(w, a, N, a.length);
  return y.map((v, n) => v + out[n]);
}

/**
 * CPU reference of {@link decodeTail}: x + att Wo^T (att: attention of q over the cached k and v,
 * positions 0..pos, given as (pos+1, KVH, hd) rows), then that plus the SwiGLU FFN of its RMSNorm.
 */
export function decodeTailCpu(
  x: ArrayLike<number>,
  q: ArrayLike<number>,
  cache: { k: ArrayLike<number>; v: ArrayLike<number>; KVH: number; hd: number; pos: number },
  norm: ArrayLike<number>,
  w: {
    o: ArrayLike<number>;
    gate: ArrayLike<number>;
    up: ArrayLike<number>;
    down: ArrayLike<number>;
  },
  F: number,
  eps = 1e-6,
): Float32Array {
  const { KVH, hd, pos } = cache;
  const H = q.length / hd;
  const att = attentionCpu(q, cache.k, cache.v, {
    B: 1,
    Tq: 1,
    H,
    KVH,
    D: hd,
    Tk: pos + 1,
    qStart: pos,
  }).out;
  const x1 = decodeLinearAddCpu(x, w.o, att);
  return decodeLinearAddCpu(x1, w.down, decodeFfnCpu(x1, norm, w, F, eps));
}

// ---------------------------------------------------------------------------------------------
// WGSL.

/** Lanes per workgroup. 32 spreads the few output groups of a small model over both cores. */
const WG = 32;
/** Texel rows (4 values of x each) staged in workgroup memory at a time by the tex kernels. */
const KC4 = 256;

/** rstd of x (D) by a workgroup tree reduction of `L` lanes; leaves `rstd` in scope. Needs `red`. */
const rstdOf = (L: number) =>
  `var ss = 0.0;
  for (var i = li; i < p.D; i += ${L}u) { let v = x[i]; ss = fma(v, v, ss); }
  red[li] = ss;
  workgroupBarrier();
  for (var s = ${L / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] += red[li + s]; }
    workgroupBarrier();
  }
  let rstd = inverseSqrt(red[0] / f32(p.D) + p.eps);`;
const RSTD = rstdOf(WG);

/** Stages texel rows c0.. of y = norm * (x * rstd) in `xs` (zeros past D), between barriers. */
const stageOf = (L: number) =>
  `workgroupBarrier();
    for (var i = li; i < n4; i += ${L}u) {
      var v = vec4f(0.0);
      for (var e = 0u; e < 4u; e++) {
        let k = (c0 + i) * 4u + e;
        if (k < p.D) { v[e] = g[k] * (x[k] * rstd); }
      }
      xs[i] = v;
    }
    workgroupBarrier();`;
const STAGE = stageOf(WG);

/** WGSL fn `f<name>(col4, k) -> vec4f`: columns 4*col4.. of row k of a packed weight texture. */
function texFetch(name: string, u16: boolean, st: boolean): string {
  const lod = st ? "" : ", 0"; // a storage texture has no mip level
  if (!u16) {
    return `fn f${name}(c: u32, k: u32) -> vec4f { return textureLoad(${name}, vec2u(c, k), 0${lod}); }`;
  }
  return `fn f${name}(c: u32, k: u32) -> vec4f {
  let w = textureLoad(${name}, vec2u(c / 2u, k), 0${lod});
  let h = select(w.xy, w.zw, (c & 1u) == 1u);
  return vec4f(unpack2x16float(h.x), unpack2x16float(h.y));
}`;
}

/** Accumulates the staged chunk into `s<acc>` from the weights' columns: one statement set per k. */
function texLoop(terms: [string, string, string][]): string {
  const body = [0, 1, 2, 3].map((e) =>
    `{ let k = (c0 + i) * 4u + ${e}u; ${
      terms.map(([acc, w, c]) => `${acc} = fma(vec4f(xv[${e}]), f${w}(${c}, k), ${acc});`).join(" ")
    } }`
  ).join("\n        ");
  return `for (var i = 0u; i < n4; i++) {
        let xv = xs[i];
        ${body}
      }`;
}

/**
 * A packed weight's binding: a read-only storage texture (what matmul's llvmpipe kernels read;
 * llvmpipe fetches it faster than a sampled one) or, where the adapter's 4 storage textures per
 * stage are taken, a sampled texture.
 */
function texDecl(name: string, binding: number, u16: boolean, st: boolean): string {
  const type = st
    ? `texture_storage_2d_array<${u16 ? "rgba32uint" : "rgba32float"}, read>`
    : `texture_2d_array<${u16 ? "u32" : "f32"}>`;
  return `@group(0) @binding(${binding}) var ${name}: ${type};`;
}

/** Uniform parameters of the q/k/v kernels: sizes, then cos and sin of `pos` (hd/2 each). */
function qkvParams(C4: number): string {
  return `struct P { D: u32, pos: u32, eps: f32, kvBase: u32,
           cosv: array<vec4f, ${C4}>, sinv: array<vec4f, ${C4}> }`;
}

/**
 * `vSt`: Wv is read as a storage texture too (five storage textures in one stage: lavapipe allows
 * 36, WebGPU guarantees 4), else as a sampled one, which llvmpipe fetches more slowly.
 */
function qkvTexKernel(
  H: number,
  KVH: number,
  hd: number,
  u16: boolean[],
  vSt: boolean,
  L = WG,
): string {
  const G = hd / 8, Q4 = hd / 4, HALF4 = hd / 8;
  const NQ = H * G, NK = KVH * G, NV = KVH * Q4;
  return `@group(0) @binding(0) var<storage, read> x: array<f32>; // (D)
@group(0) @binding(1) var<storage, read> g: array<f32>; // (D)
@group(0) @binding(2) var<storage, read_write> q: array<vec4f>; // (H*hd/4)
${texDecl("wq", 3, u16[0], true)}
${texDecl("wk", 4, u16[1], true)}
${texDecl("wv", 5, u16[2], vSt)}
@group(0) @binding(6) var kc: texture_storage_2d_array<rgba32float, write>;
@group(0) @binding(7) var vc: texture_storage_2d_array<rgba32float, write>;
${qkvParams(Math.ceil(hd / 8))}
@group(0) @binding(8) var<uniform> p: P;
${texFetch("wq", u16[0], true)}
${texFetch("wk", u16[1], true)}
${texFetch("wv", u16[2], vSt)}
var<workgroup> xs: array<vec4f, ${KC4}>;
var<workgroup> red: array<f32, ${L}>;

@compute @workgroup_size(${L})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let u = ${WG_INDEX} * ${L}u + li;
  ${rstdOf(L)}
  // Role of this invocation: 0 q / 1 k (4 rotation pairs: texel columns ca and cb = ca + hd/8),
  // 2 v (texel column ca), 3 idle (still helps stage x).
  var role = 3u;
  var ca = 0u;
  if (u < ${NQ}u) {
    role = 0u;
    ca = (u / ${G}u) * ${Q4}u + u % ${G}u;
  } else if (u < ${NQ + NK}u) {
    role = 1u;
    let t = u - ${NQ}u;
    ca = (t / ${G}u) * ${Q4}u + t % ${G}u;
  } else if (u < ${NQ + NK + NV}u) {
    role = 2u;
    ca = u - ${NQ + NK}u;
  }
  let cb = ca + ${HALF4}u;
  var sa = vec4f(0.0);
  var sb = vec4f(0.0);
  let KT = (p.D + 3u) / 4u;
  for (var c0 = 0u; c0 < KT; c0 += ${KC4}u) {
    let n4 = min(${KC4}u, KT - c0);
    ${stageOf(L)}
    if (role == 0u) {
      ${texLoop([["sa", "wq", "ca"], ["sb", "wq", "cb"]])}
    } else if (role == 1u) {
      ${texLoop([["sa", "wk", "ca"], ["sb", "wk", "cb"]])}
    } else if (role == 2u) {
      ${texLoop([["sa", "wv", "ca"]])}
    }
  }
  if (role < 2u) {
    let i4 = ca % ${Q4}u; // pairs 4*i4.. of the head
    let c = p.cosv[i4];
    let s = p.sinv[i4];
    let ra = sa * c - sb * s;
    let rb = sb * c + sa * s;
    if (role == 0u) {
      q[ca] = ra;
      q[cb] = rb;
    } else {
      textureStore(kc, vec2u(ca, p.pos), 0, ra);
      textureStore(kc, vec2u(cb, p.pos), 0, rb);
    }
  } else if (role == 2u) {
    textureStore(vc, vec2u(ca, p.pos), 0, sa);
  }
}`;
}

/** WGSL fn `l<name>(i) -> f32`: element i of a storage weight (f16: two halves per u32). */
function bufFetch(name: string, f16: boolean): string {
  return f16
    ? `fn l${name}(i: u32) -> f32 { return unpack2x16float(${name}[i >> 1u])[i & 1u]; }`
    : `fn l${name}(i: u32) -> f32 { return ${name}[i]; }`;
}

function bufDecl(name: string, binding: number, f16: boolean): string {
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<${
    f16 ? "u32" : "f32"
  }>;`;
}

/** Lanes' partial sums (ss, sa, sb) reduced over the workgroup into red[0]. */
const REDUCE3 = `red3[li] = vec3f(ss, sa, sb);
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { red3[li] += red3[li + s]; }
    workgroupBarrier();
  }`;

function qkvBufKernel(H: number, KVH: number, hd: number, f16: boolean[]): string {
  const HALF = hd / 2, NQ = H * HALF, NK = KVH * HALF, NV = KVH * hd;
  const loop = (w: string, two: boolean) =>
    `for (var k = li; k < p.D; k += ${WG}u) {
      let xv = x[k];
      ss = fma(xv, xv, ss);
      let y = g[k] * xv;
      sa = fma(y, l${w}(ra * p.D + k), sa);${
      two ? `\n      sb = fma(y, l${w}(rb * p.D + k), sb);` : ""
    }
    }`;
  return `@group(0) @binding(0) var<storage, read> x: array<f32>; // (D)
@group(0) @binding(1) var<storage, read> g: array<f32>; // (D)
@group(0) @binding(2) var<storage, read_write> q: array<f32>; // (H*hd)
${bufDecl("wq", 3, f16[0])}
${bufDecl("wk", 4, f16[1])}
${bufDecl("wv", 5, f16[2])}
@group(0) @binding(6) var<storage, read_write> kc: array<f32>; // (maxT, KVH, hd) or (KVH, hd)
@group(0) @binding(7) var<storage, read_write> vc: array<f32>;
${qkvParams(Math.ceil(HALF / 4))}
@group(0) @binding(8) var<uniform> p: P;
${bufFetch("wq", f16[0])}
${bufFetch("wk", f16[1])}
${bufFetch("wv", f16[2])}
var<workgroup> red3: array<vec3f, ${WG}>;

fn cosAt(i: u32) -> f32 { return p.cosv[i / 4u][i % 4u]; }
fn sinAt(i: u32) -> f32 { return p.sinv[i / 4u][i % 4u]; }

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let w = ${WG_INDEX}; // one output: a q or k rotation pair (ra, rb), or a v row (ra)
  if (w >= ${NQ + NK + NV}u) { return; }
  var ra = 0u;
  var i = 0u; // pair index within the head
  var role = 0u;
  if (w < ${NQ}u) {
    i = w % ${HALF}u;
    ra = (w / ${HALF}u) * ${hd}u + i;
  } else if (w < ${NQ + NK}u) {
    role = 1u;
    i = (w - ${NQ}u) % ${HALF}u;
    ra = ((w - ${NQ}u) / ${HALF}u) * ${hd}u + i;
  } else {
    role = 2u;
    ra = w - ${NQ + NK}u;
  }
  let rb = ra + ${HALF}u;
  var ss = 0.0;
  var sa = 0.0;
  var sb = 0.0;
  if (role == 0u) {
    ${loop("wq", true)}
  } else if (role == 1u) {
    ${loop("wk", true)}
  } else {
    ${loop("wv", false)}
  }
  ${REDUCE3}
  if (li != 0u) { return; }
  let t = red3[0];
  let rstd = inverseSqrt(t.x / f32(p.D) + p.eps);
  let a = t.y * rstd;
  let b = t.z * rstd;
  let c = cosAt(i);
  let s = sinAt(i);
  if (role == 0u) {
    q[ra] = a * c - b * s;
    q[rb] = b * c + a * s;
  } else if (role == 1u) {
    kc[p.kvBase + ra] = a * c - b * s;
    kc[p.kvBase + rb] = b * c + a * s;
  } else {
    vc[p.kvBase + ra] = a;
  }
}`;
}

const SILU = (a: string, b: string) => `${a} / (1.0 + exp(-${a})) * ${b}`;

/** decodeFfn's kernel (two weights, SwiGLU), or decodeNormLinear's (one weight) when u16 has one flag. */
function ffnTexKernel(u16: boolean[]): string {
  const two = u16.length === 2;
  return `@group(0) @binding(0) var<storage, read> x: array<f32>; // (D)
@group(0) @binding(1) var<storage, read> g: array<f32>; // (D)
@group(0) @binding(2) var<storage, read_write> act: array<f32>; // (F)
${texDecl("wg", 3, u16[0], true)}
${two ? texDecl("wu", 4, u16[1], true) : ""}
struct P { D: u32, F: u32, eps: f32 }
@group(0) @binding(${two ? 5 : 4}) var<uniform> p: P;
${texFetch("wg", u16[0], true)}
${two ? texFetch("wu", u16[1], true) : ""}
var<workgroup> xs: array<vec4f, ${KC4}>;
var<workgroup> red: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let ca = ${WG_INDEX} * ${WG}u + li; // texel column: outputs 4*ca..4*ca+3
  ${RSTD}
  let live = ca * 4u < p.F;
  var sa = vec4f(0.0);
  var sb = vec4f(0.0);
  let KT = (p.D + 3u) / 4u;
  for (var c0 = 0u; c0 < KT; c0 += ${KC4}u) {
    let n4 = min(${KC4}u, KT - c0);
    ${STAGE}
    if (live) {
      ${texLoop(two ? [["sa", "wg", "ca"], ["sb", "wu", "ca"]] : [["sa", "wg", "ca"]])}
    }
  }
  for (var e = 0u; e < 4u; e++) {
    let n = ca * 4u + e;
    if (n < p.F) { let a = sa[e]; let b = sb[e]; act[n] = ${two ? SILU("a", "b") : "a"}; }
  }
}`;
}

/** The buffer variant of {@link ffnTexKernel} (one flag: decodeNormLinear's). */
function ffnBufKernel(f16: boolean[]): string {
  const two = f16.length === 2;
  return `@group(0) @binding(0) var<storage, read> x: array<f32>; // (D)
@group(0) @binding(1) var<storage, read> g: array<f32>; // (D)
@group(0) @binding(2) var<storage, read_write> act: array<f32>; // (F)
${bufDecl("wg", 3, f16[0])}
${two ? bufDecl("wu", 4, f16[1]) : ""}
struct P { D: u32, F: u32, eps: f32 }
@group(0) @binding(${two ? 5 : 4}) var<uniform> p: P;
${bufFetch("wg", f16[0])}
${two ? bufFetch("wu", f16[1]) : ""}
var<workgroup> red3: array<vec3f, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let n = ${WG_INDEX}; // one output of F
  if (n >= p.F) { return; }
  var ss = 0.0;
  var sa = 0.0;
  var sb = 0.0;
  for (var k = li; k < p.D; k += ${WG}u) {
    let xv = x[k];
    ss = fma(xv, xv, ss);
    let y = g[k] * xv;
    sa = fma(y, lwg(n * p.D + k), sa);
    ${two ? "sb = fma(y, lwu(n * p.D + k), sb);" : ""}
  }
  ${REDUCE3}
  if (li != 0u) { return; }
  let t = red3[0];
  let rstd = inverseSqrt(t.x / f32(p.D) + p.eps);
  let a = t.y * rstd;
  let b = t.z * rstd;
  act[n] = ${two ? SILU("a", "b") : "a"};
}`;
}

/** Lanes of {@link decodeLinearAdd}'s tex kernel per output texel column (they split K). */
const KPARTS = 4;
/** Texel columns per workgroup of that kernel. */
const LIN_COLS = 8;
/** Weights (N*K) from which {@link decodeLinearAdd} on llvmpipe uses matmul's gemv instead. */
const LIN_GEMV_FROM = 1 << 18;

function linearAddTexKernel(u16: boolean): string {
  const L = LIN_COLS * KPARTS;
  return `@group(0) @binding(0) var<storage, read> a: array<f32>; // (K)
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (N), added into
${texDecl("w", 2, u16, true)}
struct P { K: u32, N: u32 }
@group(0) @binding(3) var<uniform> p: P;
${texFetch("w", u16, true)}
var<workgroup> xs: array<vec4f, ${KC4}>;
var<workgroup> part: array<vec4f, ${L}>;

@compute @workgroup_size(${L})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let ca = ${WG_INDEX} * ${LIN_COLS}u + li % ${LIN_COLS}u; // texel column: outputs 4*ca..
  let kp = li / ${LIN_COLS}u; // which part of each staged chunk this lane sums
  let live = ca * 4u < p.N;
  var sa = vec4f(0.0);
  let KT = (p.K + 3u) / 4u;
  for (var c0 = 0u; c0 < KT; c0 += ${KC4}u) {
    let n4 = min(${KC4}u, KT - c0);
    workgroupBarrier();
    for (var i = li; i < n4; i += ${L}u) {
      var v = vec4f(0.0);
      for (var e = 0u; e < 4u; e++) {
        let k = (c0 + i) * 4u + e;
        if (k < p.K) { v[e] = a[k]; }
      }
      xs[i] = v;
    }
    workgroupBarrier();
    if (live) {
      let per = (n4 + ${KPARTS - 1}u) / ${KPARTS}u;
      let i1 = min(n4, (kp + 1u) * per);
      for (var i = kp * per; i < i1; i++) {
        let xv = xs[i];
        ${
    [0, 1, 2, 3].map((e) =>
      `{ let k = (c0 + i) * 4u + ${e}u; sa = fma(vec4f(xv[${e}]), fw(ca, k), sa); }`
    ).join("\n        ")
  }
      }
    }
  }
  part[li] = sa;
  workgroupBarrier();
  if (kp != 0u || !live) { return; }
  var s = sa;
  for (var j = 1u; j < ${KPARTS}u; j++) { s += part[j * ${LIN_COLS}u + li]; }
  for (var e = 0u; e < 4u; e++) {
    let n = ca * 4u + e;
    if (n < p.N) { out[n] = out[n] + s[e]; }
  }
}`;
}

function linearAddBufKernel(f16: boolean): string {
  return `@group(0) @binding(0) var<storage, read> a: array<f32>; // (K)
@group(0) @binding(1) var<storage, read_write> out: array<f32>; // (N), added into
${bufDecl("w", 2, f16)}
struct P { K: u32, N: u32 }
@group(0) @binding(3) var<uniform> p: P;
${bufFetch("w", f16)}
var<workgroup> red: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let n = ${WG_INDEX}; // one output of N
  if (n >= p.N) { return; }
  var s = 0.0;
  for (var k = li; k < p.K; k += ${WG}u) { s = fma(a[k], lw(n * p.K + k), s); }
  red[li] = s;
  workgroupBarrier();
  for (var h = ${WG / 2}u; h > 0u; h >>= 1u) {
    if (li < h) { red[li] += red[li + h]; }
    workgroupBarrier();
  }
  if (li == 0u) { out[n] = out[n] + red[0]; }
}`;
}

/** Lanes of {@link decodeAttention}'s workgroup (one per head) for head dims up to 64 / 128. */
const ATT_LANES = (U: number) => (U <= 16 ? 32 : 16);

function attentionKernel(H: number, KVH: number, hd: number, tex: boolean): string {
  const U = Math.ceil(hd / 4), L = ATT_LANES(U), rep = H / KVH;
  const vec = hd % 4 === 0; // buffer layout: rows of whole vec4s
  const kvDecl = tex
    ? `@group(0) @binding(1) var kt: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var vt: texture_storage_2d_array<rgba32float, read>;`
    : `@group(0) @binding(1) var<storage, read> kb: array<${
      vec ? "vec4f" : "f32"
    }>; // (maxT, KVH, hd)
@group(0) @binding(2) var<storage, read> vb: array<${vec ? "vec4f" : "f32"}>;`;
  // Texel d of key/value j of this head's group: a texel load, or 4 (fewer at the end) floats.
  const ld = (n: "k" | "v", d: number) =>
    tex
      ? `textureLoad(${n}t, vec2u(c0 + ${d}u, j), 0)`
      : vec
      ? `${n}b[o / 4u + ${d}u]`
      : `vec4f(${
        [0, 1, 2, 3].map((e) => (4 * d + e < hd ? `${n}b[o + ${4 * d + e}u]` : "0.0")).join(", ")
      })`;
  const us = (f: (d: number) => string, sep = "\n  ") => [...Array(U).keys()].map(f).join(sep);
  return `@group(0) @binding(0) var<storage, read> q: array<f32>; // (H, hd)
${kvDecl}
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (H, hd)
struct P { keys: u32, scaleLog2: f32 }
@group(0) @binding(4) var<uniform> p: P;
var<workgroup> ml: array<vec2f, ${L}>;
var<workgroup> accs: array<vec4f, ${L * U}>;

@compute @workgroup_size(${L})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u) {
  let h = wg.x;
  let grp = h / ${rep}u; // this head's KV group
  let c0 = grp * ${U}u; // its first texel column (tex layout)
  let qo = h * ${hd}u;
  ${us((d) => `var q${d} = vec4f(0.0);`, " ")}
  ${
    us((d) =>
      [0, 1, 2, 3].filter((e) => 4 * d + e < hd).map((e) =>
        `q${d}[${e}] = q[qo + ${4 * d + e}u] * p.scaleLog2;`
      ).join(" ")
    )
  }
  ${us((d) => `var a${d} = vec4f(0.0);`, " ")}
  var m = -1.0e30;
  var l = 0.0;
  for (var j = li; j < p.keys; j += ${L}u) {
    let o = (j * ${KVH}u + grp) * ${hd}u; // row of key j (buffer layout)
    var x = vec4f(0.0);
    ${us((d) => `x = fma(q${d}, ${ld("k", d)}, x);`, "\n    ")}
    let sc = x.x + x.y + x.z + x.w;
    ${onlineStep(U, "m", "l", (d) => `a${d}`, (d) => ld("v", d))}
  }
  ml[li] = vec2f(m, l);
  ${us((d) => `accs[li * ${U}u + ${d}u] = a${d};`)}
  workgroupBarrier();
  // Lanes that saw no key have l = 0 and add nothing; lane 0 always sees key 0.
  var M = -1.0e30;
  for (var s = 0u; s < ${L}u; s++) { M = max(M, ml[s].x); }
  var Ls = 0.0;
  for (var s = 0u; s < ${L}u; s++) { Ls += exp2(ml[s].x - M) * ml[s].y; }
  for (var d = li; d < ${U}u; d += ${L}u) {
    var acc = vec4f(0.0);
    for (var s = 0u; s < ${L}u; s++) { acc = fma(vec4f(exp2(ml[s].x - M)), accs[s * ${U}u + d], acc); }
    acc = acc / Ls;
    for (var e = 0u; e < 4u; e++) {
      if (d * 4u + e < ${hd}u) { out[qo + d * 4u + e] = acc[e]; }
    }
  }
}`;
}

/** Shape of {@link decodeTail}'s kernel: sizes baked in, the lanes per head and the workgroup. */
export interface DecodeTailShape {
  H: number;
  KVH: number;
  hd: number;
  D: number;
  F: number;
  /** Lanes per head (a power of two) and workgroup lanes (H * S). */
  S: number;
  WG: number;
  u16: boolean[];
}

/**
 * {@link decodeTail}'s kernel: one workgroup does the whole rest of a layer, its phases separated
 * by barriers: attention (S lanes per head, each walking every S-th cached position with an online
 * softmax, merged through workgroup memory), x += att Wo^T, RMSNorm, SwiGLU of the gate and up
 * projections, x += act Wdown^T. Every intermediate (att, x, the normalized row, act) stays in
 * workgroup memory; the weights are packed textures (K rows of 4-column texels).
 */
function tailKernel(t: DecodeTailShape): string {
  const { H, KVH, hd, D, F, S, WG, u16 } = t;
  const U = hd / 4, D4 = D / 4, F4 = F / 4, A4 = (H * hd) / 4, rep = H / KVH;
  const us = (f: (d: number) => string, sep = "\n  ") => [...Array(U).keys()].map(f).join(sep);
  const merge = splitMerge(WG, S, U, [us((d) => `a0_${d}`, ",").split(",")], true);
  const ws = ["wo", "wg", "wu", "wd"];
  // s<acc> += row k4 (4 values of `src`) times the weights' columns c: 4 texel fetches per weight.
  const dot4 = (src: string, terms: [string, string][]) =>
    `let sv = ${src}[k4];
      ${
      [0, 1, 2, 3].map((e) =>
        `{ let k = k4 * 4u + ${e}u; ${
          terms.map(([acc, w]) => `${acc} = fma(vec4f(sv[${e}]), f${w}(c, k), ${acc});`).join(" ")
        } }`
      ).join("\n      ")
    }`;
  return `@group(0) @binding(0) var<storage, read> q: array<f32>; // (H*hd)
@group(0) @binding(1) var kt: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(2) var vt: texture_storage_2d_array<rgba32float, read>;
@group(0) @binding(3) var<storage, read_write> x: array<vec4f>; // (D), updated in place
@group(0) @binding(4) var<storage, read> g: array<vec4f>; // (D): the FFN's RMSNorm weight
${ws.map((w, i) => texDecl(w, 5 + i, u16[i], true)).join("\n")}
struct P { keys: u32, scaleLog2: f32, eps: f32 }
@group(0) @binding(9) var<uniform> p: P;
${ws.map((w, i) => texFetch(w, u16[i], true)).join("\n")}
${merge.decl}
var<workgroup> att: array<vec4f, ${A4}>;
var<workgroup> xs: array<vec4f, ${D4}>;
var<workgroup> hs: array<vec4f, ${D4}>;
var<workgroup> acts: array<vec4f, ${F4}>;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32) {
  // Attention: head h takes lanes h*S .. h*S+S-1; lane sl walks keys sl, sl+S, ...
  let h = li / ${S}u;
  let sl = li % ${S}u;
  let c0 = (h / ${rep}u) * ${U}u; // the head's KV group: its first texel column
  ${
    us((d) =>
      `let q${d} = vec4f(${
        [0, 1, 2, 3].map((e) => `q[h * ${hd}u + ${4 * d + e}u]`).join(", ")
      }) * p.scaleLog2;`
    )
  }
  ${us((d) => `var a0_${d} = vec4f(0.0);`, " ")}
  var m0 = -1.0e30;
  var l0 = 0.0;
  for (var j = sl; j < p.keys; j += ${S}u) {
    var s = vec4f(0.0);
    ${us((d) => `s = fma(q${d}, textureLoad(kt, vec2u(c0 + ${d}u, j), 0), s);`, "\n    ")}
    let sc = s.x + s.y + s.z + s.w;
    ${
    onlineStep(U, "m0", "l0", (d) => `a0_${d}`, (d) => `textureLoad(vt, vec2u(c0 + ${d}u, j), 0)`)
  }
  }
  ${merge.body}
  if (sl == 0u) {
    let inv = 1.0 / l0;
    ${us((d) => `att[h * ${U}u + ${d}u] = a0_${d} * inv;`)}
  }
  for (var i = li; i < ${D4}u; i += ${WG}u) { xs[i] = x[i]; }
  workgroupBarrier();
  // x += att Wo^T
  for (var c = li; c < ${D4}u; c += ${WG}u) {
    var sa = vec4f(0.0);
    for (var k4 = 0u; k4 < ${A4}u; k4++) {
      ${dot4("att", [["sa", "wo"]])}
    }
    xs[c] += sa;
  }
  workgroupBarrier();
  // RMSNorm of the new x (every lane sums the row itself: no reduction barriers)
  var ss = 0.0;
  for (var i = 0u; i < ${D4}u; i++) { ss += dot(xs[i], xs[i]); }
  let rstd = inverseSqrt(ss / ${D}.0 + p.eps);
  for (var i = li; i < ${D4}u; i += ${WG}u) { hs[i] = g[i] * (xs[i] * rstd); }
  workgroupBarrier();
  // act = silu(h Wg^T) * (h Wu^T)
  for (var c = li; c < ${F4}u; c += ${WG}u) {
    var sa = vec4f(0.0);
    var sb = vec4f(0.0);
    for (var k4 = 0u; k4 < ${D4}u; k4++) {
      ${dot4("hs", [["sa", "wg"], ["sb", "wu"]])}
    }
    acts[c] = ${SILU("sa", "sb")};
  }
  workgroupBarrier();
  // x += act Wdown^T, written back
  for (var c = li; c < ${D4}u; c += ${WG}u) {
    var sa = vec4f(0.0);
    for (var k4 = 0u; k4 < ${F4}u; k4++) {
      ${dot4("acts", [["sa", "wd"]])}
    }
    x[c] = xs[c] + sa;
  }
}`;
}

// ---------------------------------------------------------------------------------------------
// Launchers.

/** The f32/f16 tensor [out, in] behind a weight. */
function source(w: DecodeWeight): Tensor {
  return w instanceof PackedWeight ? w.source : w;
}

/** Checks a weight is [N, K] f32/f16 (a PackedWeight: packed with transB, as Linear weights). */
function checkWeight(op: string, name: string, w: DecodeWeight, N: number, K: number): void {
  if (w instanceof PackedWeight && !w.transB) {
    throw new RangeError(`${op}: ${name} must be packed with transB: true (a Linear weight)`);
  }
  const t = source(w);
  if (t.dtype !== "f32" && t.dtype !== "f16") {
    throw new TypeError(`${op}: ${name} must be f32 or f16, got ${t.dtype}`);
  }
  if (t.shape.length !== 2 || t.shape[0] !== N || t.shape[1] !== K) {
    throw new RangeError(`${op}: ${name} must be [${N}, ${K}], got [${t.shape}]`);
  }
}

function checkRow(op: string, x: Tensor, norm: Tensor): number {
  const D = x.shape[x.shape.length - 1];
  if (x.dtype !== "f32" || x.size !== D || D < 1) {
    throw new RangeError(`${op}: x must be one f32 row (1, D), got ${x.dtype} [${x.shape}]`);
  }
  if (norm.dtype !== "f32" || norm.size !== D) {
    throw new RangeError(`${op}: norm must be f32 (${D}), got ${norm.dtype} [${norm.shape}]`);
  }
  return D;
}

/** Whether every weight has a packed texture (the tex variant's operands). */
function allPacked(ws: DecodeWeight[]): boolean {
  return ws.every((w) => w instanceof PackedWeight && w.texture !== null);
}

/** Host cos/sin tables per (headDim, theta), grown on demand: one row goes into the parameters. */
const hostTables = new Map<string, { positions: number; cos: Float32Array; sin: Float32Array }>();

function cosSinAt(hd: number, theta: number, pos: number): [Float32Array, Float32Array] {
  const key = `${hd}|${theta}`;
  let t = hostTables.get(key);
  if (!t || t.positions <= pos) {
    const positions = Math.max(pos + 1, 4096, t ? t.positions * 2 : 0);
    t = { positions, ...ropeTables(hd, theta, positions) };
    hostTables.set(key, t);
  }
  const half = hd / 2;
  return [
    t.cos.subarray(pos * half, (pos + 1) * half),
    t.sin.subarray(pos * half, (pos + 1) * half),
  ];
}

/** Options of {@link decodeQkv}. */
export interface DecodeQkvOptions {
  /** Query heads H (Wq is [H*hd, D]). */
  heads: number;
  /** RMSNorm epsilon (default 1e-6). */
  eps?: number;
  /** RoPE base (default 10000). */
  theta?: number;
  /** Force the kernel (default: `tex` where it applies, else `buffer`). */
  variant?: DecodeFusedVariant;
}

/** Knobs for tests and benchmarks of {@link decodeQkv}'s "tex" variant. */
export const qkvTuning: {
  /** Read Wv as a storage texture (null: where the device allows 5 storage textures per stage). */
  vStorage: boolean | null;
  /** Lanes per workgroup of the tex kernel, 32 or 64 (null: 32). */
  lanes: 32 | 64 | null;
} = { vStorage: null, lanes: null };

/** The variant {@link decodeQkv} uses for these operands when none is forced. */
export function decodeQkvVariant(
  gpu: Gpu,
  w: { q: DecodeWeight; k: DecodeWeight; v: DecodeWeight },
  kv: KvBuffers,
): DecodeFusedVariant {
  const tex = gpu.kind === "cpu" && kv.layout === "tex" && kv.D % 8 === 0 && kv.B === 1 &&
    allPacked([w.q, w.k, w.v]);
  return tex ? "tex" : "buffer";
}

/**
 * One decode token's attention input, fused: h = rmsnorm(x) * norm, q = rope(h Wq^T),
 * k = rope(h Wk^T) and v = h Wv^T, with k and v appended to the KV storage `kv` at position
 * `pos` (batch 1). x (1, D) f32; Wq [H*hd, D], Wk and Wv [KVH*hd, D] (f32, f16 or packed with
 * transB). Returns q (1, 1, H, hd), ready for `attentionDecode(gpu, q, kv, pos)`. One dispatch
 * (two more with the buffer variant on a "tex" cache).
 */
export function decodeQkv(
  gpu: Gpu,
  x: Tensor,
  norm: Tensor,
  w: { q: DecodeWeight; k: DecodeWeight; v: DecodeWeight },
  kv: KvBuffers,
  pos: number,
  o: DecodeQkvOptions,
): Tensor {
  const op = "decodeQkv";
  const D = checkRow(op, x, norm);
  const { KVH, D: hd, maxT } = kv, H = o.heads;
  if (kv.B !== 1) throw new RangeError(`${op}: the KV storage must hold batch 1, got ${kv.B}`);
  if (hd % 2) throw new RangeError(`${op}: the head dimension must be even, got ${hd}`);
  if (!Number.isInteger(H) || H < KVH || H % KVH) {
    throw new RangeError(`${op}: heads (${H}) must be a positive multiple of kvHeads (${KVH})`);
  }
  if (!Number.isInteger(pos) || pos < 0 || pos >= maxT) {
    throw new RangeError(`${op}: position ${pos} does not fit a cache of ${maxT}`);
  }
  checkWeight(op, "Wq", w.q, H * hd, D);
  checkWeight(op, "Wk", w.k, KVH * hd, D);
  checkWeight(op, "Wv", w.v, KVH * hd, D);
  const variant = o.variant ?? decodeQkvVariant(gpu, w, kv);
  const [cos, sin] = cosSinAt(hd, o.theta ?? 10000, pos);
  const C4 = Math.ceil(hd / 8); // vec4s of cos (and of sin) for the hd/2 pairs
  const params = new Uint8Array(16 + 2 * C4 * 16);
  const view = new DataView(params.buffer);
  view.setUint32(0, D, true);
  view.setUint32(4, pos, true);
  view.setFloat32(8, o.eps ?? 1e-6, true);
  const cs = new Float32Array(params.buffer, 16, 2 * C4 * 4);
  cs.set(cos, 0);
  cs.set(sin, C4 * 4);
  const q = gpu.empty([1, 1, H, hd]);
  const ws = [w.q, w.k, w.v];
  if (variant === "tex") {
    if (kv.layout !== "tex" || hd % 8 || !allPacked(ws)) {
      throw new RangeError(
        `${op}: variant tex needs packed weights, a "tex" KV layout and a head dimension that is a multiple of 8 (got ${kv.layout}, ${hd})`,
      );
    }
    const u16 = ws.map((t) => (t as PackedWeight).u16);
    const vSt = qkvTuning.vStorage ?? gpu.limits.maxStorageTexturesPerShaderStage >= 5;
    const units = (H + KVH) * hd / 8 + KVH * hd / 4; // q/k pair groups, v texels
    // Workgroups of 32 (a small model's few groups then spread over both cores). 64 for the 100m
    // layer read 0.397 vs 0.431 ms in three alternating builds, but within the noise in one bench
    // run (`deno task bench --filter decodeQkv`: 0.41-0.46 vs 0.42-0.44 ms): kept as a knob.
    const L = qkvTuning.lanes ?? WG;
    const pipe = gpu.pipeline(
      `decodeQkv/tex/${H}/${KVH}/${hd}/${u16}/${vSt}/${L}`,
      () => qkvTexKernel(H, KVH, hd, u16, vSt, L),
    );
    const views = ws.map((t) => (t as PackedWeight).texture!.view);
    gpu.dispatch(
      pipe,
      [x, norm, q, ...views, kv.k.view, kv.v.view],
      params,
      grid(Math.ceil(units / L)),
    );
    return q;
  }
  const f16 = ws.map((t) => source(t).dtype === "f16");
  const pipe = gpu.pipeline(
    `decodeQkv/buffer/${H}/${KVH}/${hd}/${f16}`,
    () => qkvBufKernel(H, KVH, hd, f16),
  );
  const units = (H + KVH) * hd / 2 + KVH * hd;
  const direct = kv.layout === "buffer";
  const k = direct ? kv.k : gpu.empty([1, 1, KVH, hd]);
  const v = direct ? kv.v : gpu.empty([1, 1, KVH, hd]);
  view.setUint32(12, direct ? pos * KVH * hd : 0, true);
  gpu.dispatch(pipe, [x, norm, q, ...ws.map(source), k, v], params, grid(units));
  if (!direct) {
    kvWrite(gpu, kv, k, v, pos);
    k.release();
    v.release();
  }
  return q;
}

/** Options of {@link decodeFfn}. */
export interface DecodeFfnOptions {
  /** RMSNorm epsilon (default 1e-6). */
  eps?: number;
  /** Force the kernel (default: `tex` where both weights are packed, else `buffer`). */
  variant?: DecodeFusedVariant;
}

/**
 * One decode token's MLP input, fused: act = silu(h Wg^T) * (h Wu^T), h = rmsnorm(x) * norm.
 * x (1, D) f32; Wg and Wu [F, D] (f32, f16 or packed with transB). Returns act (1, F), the input
 * of the down projection. One dispatch.
 */
export function decodeFfn(
  gpu: Gpu,
  x: Tensor,
  norm: Tensor,
  w: { gate: DecodeWeight; up: DecodeWeight },
  o: DecodeFfnOptions = {},
): Tensor {
  return normProject(gpu, "decodeFfn", x, norm, [w.gate, w.up], o);
}

/**
 * RMSNorm then one projection, fused, for one decode token: y = (rmsnorm(x) * norm) W^T, x (1, D)
 * f32, W [N, D] (f32, f16 or packed with transB). Returns y (1, N): the final norm and the LM head
 * of a decode step in one dispatch.
 */
export function decodeNormLinear(
  gpu: Gpu,
  x: Tensor,
  norm: Tensor,
  w: DecodeWeight,
  o: DecodeFfnOptions = {},
): Tensor {
  return normProject(gpu, "decodeNormLinear", x, norm, [w], o);
}

/** decodeFfn (two weights: silu(h Wg^T) * h Wu^T) or decodeNormLinear (one: h W^T). */
function normProject(
  gpu: Gpu,
  op: string,
  x: Tensor,
  norm: Tensor,
  ws: DecodeWeight[],
  o: DecodeFfnOptions,
): Tensor {
  const D = checkRow(op, x, norm);
  const F = source(ws[0]).shape[0];
  ws.forEach((w, i) => checkWeight(op, ws.length === 2 ? ["Wgate", "Wup"][i] : "W", w, F, D));
  const variant = o.variant ?? (gpu.kind === "cpu" && allPacked(ws) ? "tex" : "buffer");
  const params = new Params().u32(D).u32(F).f32(o.eps ?? 1e-6);
  const act = gpu.empty([1, F]);
  if (variant === "tex") {
    if (!allPacked(ws)) throw new RangeError(`${op}: variant tex needs packed weights`);
    const u16 = ws.map((t) => (t as PackedWeight).u16);
    const pipe = gpu.pipeline(`decodeFfn/tex/${u16}`, () => ffnTexKernel(u16));
    const views = ws.map((t) => (t as PackedWeight).texture!.view);
    gpu.dispatch(pipe, [x, norm, act, ...views], params, grid(Math.ceil(F / 4 / WG)));
    return act;
  }
  const f16 = ws.map((t) => source(t).dtype === "f16");
  const pipe = gpu.pipeline(`decodeFfn/buffer/${f16}`, () => ffnBufKernel(f16));
  gpu.dispatch(pipe, [x, norm, act, ...ws.map(source)], params, grid(F));
  return act;
}

/** Options of {@link decodeLinearAdd}. */
export interface DecodeLinearAddOptions {
  /**
   * Force the kernel (default: `tex` for a packed weight, else `buffer`; on llvmpipe, weights of
   * more than 2^18 values go through matmul's gemv).
   */
  variant?: DecodeFusedVariant;
}

/**
 * A decode token's projection added into the residual stream in place: out += a W^T, for a (1, K)
 * and out (1, N) f32 and W [N, K] (f32, f16 or packed with transB): the o and down projections of
 * a layer. One dispatch; a's row is staged in workgroup memory (no copy into a uniform buffer, so
 * the compute pass is not split), and on llvmpipe each output texel column's K is split over
 * {@link KPARTS} lanes, so that even N = 640 keeps both cores busy.
 */
export function decodeLinearAdd(
  gpu: Gpu,
  a: Tensor,
  w: DecodeWeight,
  out: Tensor,
  o: DecodeLinearAddOptions = {},
): Tensor {
  const op = "decodeLinearAdd";
  const K = a.shape[a.shape.length - 1], N = out.shape[out.shape.length - 1];
  if (a.dtype !== "f32" || a.size !== K || out.dtype !== "f32" || out.size !== N) {
    throw new RangeError(
      `${op}: a and out must be f32 rows (1, K) and (1, N), got [${a.shape}] and [${out.shape}]`,
    );
  }
  if (a.buffer === out.buffer) throw new RangeError(`${op}: out aliases a`);
  checkWeight(op, "W", w, N, K);
  if (!o.variant && gpu.kind === "cpu" && allPacked([w]) && N * K > LIN_GEMV_FROM) {
    // Big matrices on llvmpipe: matmul's gemv (the row copied into a uniform buffer) streamed the
    // 100m preset's 640x640 and 640x1664 ~15% faster than the tex kernel below, which wins on small
    // ones (~20% on the tiny preset's: no copy, so the compute pass is not split).
    return matmul(gpu, a.view([1, K]), w, { out: out.view([1, N]), accumulate: true });
  }
  const variant = o.variant ?? (gpu.kind === "cpu" && allPacked([w]) ? "tex" : "buffer");
  const params = new Params().u32(K).u32(N);
  if (variant === "tex") {
    if (!allPacked([w])) throw new RangeError(`${op}: variant tex needs a packed weight`);
    const pw = w as PackedWeight;
    const pipe = gpu.pipeline(`decodeLinearAdd/tex/${pw.u16}`, () => linearAddTexKernel(pw.u16));
    const groups = Math.ceil(Math.ceil(N / 4) / LIN_COLS);
    gpu.dispatch(pipe, [a, out, pw.texture!.view], params, grid(groups));
    return out;
  }
  const f16 = source(w).dtype === "f16";
  const pipe = gpu.pipeline(`decodeLinearAdd/buffer/${f16}`, () => linearAddBufKernel(f16));
  gpu.dispatch(pipe, [a, out, source(w)], params, grid(N));
  return out;
}

/** Largest head dimension {@link decodeAttention} takes (its workgroup memory holds every lane's sums). */
export const DECODE_ATTENTION_MAX_HEAD_DIM = 128;

/**
 * Attention of one decode token (batch 1) over positions 0..pos of a layer's KV storage, in one
 * dispatch: one workgroup per head whose lanes take every L-th key with their own online softmax,
 * merged through workgroup memory (the split-K `attentionDecode` takes two dispatches: partials,
 * then a combine). q (1, 1, H, hd); `kv` must hold keys/values for positions 0..pos (hd up to
 * {@link DECODE_ATTENTION_MAX_HEAD_DIM}). Returns out (1, 1, H, hd). H workgroups: right for a
 * CPU adapter's few cores; a real GPU with a long cache keeps more busy with `attentionDecode`.
 */
export function decodeAttention(gpu: Gpu, q: Tensor, kv: KvBuffers, pos: number): Tensor {
  const op = "decodeAttention";
  const { KVH, D: hd, maxT } = kv;
  if (kv.B !== 1) throw new RangeError(`${op}: the KV storage must hold batch 1, got ${kv.B}`);
  if (q.dtype !== "f32" || q.size % hd || q.shape[q.shape.length - 1] !== hd) {
    throw new RangeError(`${op}: q must be f32 (1, 1, H, ${hd}), got ${q.dtype} [${q.shape}]`);
  }
  const H = q.size / hd;
  if (H % KVH) throw new RangeError(`${op}: heads (${H}) must be a multiple of kvHeads (${KVH})`);
  if (hd > DECODE_ATTENTION_MAX_HEAD_DIM) {
    throw new RangeError(`${op}: head dimension ${hd} exceeds ${DECODE_ATTENTION_MAX_HEAD_DIM}`);
  }
  if (!Number.isInteger(pos) || pos < 0 || pos >= maxT) {
    throw new RangeError(`${op}: position ${pos} does not fit a cache of ${maxT}`);
  }
  const tex = kv.layout === "tex";
  const pipe = gpu.pipeline(
    `decodeAttention/${H}/${KVH}/${hd}/${kv.layout}`,
    () => attentionKernel(H, KVH, hd, tex),
  );
  const out = gpu.empty([1, 1, H, hd]);
  const kvb = kv.layout === "tex" ? [kv.k.view, kv.v.view] : [kv.k, kv.v];
  const params = new Params().u32(pos + 1).f32(Math.LOG2E / Math.sqrt(hd));
  gpu.dispatch(pipe, [q, ...kvb, out], params, H);
  return out;
}

/** The packed weights {@link decodeTail} reads (Linear weights packed with transB). */
export interface DecodeTailWeights {
  o: DecodeWeight;
  gate: DecodeWeight;
  up: DecodeWeight;
  down: DecodeWeight;
}

/**
 * The most weights (o + gate + up + down) of a layer whose tail runs as {@link decodeTail}'s one
 * workgroup: past this one core streaming them costs more than the four-dispatch path's spread
 * over the cores saves (the `tiny` preset's 148K run one, `small`'s 593K do not).
 */
export const DECODE_TAIL_MAX_WEIGHTS = 1 << 18;

/**
 * {@link decodeTail}'s kernel shape for these operands, or null where it does not apply: it needs
 * the "tex" variant's operands (packed weights, a "tex" cache of batch 1), sizes in whole vec4s,
 * at most {@link DECODE_TAIL_MAX_WEIGHTS} weights, six storage textures and its workgroup memory.
 */
export function decodeTailShape(
  gpu: Gpu,
  q: Tensor,
  kv: KvBuffers,
  x: Tensor,
  w: DecodeTailWeights,
): DecodeTailShape | null {
  const hd = kv.D, KVH = kv.KVH, D = x.size, H = q.size / hd;
  const F = source(w.gate).shape[0];
  const ws = [w.o, w.gate, w.up, w.down];
  if (kv.layout !== "tex" || kv.B !== 1 || !allPacked(ws)) return null;
  if (!Number.isInteger(H) || H < 1 || H > 64 || H % KVH || hd % 4 || D % 4 || F % 4) return null;
  const weights = ws.reduce((a, t) => a + source(t).size, 0);
  if (weights > DECODE_TAIL_MAX_WEIGHTS) return null;
  if (gpu.limits.maxStorageTexturesPerShaderStage < 6) return null;
  const S = 2 ** Math.floor(Math.log2(64 / H)), WG = H * S, U = hd / 4;
  const shared = (WG / 2) * (U * 16 + 8) + ((H * hd) / 4 + D / 2 + F / 4) * 16;
  if (shared > gpu.limits.maxComputeWorkgroupStorageSize) return null;
  return { H, KVH, hd, D, F, S, WG, u16: ws.map((t) => (t as PackedWeight).u16) };
}

/**
 * The rest of a decode layer after {@link decodeQkv}, in one dispatch of one workgroup: attention
 * of q (1, 1, H, hd) over cache positions 0..pos, x += att Wo^T, h = RMSNorm(x) * norm,
 * x += (silu(h Wg^T) * h Wu^T) Wdown^T, with x (1, D) updated in place. Replaces
 * {@link decodeAttention}, {@link decodeLinearAdd} (twice) and {@link decodeFfn} where
 * {@link decodeTailShape} allows (llvmpipe and small layers: there each dispatch costs ~40-50 us
 * before any work, more than the tiny preset's whole tail does in one workgroup). Throws where it
 * does not apply.
 */
export function decodeTail(
  gpu: Gpu,
  q: Tensor,
  kv: KvBuffers,
  pos: number,
  x: Tensor,
  norm: Tensor,
  w: DecodeTailWeights,
  o: { eps?: number } = {},
): void {
  const op = "decodeTail";
  const D = checkRow(op, x, norm);
  const hd = kv.D;
  if (q.dtype !== "f32" || q.size % hd || q.shape[q.shape.length - 1] !== hd) {
    throw new RangeError(`${op}: q must be f32 (1, 1, H, ${hd}), got ${q.dtype} [${q.shape}]`);
  }
  const H = q.size / hd, F = source(w.gate).shape[0];
  checkWeight(op, "Wo", w.o, D, H * hd);
  checkWeight(op, "Wgate", w.gate, F, D);
  checkWeight(op, "Wup", w.up, F, D);
  checkWeight(op, "Wdown", w.down, D, F);
  if (!Number.isInteger(pos) || pos < 0 || pos >= kv.maxT) {
    throw new RangeError(`${op}: position ${pos} does not fit a cache of ${kv.maxT}`);
  }
  const t = decodeTailShape(gpu, q, kv, x, w);
  if (!t || kv.layout !== "tex") {
    throw new RangeError(
      `${op}: needs packed weights, a "tex" cache of batch 1, sizes in whole vec4s and at most ` +
        `${DECODE_TAIL_MAX_WEIGHTS} weights (see decodeTailShape)`,
    );
  }
  const key = `decodeTail/${t.H}/${t.KVH}/${t.hd}/${t.D}/${t.F}/${t.S}/${t.u16}`;
  const pipe = gpu.pipeline(key, () => tailKernel(t));
  const views = [w.o, w.gate, w.up, w.down].map((p) => (p as PackedWeight).texture!.view);
  const params = new Params().u32(pos + 1).f32(Math.LOG2E / Math.sqrt(hd)).f32(o.eps ?? 1e-6);
  gpu.dispatch(pipe, [q, kv.k.view, kv.v.view, x, norm, ...views], params, 1);
}
