/**
 * Rotary position embedding in the HF LLaMA "rotate-half" convention (`apply_rotary_pos_emb`):
 *   inv_freq[i] = 1 / theta^(2i/D), i < D/2           (f32, as `_compute_default_rope_parameters`)
 *   angle[p][i] = f32(p) * inv_freq[i]                 (f32 product, as HF's f32 matmul of the two)
 *   cos/sin     = cos/sin(angle) in f32, repeated twice over the head dim
 *   out = x * cos + rotate_half(x) * sin, rotate_half(x) = cat(-x[D/2:], x[:D/2])
 * so for each pair (i, i + D/2): out_i = x_i c - x_{i+D/2} s, out_{i+D/2} = x_{i+D/2} c + x_i s.
 * The backward is the inverse rotation (angle -> -angle).
 *
 * The cos/sin table is computed on the host (f64 cos/sin of the f32 angle, rounded to f32: what
 * torch's f32 cos/sin return to within an ulp) and uploaded once per (theta, D) for positions below
 * `tablePositions` (default 4096, grown on demand); WGSL's cos/sin promise accuracy only on [-pi, pi],
 * so positions past the table (possible only through an explicit positions tensor) fall back to
 * in-kernel trig of the same f32 angle.
 *
 * Layout: x is (B, T, H, D) — rows of (T, H*D) as the q/k projections produce them. Position of row
 * (b, t) is `posOffset + t` (KV-cache decode) or `positions[b*T + t]` from an i32 tensor.
 * One kernel, one workgroup of 64 per row (b, t), lanes over the rotation pairs; in place when
 * `out === x`.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";

const WG = 64;
const DEFAULT_TABLE = 4096;

/** HF's inverse frequencies in f32: 1 / f32(theta ** f32(2i / D)). */
export function ropeInvFreq(headDim: number, theta = 10000): Float32Array {
  const half = headDim / 2;
  const out = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    const e = Math.fround((2 * i) / headDim);
    out[i] = Math.fround(1 / Math.fround(Math.pow(theta, e)));
  }
  return out;
}

/** cos and sin tables (positions, D/2) f32 for positions 0..positions-1, as HF computes them. */
export function ropeTables(
  headDim: number,
  theta: number,
  positions: number,
): { cos: Float32Array; sin: Float32Array } {
  const inv = ropeInvFreq(headDim, theta);
  const half = headDim / 2;
  const cos = new Float32Array(positions * half), sin = new Float32Array(positions * half);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const a = Math.fround(p * inv[i]); // f32 angle
      cos[p * half + i] = Math.cos(a);
      sin[p * half + i] = Math.sin(a);
    }
  }
  return { cos, sin };
}

interface Table {
  positions: number;
  /** (positions, D/2, 2): cos, sin interleaved. */
  cs: Tensor;
  /** (D/2) inverse frequencies for positions past the table. */
  inv: Tensor;
}
const tables = new WeakMap<Gpu, Map<string, Table>>();

function getTable(gpu: Gpu, headDim: number, theta: number, need: number): Table {
  let m = tables.get(gpu);
  if (!m) tables.set(gpu, m = new Map());
  const key = `${headDim}|${theta}`;
  const t = m.get(key);
  if (t && t.positions >= need) return t;
  const positions = Math.max(need, DEFAULT_TABLE, t ? t.positions * 2 : 0);
  const { cos, sin } = ropeTables(headDim, theta, positions);
  const cs = new Float32Array(cos.length * 2);
  for (let i = 0; i < cos.length; i++) {
    cs[2 * i] = cos[i];
    cs[2 * i + 1] = sin[i];
  }
  // Old tensors stay owned by work already recorded; they are simply dropped (not pooled).
  const next: Table = {
    positions,
    cs: gpu.upload(cs, [positions, headDim / 2, 2]),
    inv: t?.inv ?? gpu.upload(ropeInvFreq(headDim, theta), [headDim / 2]),
  };
  m.set(key, next);
  return next;
}

/**
 * WGSL (sin a, cos a) to a few f32 ulps for any angle a rotary position reaches (|a| < 2^16 pi/2
 * keeps the reduction exact): WGSL's own sin/cos are only specified to 2^-11 absolute on
 * [-pi, pi] (Dawn/SwiftShader's err by ~2e-5 there and by ~1e-4 at a = 4096). Cody-Waite
 * reduction by pi/2 with Cephes' three-part constant, then Cephes' sinf/cosf polynomials on
 * [-pi/4, pi/4] and the quadrant's rotation.
 */
const WGSL_SINCOS = `fn sincos(a: f32) -> vec2f {
  let k = round(a * 0.63661977236758134);
  var r = a - k * 1.5703125;
  r = r - k * 4.837512969970703125e-4;
  r = r - k * 7.54978995489188216e-8;
  let z = r * r;
  let s = r + r * z * (-1.6666654611e-1 + z * (8.3321608736e-3 + z * -1.9515295891e-4));
  let c = 1.0 - 0.5 * z +
    z * z * (4.166664568298827e-2 + z * (-1.388731625493765e-3 + z * 2.443315711809948e-5));
  switch (i32(k) & 3) {
    case 0: { return vec2f(s, c); }
    case 1: { return vec2f(c, -s); }
    case 2: { return vec2f(-s, -c); }
    default: { return vec2f(-c, s); }
  }
}`;

function ropeKernel(H: number, half: number, explicit: boolean, inPlace: boolean): string {
  const io = inPlace
    ? `@group(0) @binding(0) var<storage, read_write> x: array<f32>;`
    : `@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;`;
  let b = inPlace ? 1 : 2;
  const tab = `@group(0) @binding(${b++}) var<storage, read> cs: array<vec2f>;
@group(0) @binding(${b++}) var<storage, read> inv: array<f32>;`;
  const pos = explicit
    ? `@group(0) @binding(${b++}) var<storage, read> positions: array<i32>;`
    : "";
  const dst = inPlace ? "x" : "out";
  // One workgroup per row (b, t): the position is the same for all its lanes, and H and D/2 are
  // constants, so the per-pair index math has no runtime division (llvmpipe scalarises those).
  return `${io}
${tab}
${pos}
${WGSL_SINCOS}
const HALF: u32 = ${half}u;
const PAIRS: u32 = ${H * half}u; // pairs per row
struct P { rows: u32, T: u32, posOffset: u32, tablePositions: u32, sign: f32 }
@group(0) @binding(${b}) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = ${WG_INDEX}; // b*T + t
  if (row >= p.rows) { return; }
  let pos = ${explicit ? "u32(max(positions[row], 0))" : "p.posOffset + row % p.T"};
  let inTable = pos < p.tablePositions;
  let rowBase = row * PAIRS * 2u;
  for (var k = li; k < PAIRS; k += ${WG}u) {
    let i = k % HALF;
    var c: f32;
    var s: f32;
    if (inTable) {
      let v = cs[pos * HALF + i];
      c = v.x;
      s = v.y;
    } else {
      let sc = sincos(f32(pos) * inv[i]);
      c = sc.y;
      s = sc.x;
    }
    s = s * p.sign; // -1: the inverse rotation (backward)
    let j = rowBase + (k / HALF) * HALF * 2u + i; // element of x_i; x_{i+D/2} is j + HALF
    let x1 = x[j];
    let x2 = x[j + HALF];
    ${dst}[j] = x1 * c - x2 * s;
    ${dst}[j + HALF] = x2 * c + x1 * s;
  }
}`;
}

/** Options of {@link rope} / {@link ropeBackward}. */
export interface RopeOptions {
  /** Heads H: x's last dimension is H * headDim. */
  heads: number;
  /** Head dimension D (even). */
  headDim: number;
  /** RoPE base (LLaMA: 10000). */
  theta?: number;
  /** Position of t = 0 (the number of tokens already in the KV cache). Default 0. */
  posOffset?: number;
  /** (B*T) i32 explicit positions; overrides posOffset. Negative values are treated as 0. */
  positions?: Tensor;
  /** Write here; `out === x` rotates in place. Default: a new tensor. */
  out?: Tensor;
}

function launch(gpu: Gpu, x: Tensor, o: RopeOptions, sign: 1 | -1, op: string): Tensor {
  const { heads: H, headDim: D, theta = 10000, posOffset = 0, positions } = o;
  if (!Number.isInteger(D) || D < 2 || D % 2) {
    throw new RangeError(`${op}: headDim must be a positive even integer, got ${D}`);
  }
  if (!Number.isInteger(H) || H < 1) throw new RangeError(`${op}: heads must be >= 1, got ${H}`);
  if (x.dtype !== "f32") throw new TypeError(`${op}: x must be f32, got ${x.dtype}`);
  const r = x.shape.length, sh = (k: number) => x.shape[r - k];
  let T: number;
  if (r >= 4 && sh(1) === D && sh(2) === H) T = sh(3); // (B, T, H, D)
  else if (r >= 2 && sh(1) === H * D) T = sh(2); // (B, T, H*D) or (T, H*D)
  else if (r === 3 && sh(1) === D && sh(2) === H) T = sh(3); // (T, H, D)
  else {
    throw new RangeError(
      `${op}: x has shape [${x.shape}], expected (B, T, ${H}, ${D}) or (B, T, ${H * D})`,
    );
  }
  const rows = x.size / (H * D);
  if (!Number.isInteger(posOffset) || posOffset < 0) {
    throw new RangeError(`${op}: posOffset must be a non-negative integer, got ${posOffset}`);
  }
  if (positions && (positions.dtype !== "i32" || positions.size !== rows)) {
    throw new RangeError(
      `${op}: positions is [${positions.shape}] ${positions.dtype}, expected [${rows}] i32`,
    );
  }
  const out = o.out ?? gpu.empty(x.shape); // (B,T,H,D)
  if (out.size !== x.size || out.dtype !== "f32") {
    throw new RangeError(`${op}: out is [${out.shape}] ${out.dtype}, expected [${x.shape}] f32`);
  }
  const inPlace = out.buffer === x.buffer;
  const table = getTable(gpu, D, theta, positions ? 0 : posOffset + T);
  const pipe = gpu.pipeline(
    `rope|${H}|${D}|${!!positions}|${inPlace}`,
    () => ropeKernel(H, D / 2, !!positions, inPlace),
  );
  const bindings = [
    ...(inPlace ? [x] : [x, out]),
    table.cs,
    table.inv,
    ...(positions ? [positions] : []),
  ];
  gpu.dispatch(
    pipe,
    bindings,
    new Params().u32(rows).u32(T).u32(posOffset).u32(table.positions).f32(sign),
    grid(rows),
  );
  return out;
}

/**
 * Applies RoPE to x (B,T,H,D) (or (B,T,H*D)) f32 at positions posOffset + t (or `positions`).
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { rope } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const q = gpu.upload([1, 0, 0, 0, 1, 0, 0, 0], [1, 2, 1, 4]); // T=2, H=1, D=4
 * const out = rope(gpu, q, { heads: 1, headDim: 4 });
 * console.log(await gpu.read(out)); // t=0 unchanged; t=1 rotated by (1 rad, 0.01 rad)
 * ```
 */
export function rope(gpu: Gpu, x: Tensor, options: RopeOptions): Tensor {
  return launch(gpu, x, options, 1, "rope");
}

/** Backward of {@link rope}: dx = the inverse rotation of dy (same options). */
export function ropeBackward(gpu: Gpu, dy: Tensor, options: RopeOptions): Tensor {
  return launch(gpu, dy, options, -1, "ropeBackward");
}

/**
 * CPU reference of {@link rope} in HF's formulation (x*cos + rotate_half(x)*sin), with the f32
 * tables of {@link ropeTables}. `positions` (B*T) defaults to posOffset + t.
 */
export function ropeCpu(
  x: ArrayLike<number>,
  T: number,
  H: number,
  D: number,
  { theta = 10000, posOffset = 0, positions, inverse = false }: {
    theta?: number;
    posOffset?: number;
    positions?: ArrayLike<number>;
    inverse?: boolean;
  } = {},
): Float32Array {
  const rows = x.length / (H * D), half = D / 2;
  let maxPos = 0;
  for (let r = 0; r < rows; r++) {
    maxPos = Math.max(maxPos, positions ? positions[r] : posOffset + r % T);
  }
  const { cos, sin } = ropeTables(D, theta, maxPos + 1);
  const out = new Float32Array(x.length);
  for (let r = 0; r < rows; r++) {
    const p = positions ? positions[r] : posOffset + (r % T);
    for (let h = 0; h < H; h++) {
      const base = (r * H + h) * D;
      for (let d = 0; d < D; d++) {
        const i = d % half;
        const c = cos[p * half + i], s = inverse ? -sin[p * half + i] : sin[p * half + i];
        const rot = d < half ? -x[base + d + half] : x[base + d - half]; // rotate_half(x)[d]
        out[base + d] = Math.fround(Math.fround(x[base + d] * c) + Math.fround(rot * s));
      }
    }
  }
  return out;
}
