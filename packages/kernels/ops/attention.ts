/**
 * Causal multi-head attention (HF `LlamaAttention` after the projections and RoPE): for query head h
 * and KV head g = floor(h / (H / KVH)) (grouped-query, HF `repeat_kv`; LVM uses KVH == H),
 *   out[b,t,h] = softmax_{j <= pos(t)}(q[b,t,h] . k[b,j,g] / sqrt(D)) @ v[b,:,g]
 * fused flash-style: an online softmax over the keys, no (T,T) matrix in memory. The forward also
 * writes the natural-log logsumexp lse (B,H,T) of each scaled score row for the backward.
 *
 * Backward (flash-attention-2): Di = rowsum(dO_i * O_i); P_ij = exp(s_ij - lse_i) recomputed;
 *   dP_ij = dO_i . v_j;  dS_ij = P_ij (dP_ij - Di);
 *   dq_i = scale sum_j dS_ij k_j;  dk_j = scale sum_i dS_ij q_i;  dv_j = sum_i P_ij dO_i.
 * Two kernels, no float atomics: dq (lanes own queries, loop over keys; also writes Di), then dk/dv
 * (lanes own keys, loop over the queries and, for GQA, over the query heads sharing the KV head).
 *
 * Every kernel has the same shape: a lane owns R rows (queries, or keys in dk/dv) whose vectors and
 * accumulators live in registers (vec4, zero-padded when D % 4 != 0, every loop over the head dim
 * unrolled at generation time), and streams the other side's rows one at a time, each row read once
 * per lane and used R times. Scores are kept in log2 units (q pre-scaled by log2(e)/sqrt(D)) so the
 * softmax uses exp2; the running max is rescaled only when it grows. No barriers, no shared memory.
 * Two variants differ in how the streamed rows are read:
 * - "tex" (default on CPU adapters): from rgba32float textures (texel (head*U + d/4, row, batch)),
 *   which a pack kernel fills. Mesa's llvmpipe loops per lane, with a bounds check, over every
 *   storage-buffer load — even one whose address is the same for all lanes — but fetches texels
 *   vectorised: the forward measured ~15x faster than "buffer" here (T=1024, D=64, R=4 queries
 *   per lane; tools/bench/transformer_ops.ts).
 * - "buffer" (default on GPUs): straight from the storage buffers, R = 1, 64 lanes per workgroup: the
 *   streamed row address is uniform across the workgroup, a broadcast load on GPU hardware.
 * Decode (a few new tokens against a layer's {@link KvBuffers}) is split-K ("flash decoding"): each workgroup
 * takes a slice of the cache for one (b, query, h), lanes stride over its keys with private
 * online-softmax states, and a second kernel merges them. Many new tokens (a prefill chunk) use the
 * forward kernel with a key offset. The KV storage is a texture on CPU adapters, a tensor on GPUs.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { makeTexture, type TexSlot, TextureCache } from "@lvm/gpu";
import { onlineStep, splitMerge } from "./_merge.ts";

const LOG2E = Math.LOG2E;
const MASKED = "-1.0e30";

/** How the streamed operand is read (see the module doc). */
export type AttentionVariant = "tex" | "buffer";

/**
 * Kernel shape knobs per variant (for benchmarks; normal use leaves them). A lane owns
 * R = clamp(floor(budget / ceil(D/4)), 1, 4) rows: more rows reuse each streamed texel more, but the
 * registers (and llvmpipe's compile time, ~4 s cold for the forward at D=64, R=4) grow with R*D.
 */
export const attentionTuning: {
  /** Force a variant (null: "tex" on CPU adapters, "buffer" on GPUs). */
  variant: AttentionVariant | null;
  /** Force the rows per lane R of every kernel (null: from the budgets). */
  rows: number | null;
  /**
   * Force the "buffer" kernels' split: S lanes share a row (R = 1), each streaming every S-th
   * key (forward, dQ) or query (dK/dV), merged through workgroup memory at the end (null: 1 on
   * the "cpu" kernel kind, else enough splits for ~64K lanes, at most 16; {@link splitFor}).
   */
  split: number | null;
  tex: { lanes: number; budget: { fwd: number; dq: number; dkdv: number }; decodeLanes: number };
  buffer: { lanes: number; budget: { fwd: number; dq: number; dkdv: number }; decodeLanes: number };
} = {
  variant: null,
  rows: null,
  split: null,
  tex: { lanes: 16, budget: { fwd: 64, dq: 32, dkdv: 32 }, decodeLanes: 8 },
  buffer: { lanes: 64, budget: { fwd: 0, dq: 0, dkdv: 0 }, decodeLanes: 64 },
};

/** [lanes per workgroup, rows per lane] of a kernel. */
function shapeOf(
  src: AttentionVariant,
  kernel: "fwd" | "dq" | "dkdv",
  D: number,
): [number, number] {
  const t = attentionTuning[src];
  const R = attentionTuning.rows ??
    Math.min(4, Math.max(1, Math.floor(t.budget[kernel] / Math.ceil(D / 4))));
  return [t.lanes, R];
}

/**
 * Lanes per row of a "buffer" kernel over `rows` rows of `n` streamed rows each. One row per lane
 * leaves a GPU mostly idle at training sizes (the `100m` step's T = 256 x 10 heads: 2560 lanes, 40
 * workgroups on an H200's 132 SMs), so below 8192 rows S lanes split the streamed loop: enough
 * for ~8K lanes in the forward, ~40K in the backward (at most 16, and at most n / 4 so that each
 * lane still walks a few rows). Measured on an H200 (`deno task bench --filter attention`, the
 * `[split]` / `[unsplit]` pairs, 20 ops per timed run, B=1 H=10 D=64): at T = 256 the forward
 * 0.73 -> 0.63 ms (split 4), the backward 1.03 -> 0.81 ms (16); at T = 1024 (10240 rows) splitting
 * by 8 was slower (backward 2.53 -> 3.03 ms), so there it stays 1. 1 on the cpu kind (lavapipe
 * emulates the merge's barriers; its default is "tex" anyway).
 */
function splitFor(
  gpu: Gpu,
  src: AttentionVariant,
  kernel: "fwd" | "dq" | "dkdv",
  rows: number,
  n: number,
): number {
  if (src !== "buffer") return 1;
  if (attentionTuning.split !== null) return attentionTuning.split;
  if (gpu.kind === "cpu" || rows >= 8192) return 1;
  const lanes = kernel === "fwd" ? 8192 : 40960;
  let S = 1;
  while (S < 16 && rows * S < lanes && S * 2 <= Math.max(1, n / 4)) S *= 2;
  return S;
}

/**
 * Workgroup lanes of a split kernel: `WG`, halved while its merge buffers ({@link splitMerge}: WG/2
 * rows of U vec4s and a vec2) would not fit the device's workgroup memory.
 */
function splitLanes(gpu: Gpu, WG: number, S: number, U: number): number {
  const limit = gpu.limits.maxComputeWorkgroupStorageSize;
  while (WG > S && (WG / 2) * (U * 16 + 8) > limit) WG /= 2;
  return WG;
}

/**
 * [lanes, rows per lane, lanes per row] of a kernel over `rows` rows that stream `n` rows each:
 * {@link shapeOf}, split by {@link splitFor} (one row per S lanes, R = 1) on the "buffer" variant.
 */
function kernelShape(
  gpu: Gpu,
  src: AttentionVariant,
  kernel: "fwd" | "dq" | "dkdv",
  D: number,
  rows: number,
  n: number,
): [number, number, number] {
  const [WG, R] = shapeOf(src, kernel, D);
  const S = splitFor(gpu, src, kernel, rows, n);
  if (S === 1) return [WG, R, 1];
  if (!Number.isInteger(Math.log2(S)) || S > WG) {
    throw new RangeError(`attention: split ${S} is not a power of two up to ${WG} lanes`);
  }
  const U = Math.ceil(D / 4);
  return [splitLanes(gpu, WG, S, U), 1, S];
}

function pickVariant(gpu: Gpu, B: number): AttentionVariant {
  const v = attentionTuning.variant ?? (gpu.kind === "cpu" ? "tex" : "buffer");
  // Textures hold one batch row per layer; past the adapter's layer limit use buffers.
  return v === "tex" && B > gpu.limits.maxTextureArrayLayers ? "buffer" : v;
}

// ---------------------------------------------------------------------------------------------
// WGSL generation helpers.

/** `n` copies of `f(i)` joined by `sep`: the kernels unroll every loop over the head dim and rows. */
function rep(n: number, f: (i: number) => string, sep = "\n  "): string {
  return Array.from({ length: n }, (_, i) => f(i)).join(sep);
}

const SW = [".x", ".y", ".z", ".w"];

/** `prefix`0 .. `prefix`(n-1). */
const names = (n: number, prefix: string) => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

/**
 * Row access in a storage buffer of (.., D) rows: vec4 units when D % 4 == 0, else scalars packed
 * into zero-padded vec4s. `base` is the row's first element index (a WGSL expression).
 */
function rows(D: number) {
  const vec = D % 4 === 0;
  const U = Math.ceil(D / 4);
  return {
    U,
    ty: vec ? "vec4f" : "f32",
    ld: (buf: string, base: string, d4: number) =>
      vec
        ? `${buf}[(${base}) / 4u + ${d4}u]`
        : `vec4f(${
          [0, 1, 2, 3].map((c) => (4 * d4 + c < D ? `${buf}[${base} + ${4 * d4 + c}u]` : "0.0"))
            .join(", ")
        })`,
    st: (buf: string, base: string, d4: number, val: string) =>
      vec ? `${buf}[(${base}) / 4u + ${d4}u] = ${val};` : [0, 1, 2, 3].filter((c) => 4 * d4 + c < D)
        .map((c) => `${buf}[${base} + ${4 * d4 + c}u] = (${val})${SW[c]};`).join(" "),
  };
}

const hsum = (e: string) => `dot(${e}, vec4f(1.0))`;

/** Declarations and a row reader for the streamed operands (`names`), from textures or buffers. */
function streamed(src: AttentionVariant, D: number, names: string[], first: number) {
  const { U, ty, ld } = rows(D);
  const decl = names.map((n, i) =>
    src === "tex"
      ? `@group(0) @binding(${first + i}) var ${n}: texture_2d_array<f32>;`
      : `@group(0) @binding(${first + i}) var<storage, read> ${n}: array<${ty}>;`
  ).join("\n");
  return {
    decl,
    U,
    /** WGSL: declare the row base of row `row` (head column `hx` = head * U, head `hd`). */
    base: (row: string, hd: string, rowsPerBatch: string, heads: string) =>
      src === "tex" ? "" : `let rb = ((b * ${rowsPerBatch} + ${row}) * ${heads} + ${hd}) * ${D}u;`,
    /** WGSL expression: unit d4 of the current row of `name`. */
    at: (name: string, row: string, hx: string, d4: number) =>
      src === "tex"
        ? `textureLoad(${name}, vec2u(${hx} + ${d4}u, ${row}), b, 0)`
        : ld(name, "rb", d4),
  };
}

// ---------------------------------------------------------------------------------------------
// Texture packing: (B, T, NH, D) rows -> texel (h*U + d4, t0 + t, b) of an rgba32float array.

function packKernel(): string {
  return `
@group(0) @binding(0) var<storage, read> src: array<f32>; // (B, T, NH, D)
@group(0) @binding(1) var dst: texture_storage_2d_array<rgba32float, write>;
struct P { T: u32, NH: u32, D: u32, U: u32, t0: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(16, 4)
fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x >= p.NH * p.U || g.y >= p.T) { return; }
  let h = g.x / p.U;
  let d = (g.x % p.U) * 4u;
  let base = ((g.z * p.T + g.y) * p.NH + h) * p.D + d;
  var v = vec4f(0.0);
  for (var c = 0u; c < 4u; c++) {
    if (d + c < p.D) { v[c] = src[base + c]; }
  }
  textureStore(dst, vec2u(g.x, p.t0 + g.y), g.z, v);
}`;
}

/**
 * Scratch textures per context, by slot and exact size: a training step reuses a fixed set (two per
 * shape, each the size of k or q; see {@link attentionTrim}).
 */
const scratch = new TextureCache("attention");
/** Storage + texture binding (written by the pack kernels, read by attention). */
const texUsage = () => GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING;

function scratchTexture(gpu: Gpu, slot: number, w: number, h: number, l: number): TexSlot {
  return scratch.get(gpu, String(slot), w, h, l, { usage: texUsage() });
}

/** Frees the scratch textures of the "tex" variant (they are re-made on demand). */
export function attentionTrim(gpu: Gpu): void {
  scratch.trim(gpu);
}

/** Records the pack of x (B,T,NH,D) into rows t0.. of a texture. */
function pack(gpu: Gpu, x: Tensor, tex: TexSlot, t0 = 0) {
  const [B, T, NH, D] = x.shape;
  const U = Math.ceil(D / 4);
  gpu.dispatch(
    gpu.pipeline("attentionPack", packKernel),
    [x, tex.view],
    new Params().u32(T).u32(NH).u32(D).u32(U).u32(t0),
    [Math.ceil((NH * U) / 16), Math.ceil(T / 4), B],
  );
}

/** x (B,T,NH,D) packed into scratch texture `slot` (0 or 1) of its size. */
function packed(gpu: Gpu, slot: number, x: Tensor): TexSlot {
  const [B, T, NH, D] = x.shape;
  const tex = scratchTexture(gpu, slot, NH * Math.ceil(D / 4), T, B);
  pack(gpu, x, tex);
  return tex;
}

// ---------------------------------------------------------------------------------------------
// Forward (training, and prefill of many tokens against a cache).

/**
 * WGSL opening of the kernels with one workgroup per (batch, head, block of WG * R query rows)
 * (forward, dQ): `qb` the block (late blocks first: they see the most keys), `bh`, `h`, `b`, the
 * KV head `g` (`gx` its first texel column) and the workgroup's first row `tb` of this invocation.
 */
function qBlockHead(U: number, WG: number, R: number, S = 1): string {
  return `let w = ${WG_INDEX};
  if (w >= p.BH * p.nQB) { return; }
  let qb = p.nQB - 1u - w % p.nQB; // late query blocks first: they see the most keys
  let bh = w / p.nQB;
  let h = bh % p.H;
  let b = bh / p.H;
  let g = h / (p.H / p.KVH);
  let gx = g * ${U}u;
  ${
    S > 1
      ? `let sl = li % ${S}u; // this lane's split of the row's loop
  let tb = qb * ${WG / S}u + li / ${S}u;`
      : `let tb = (qb * ${WG}u + li) * ${R}u;`
  }`;
}

function forwardKernel(D: number, src: AttentionVariant, WG: number, R: number, S = 1): string {
  const { U, ty, ld, st } = rows(D);
  const s = streamed(src, D, ["kt", "vt"], 1);
  const rs = (f: (r: number) => string, sep?: string) => rep(R, f, sep);
  const us = (f: (d: number) => string, sep?: string) => rep(U, f, sep);
  const merge = S > 1 ? splitMerge(WG, S, U, [names(U, "a0_")], true) : null;
  return `${merge?.decl ?? ""}
@group(0) @binding(0) var<storage, read> q: array<${ty}>; // (B,Tq,H,D)
${s.decl}
@group(0) @binding(3) var<storage, read_write> out: array<${ty}>; // (B,Tq,H,D)
@group(0) @binding(4) var<storage, read_write> lse: array<f32>; // (B,H,Tq)
struct P { BH: u32, Tq: u32, H: u32, KVH: u32, Tk: u32, qStart: u32, nQB: u32, scaleLog2: f32,
           writeLse: u32 }
@group(0) @binding(5) var<uniform> p: P;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  ${qBlockHead(U, WG, R, S)}
  // Rows past Tq compute a copy of the last row and are not written.
  ${
    rs((r) =>
      `let t${r} = min(tb + ${r}u, p.Tq - 1u);
  let o${r} = ((b * p.Tq + t${r}) * p.H + h) * ${D}u;
  let qp${r} = p.qStart + t${r}; // keys j <= qp are visible`
    )
  }
  ${rs((r) => us((d) => `let q${r}_${d} = ${ld("q", `o${r}`, d)} * p.scaleLog2;`))}
  ${rs((r) => us((d) => `var a${r}_${d} = vec4f(0.0);`, " "))}
  ${rs((r) => `var m${r} = ${MASKED};\n  var l${r} = 0.0;`)}
  let kEnd = p.qStart + min((qb + 1u) * ${
    (WG / S) * R
  }u, p.Tq); // one past the block's last visible key
  for (var j = ${S > 1 ? "sl" : "0u"}; j < kEnd; j += ${S}u) {
    ${s.base("j", "g", "p.Tk", "p.KVH")}
    ${rs((r) => `var x${r} = vec4f(0.0);`, " ")}
    ${
    us((d) =>
      `{ let kk = ${s.at("kt", "j", "gx", d)}; ${
        rs((r) =>
          `x${r} = fma(q${r}_${d}, kk, x${r});`, " ")
      } }`, "\n    ")
  }
    ${
    rs((r) =>
      `let s${r} = select(${MASKED}, ${hsum(`x${r}`)}, j <= qp${r});
    if (s${r} > m${r}) { // the max grew: rescale (key 0 is visible to all, so m is real after it)
      let c = exp2(m${r} - s${r});
      m${r} = s${r};
      l${r} *= c;
      ${us((d) => `a${r}_${d} *= c;`, " ")}
    }
    let e${r} = ${
        // A split lane may meet masked keys before any visible one (m still the mask value).
        S > 1 ? `select(0.0, exp2(s${r} - m${r}), j <= qp${r})` : `exp2(s${r} - m${r})`};
    l${r} += e${r};`, "\n    ")
  }
    ${
    us((d) =>
      `{ let vv = ${s.at("vt", "j", "gx", d)}; ${
        rs((r) =>
          `a${r}_${d} = fma(vec4f(e${r}), vv, a${r}_${d});`, " ")
      } }`, "\n    ")
  }
  }
  ${merge?.body ?? ""}
  ${
    rs((r) =>
      `if (tb + ${r}u < p.Tq${S > 1 ? " && sl == 0u" : ""}) {
    let inv = 1.0 / l${r};
    ${us((d) => st("out", `o${r}`, d, `a${r}_${d} * inv`), "\n    ")}
    if (p.writeLse != 0u) { lse[bh * p.Tq + t${r}] = (m${r} + log2(l${r})) * ${Math.LN2}; }
  }`
    )
  }
}`;
}

interface Dims {
  B: number;
  T: number;
  H: number;
  KVH: number;
  D: number;
}

function dims4(op: string, name: string, t: Tensor): [number, number, number, number] {
  if (t.shape.length !== 4) {
    throw new RangeError(`${op}: ${name} has shape [${t.shape}], expected 4 dimensions (B,T,H,D)`);
  }
  if (t.dtype !== "f32") throw new TypeError(`${op}: ${name} must be f32, got ${t.dtype}`);
  return t.shape as unknown as [number, number, number, number];
}

function checkQKV(op: string, q: Tensor, k: Tensor, v: Tensor): Dims {
  const [B, T, H, D] = dims4(op, "q", q);
  const [kb, kt, KVH, kd] = dims4(op, "k", k);
  const vs = dims4(op, "v", v);
  if (kb !== B || kd !== D || kt !== T) {
    throw new RangeError(`${op}: k has shape [${k.shape}], expected (${B}, ${T}, KVH, ${D})`);
  }
  if (vs.some((d, i) => d !== k.shape[i])) {
    throw new RangeError(`${op}: v has shape [${v.shape}], expected k's shape [${k.shape}]`);
  }
  checkHeads(op, H, KVH);
  if (!B || !T || !D) throw new RangeError(`${op}: q has an empty dimension: [${q.shape}]`);
  return { B, T, H, KVH, D };
}

function checkHeads(op: string, H: number, KVH: number) {
  if (KVH < 1 || H % KVH) {
    throw new RangeError(`${op}: ${H} query heads are not a multiple of ${KVH} KV heads`);
  }
}

/** Streamed K/V: textures, or the tensors themselves with their rows per batch. */
type KvSource = { tex: [TexSlot, TexSlot] } | { buf: [Tensor, Tensor]; Tk: number };

function launchForward(
  gpu: Gpu,
  q: Tensor,
  kv: KvSource,
  out: Tensor,
  lse: Tensor,
  dm: Dims,
  qStart: number,
  writeLse: boolean,
) {
  const { B, T, H, KVH, D } = dm;
  const src: AttentionVariant = "tex" in kv ? "tex" : "buffer";
  const [WG, R, S] = kernelShape(gpu, src, "fwd", D, B * H * T, qStart + T);
  const nQB = Math.ceil(T / ((WG / S) * R));
  const pipe = gpu.pipeline(
    `attention|${D}|${src}|${WG}|${R}${S > 1 ? `|s${S}` : ""}`,
    () => forwardKernel(D, src, WG, R, S),
  );
  const kvb = "tex" in kv ? kv.tex.map((t) => t.view) : kv.buf;
  gpu.dispatch(
    pipe,
    [q, ...kvb, out, lse],
    new Params().u32(B * H).u32(T).u32(H).u32(KVH).u32("Tk" in kv ? kv.Tk : 0).u32(qStart)
      .u32(nQB).f32(LOG2E / Math.sqrt(D)).u32(writeLse ? 1 : 0),
    grid(B * H * nQB),
  );
}

/**
 * Causal attention for training: q (B,T,H,D), k and v (B,T,KVH,D), all f32 -> `{ out (B,T,H,D),
 * lse (B,H,T) }` where lse is the natural-log logsumexp of each scaled score row (kept for
 * {@link attentionBackward}). Scale 1/sqrt(D).
 *
 * @example
 * ```ts
 * import { attention } from "@lvm/kernels";
 * import { getGpu } from "@lvm/gpu";
 * const gpu = await getGpu();
 * const x = gpu.upload([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 1, 4]); // B=1, T=2, H=1, D=4
 * const { out } = attention(gpu, x, x, x);
 * console.log(await gpu.read(out)); // row 0 = v[0]; row 1 ~ v[1] (its score dominates)
 * ```
 */
export function attention(
  gpu: Gpu,
  q: Tensor,
  k: Tensor,
  v: Tensor,
): { out: Tensor; lse: Tensor } {
  const dm = checkQKV("attention", q, k, v);
  const out = gpu.empty(q.shape); // (B,T,H,D)
  const lse = gpu.empty([dm.B, dm.H, dm.T]); // (B,H,T)
  const kv: KvSource = pickVariant(gpu, dm.B) === "tex"
    ? { tex: [packed(gpu, 0, k), packed(gpu, 1, v)] }
    : { buf: [k, v], Tk: dm.T };
  launchForward(gpu, q, kv, out, lse, dm, 0, true);
  return { out, lse };
}

// ---------------------------------------------------------------------------------------------
// Backward.

function dqKernel(D: number, src: AttentionVariant, WG: number, R: number, S = 1): string {
  const { U, ty, ld, st } = rows(D);
  const s = streamed(src, D, ["kt", "vt"], 1);
  const rs = (f: (r: number) => string, sep?: string) => rep(R, f, sep);
  const us = (f: (d: number) => string, sep?: string) => rep(U, f, sep);
  const merge = S > 1 ? splitMerge(WG, S, U, [names(U, "a0_")], false) : null;
  return `${merge?.decl ?? ""}
@group(0) @binding(0) var<storage, read> q: array<${ty}>; // (B,T,H,D)
${s.decl}
@group(0) @binding(3) var<storage, read> dout: array<${ty}>; // (B,T,H,D)
@group(0) @binding(4) var<storage, read> out: array<${ty}>; // (B,T,H,D)
@group(0) @binding(5) var<storage, read> lse: array<f32>; // (B,H,T)
@group(0) @binding(6) var<storage, read_write> dq: array<${ty}>; // (B,T,H,D)
@group(0) @binding(7) var<storage, read_write> delta: array<f32>; // (B,H,T): Di = rowsum(dO*O)
struct P { BH: u32, T: u32, H: u32, KVH: u32, nQB: u32, scaleLog2: f32, scale: f32 }
@group(0) @binding(8) var<uniform> p: P;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  ${qBlockHead(U, WG, R, S)}
  ${
    rs((r) =>
      `let t${r} = min(tb + ${r}u, p.T - 1u);
  let o${r} = ((b * p.T + t${r}) * p.H + h) * ${D}u;`
    )
  }
  ${rs((r) => us((d) => `let q${r}_${d} = ${ld("q", `o${r}`, d)} * p.scaleLog2;`))}
  ${rs((r) => us((d) => `let g${r}_${d} = ${ld("dout", `o${r}`, d)};`))}
  ${
    rs((r) =>
      `var di${r} = vec4f(0.0);
  ${us((d) => `di${r} = fma(g${r}_${d}, ${ld("out", `o${r}`, d)}, di${r});`)}
  let dd${r} = ${hsum(`di${r}`)};
  let L${r} = lse[bh * p.T + t${r}] * ${LOG2E};`
    )
  }
  ${rs((r) => us((d) => `var a${r}_${d} = vec4f(0.0);`, " "))}
  let kEnd = min((qb + 1u) * ${(WG / S) * R}u, p.T);
  for (var j = ${S > 1 ? "sl" : "0u"}; j < kEnd; j += ${S}u) {
    ${s.base("j", "g", "p.T", "p.KVH")}
    ${us((d) => `let k${d} = ${s.at("kt", "j", "gx", d)};`, "\n    ")}
    ${rs((r) => `var x${r} = vec4f(0.0);\n    var y${r} = vec4f(0.0);`, "\n    ")}
    ${
    us((d) =>
      `{ let vv = ${s.at("vt", "j", "gx", d)}; ${
        rs((r) =>
          `x${r} = fma(q${r}_${d}, k${d}, x${r}); y${r} = fma(g${r}_${d}, vv, y${r});`, " ")
      } }`, "\n    ")
  }
    ${
    rs((r) =>
      `let ds${r} = select(0.0, exp2(${hsum(`x${r}`)} - L${r}), j <= t${r}) * (${
        hsum(`y${r}`)
      } - dd${r});
    ${
        us((d) => `a${r}_${d} = fma(vec4f(ds${r}), k${d}, a${r}_${d});`, " ")
      }`, "\n    ")
  }
  }
  ${merge?.body ?? ""}
  ${
    rs((r) =>
      `if (tb + ${r}u < p.T${S > 1 ? " && sl == 0u" : ""}) {
    ${us((d) => st("dq", `o${r}`, d, `a${r}_${d} * p.scale`), "\n    ")}
    delta[bh * p.T + t${r}] = dd${r};
  }`
    )
  }
}`;
}

function dkdvKernel(D: number, src: AttentionVariant, WG: number, R: number, S = 1): string {
  const { U, ty, ld, st } = rows(D);
  const s = streamed(src, D, ["qt", "gt"], 2);
  const rs = (f: (r: number) => string, sep?: string) => rep(R, f, sep);
  const us = (f: (d: number) => string, sep?: string) => rep(U, f, sep);
  const merge = S > 1 ? splitMerge(WG, S, U, [names(U, "a0_"), names(U, "c0_")], false) : null;
  return `${merge?.decl ?? ""}
@group(0) @binding(0) var<storage, read> k: array<${ty}>; // (B,T,KVH,D)
@group(0) @binding(1) var<storage, read> v: array<${ty}>; // (B,T,KVH,D)
${s.decl}
@group(0) @binding(4) var<storage, read> lse: array<f32>; // (B,H,T)
@group(0) @binding(5) var<storage, read> delta: array<f32>; // (B,H,T)
@group(0) @binding(6) var<storage, read_write> dk: array<${ty}>; // (B,T,KVH,D)
@group(0) @binding(7) var<storage, read_write> dv: array<${ty}>; // (B,T,KVH,D)
struct P { BKVH: u32, T: u32, H: u32, KVH: u32, nKB: u32, scaleLog2: f32, scale: f32 }
@group(0) @binding(8) var<uniform> p: P;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let w = ${WG_INDEX};
  if (w >= p.BKVH * p.nKB) { return; }
  let kb = w % p.nKB; // early key blocks first: they see the most queries
  let bg = w / p.nKB;
  let g = bg % p.KVH;
  let b = bg / p.KVH;
  ${
    S > 1
      ? `let sl = li % ${S}u; // this lane's split of the query loop
  let jb = kb * ${WG / S}u + li / ${S}u;`
      : `let jb = (kb * ${WG}u + li) * ${R}u;`
  }
  ${
    rs((r) =>
      `let j${r} = min(jb + ${r}u, p.T - 1u);
  let o${r} = ((b * p.T + j${r}) * p.KVH + g) * ${D}u;`
    )
  }
  ${rs((r) => us((d) => `let k${r}_${d} = ${ld("k", `o${r}`, d)} * p.scaleLog2;`))}
  ${rs((r) => us((d) => `let v${r}_${d} = ${ld("v", `o${r}`, d)};`))}
  ${rs((r) => us((d) => `var a${r}_${d} = vec4f(0.0);`, " "))}
  ${rs((r) => us((d) => `var c${r}_${d} = vec4f(0.0);`, " "))}
  let rep = p.H / p.KVH;
  for (var hh = 0u; hh < rep; hh++) {
    let h = g * rep + hh;
    let hx = h * ${U}u;
    let rowBase = (b * p.H + h) * p.T;
    for (var i = kb * ${(WG / S) * R}u${S > 1 ? " + sl" : ""}; i < p.T; i += ${S}u) {
      ${s.base("i", "h", "p.T", "p.H")}
      let L = lse[rowBase + i] * ${LOG2E};
      let dd = delta[rowBase + i];
      ${us((d) => `let q${d} = ${s.at("qt", "i", "hx", d)};`, "\n      ")}
      ${us((d) => `let g${d} = ${s.at("gt", "i", "hx", d)};`, "\n      ")}
      ${
    rs((r) =>
      `var x${r} = vec4f(0.0);
      var y${r} = vec4f(0.0);
      ${
        us(
          (d) => `x${r} = fma(q${d}, k${r}_${d}, x${r}); y${r} = fma(g${d}, v${r}_${d}, y${r});`,
          " ",
        )
      }
      let e${r} = select(0.0, exp2(${hsum(`x${r}`)} - L), i >= j${r});
      let ds${r} = e${r} * (${hsum(`y${r}`)} - dd);
      ${us((d) => `c${r}_${d} = fma(vec4f(e${r}), g${d}, c${r}_${d});`, " ")}
      ${us((d) => `a${r}_${d} = fma(vec4f(ds${r}), q${d}, a${r}_${d});`, " ")}`, "\n      ")
  }
    }
  }
  ${merge?.body ?? ""}
  ${
    rs((r) =>
      `if (jb + ${r}u < p.T${S > 1 ? " && sl == 0u" : ""}) {
    ${us((d) => st("dk", `o${r}`, d, `a${r}_${d} * p.scale`), "\n    ")}
    ${us((d) => st("dv", `o${r}`, d, `c${r}_${d}`), "\n    ")}
  }`
    )
  }
}`;
}

/**
 * Backward of {@link attention}: given its inputs, its `out` and `lse`, and dout (B,T,H,D),
 * returns `{ dq (B,T,H,D), dk (B,T,KVH,D), dv (B,T,KVH,D) }`. No float atomics: dk/dv sum over
 * queries (and over the heads of a GQA group) inside the invocation that owns the key.
 */
export function attentionBackward(
  gpu: Gpu,
  q: Tensor,
  k: Tensor,
  v: Tensor,
  out: Tensor,
  lse: Tensor,
  dout: Tensor,
): { dq: Tensor; dk: Tensor; dv: Tensor } {
  const op = "attentionBackward";
  const { B, T, H, KVH, D } = checkQKV(op, q, k, v);
  for (const [name, t] of [["out", out], ["dout", dout]] as const) {
    if (t.size !== q.size || t.dtype !== "f32") {
      throw new RangeError(`${op}: ${name} is [${t.shape}] ${t.dtype}, expected [${q.shape}] f32`);
    }
  }
  if (lse.size !== B * H * T || lse.dtype !== "f32") {
    throw new RangeError(
      `${op}: lse is [${lse.shape}] ${lse.dtype}, expected [${B},${H},${T}] f32`,
    );
  }
  const src = pickVariant(gpu, B);
  const dq = gpu.empty(q.shape); // (B,T,H,D)
  const dk = gpu.empty(k.shape); // (B,T,KVH,D)
  const dv = gpu.empty(v.shape); // (B,T,KVH,D)
  const delta = gpu.empty([B, H, T]); // (B,H,T)
  const scaleLog2 = LOG2E / Math.sqrt(D), scale = 1 / Math.sqrt(D);
  const tex = src === "tex";
  const kvb = tex ? [packed(gpu, 0, k).view, packed(gpu, 1, v).view] : [k, v];
  const [WGq, Rq, Sq] = kernelShape(gpu, src, "dq", D, B * H * T, T);
  const nQB = Math.ceil(T / ((WGq / Sq) * Rq));
  gpu.dispatch(
    gpu.pipeline(
      `attentionDq|${D}|${src}|${WGq}|${Rq}${Sq > 1 ? `|s${Sq}` : ""}`,
      () => dqKernel(D, src, WGq, Rq, Sq),
    ),
    [q, ...kvb, dout, out, lse, dq, delta],
    new Params().u32(B * H).u32(T).u32(H).u32(KVH).u32(nQB).f32(scaleLog2).f32(scale),
    grid(B * H * nQB),
  );
  // The same two scratch textures now take q and dout: WebGPU orders the packs after the dq reads.
  const qgb = tex ? [packed(gpu, 0, q).view, packed(gpu, 1, dout).view] : [q, dout];
  const [WGk, Rk, Sk] = kernelShape(gpu, src, "dkdv", D, B * KVH * T, T);
  const nKB = Math.ceil(T / ((WGk / Sk) * Rk));
  gpu.dispatch(
    gpu.pipeline(
      `attentionDkDv|${D}|${src}|${WGk}|${Rk}${Sk > 1 ? `|s${Sk}` : ""}`,
      () => dkdvKernel(D, src, WGk, Rk, Sk),
    ),
    [k, v, ...qgb, lse, delta, dk, dv],
    new Params().u32(B * KVH).u32(T).u32(H).u32(KVH).u32(nKB).f32(scaleLog2).f32(scale),
    grid(B * KVH * nKB),
  );
  delta.release();
  return { dq, dk, dv };
}

// ---------------------------------------------------------------------------------------------
// KV cache and decode.

/** Sizes of a layer's KV storage: B sequences, positions 0..maxT-1, KVH heads of D. */
export interface KvDims {
  B: number;
  maxT: number;
  KVH: number;
  D: number;
}

/**
 * The keys and values of one attention layer as {@link kvWrite} and {@link attentionDecode} read
 * them: plain storage and its layout (the cache that owns them, with positions and release, is
 * @lvm/transformer's `KvCache`).
 * - "buffer": K and V are (B, maxT, KVH, D) f32 tensors.
 * - "tex": K and V are rgba32float texture arrays made by {@link makeKvTexture}, texel
 *   (g*ceil(D/4) + d/4, position, b).
 */
export type KvBuffers =
  & KvDims
  & ({ layout: "buffer"; k: Tensor; v: Tensor } | { layout: "tex"; k: TexSlot; v: TexSlot });

/**
 * The KV layout decode reads fastest on this adapter ("tex" on CPU adapters, "buffer" on GPUs), or
 * `prefer`, falling back to "buffer" where the textures would pass the adapter's limits.
 */
export function kvLayout(gpu: Gpu, dims: KvDims, prefer?: AttentionVariant): AttentionVariant {
  checkKvDims("kvLayout", dims);
  const { B, maxT, KVH, D } = dims;
  const layout = prefer ?? pickVariant(gpu, B);
  const W = KVH * Math.ceil(D / 4), lim = gpu.limits;
  const fits = B <= lim.maxTextureArrayLayers && W <= lim.maxTextureDimension2D &&
    maxT <= lim.maxTextureDimension2D;
  return layout === "tex" && !fits ? "buffer" : layout;
}

/** Allocates one (zeroed) texture of the "tex" KV layout for K or V of these sizes. */
export function makeKvTexture(gpu: Gpu, dims: KvDims, label: string): TexSlot {
  checkKvDims("makeKvTexture", dims);
  const { B, maxT, KVH, D } = dims;
  return makeTexture(gpu, KVH * Math.ceil(D / 4), maxT, B, label, { usage: texUsage() });
}

function checkKvDims(op: string, dims: KvDims): void {
  for (const name of ["B", "maxT", "KVH", "D"] as const) {
    const x = dims[name];
    if (!Number.isInteger(x) || x < 1) {
      throw new RangeError(`${op}: ${name} must be a positive integer, got ${x}`);
    }
  }
}

/**
 * Writes the keys and values of n new tokens, k and v (B,n,KVH,D), at positions pos..pos+n-1 of
 * the KV storage (recorded: a pack dispatch per tensor, or buffer copies).
 */
export function kvWrite(gpu: Gpu, kv: KvBuffers, k: Tensor, v: Tensor, pos: number): void {
  const op = "kvWrite";
  const { B, maxT, KVH, D } = kv;
  for (const [name, t] of [["k", k], ["v", v]] as const) {
    const [tb, , th, td] = dims4(op, name, t);
    if (tb !== B || th !== KVH || td !== D || t.shape[1] !== k.shape[1]) {
      throw new RangeError(
        `${op}: ${name} has shape [${t.shape}], expected (${B}, n, ${KVH}, ${D})`,
      );
    }
  }
  const n = k.shape[1];
  if (!Number.isInteger(pos) || pos < 0 || pos + n > maxT) {
    throw new RangeError(`${op}: positions ${pos}..${pos + n - 1} do not fit a cache of ${maxT}`);
  }
  if (kv.layout === "tex") {
    pack(gpu, k, kv.k, pos);
    pack(gpu, v, kv.v, pos);
    return;
  }
  const row = KVH * D * 4; // bytes per position
  for (const [src, dst] of [[k, kv.k], [v, kv.v]]) {
    for (let b = 0; b < B; b++) gpu.copy(src, dst, n * row, b * n * row, (b * maxT + pos) * row);
  }
}

function decodePartialKernel(D: number, src: AttentionVariant, WGD: number): string {
  const { U, ty, ld } = rows(D);
  const s = streamed(src, D, ["kt", "vt"], 1);
  const us = (f: (d: number) => string, sep?: string) => rep(U, f, sep);
  return `
@group(0) @binding(0) var<storage, read> q: array<${ty}>; // (B,n,H,D)
${s.decl}
@group(0) @binding(3) var<storage, read_write> pacc: array<vec4f>; // (rows, splits*WGD, U)
@group(0) @binding(4) var<storage, read_write> pml: array<vec2f>; // (rows, splits*WGD): m, l
struct P { rows: u32, n: u32, H: u32, KVH: u32, maxT: u32, lenPrev: u32, splits: u32,
           keysPerSplit: u32, scaleLog2: f32 }
@group(0) @binding(5) var<uniform> p: P;

@compute @workgroup_size(${WGD})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let w = ${WG_INDEX};
  if (w >= p.rows * p.splits) { return; }
  let split = w % p.splits;
  let row = w / p.splits; // (b * n + i) * H + h
  let h = row % p.H;
  let i = (row / p.H) % p.n;
  let b = row / (p.H * p.n);
  let g = h / (p.H / p.KVH);
  let gx = g * ${U}u;
  let qpos = p.lenPrev + i;
  ${us((d) => `let q${d} = ${ld("q", `row * ${D}u`, d)} * p.scaleLog2;`)}
  ${us((d) => `var a${d} = vec4f(0.0);`, " ")}
  var m = ${MASKED};
  var l = 0.0;
  let j0 = split * p.keysPerSplit;
  let j1 = min(j0 + p.keysPerSplit, qpos + 1u);
  for (var j = j0 + li; j < j1; j += ${WGD}u) {
    ${s.base("j", "g", "p.maxT", "p.KVH")}
    var x = vec4f(0.0);
    ${us((d) => `x = fma(q${d}, ${s.at("kt", "j", "gx", d)}, x);`, "\n    ")}
    let sc = ${hsum("x")};
    ${onlineStep(U, "m", "l", (d) => `a${d}`, (d) => s.at("vt", "j", "gx", d))}
  }
  let slot = (row * p.splits + split) * ${WGD}u + li;
  pml[slot] = vec2f(m, l);
  ${us((d) => `pacc[slot * ${U}u + ${d}u] = a${d};`)}
}`;
}

/**
 * The split-K decode's merge of the `parts` partial states per row. `WG` = 1 (the cpu kind): one
 * invocation walks a row's parts. `WG` > 1 (GPUs): WG lanes take every WG-th part each, and their
 * states merge through workgroup memory ({@link splitMerge}); one lane per row spent 14.3 of a
 * `100m`-shaped decode step's 17.2 ms of attention GPU time on an H200 (`deno task bench --filter
 * "attention decode"`: 22 layers, 3840 cached keys, 256 parts per row).
 */
function decodeCombineKernel(D: number, WG = 1): string {
  const { U, ty, st } = rows(D);
  if (WG > 1) {
    const merge = splitMerge(WG, WG, U, [names(U, "a0_")], true);
    return `${merge.decl}
@group(0) @binding(0) var<storage, read> pacc: array<vec4f>;
@group(0) @binding(1) var<storage, read> pml: array<vec2f>;
@group(0) @binding(2) var<storage, read_write> out: array<${ty}>; // (B,n,H,D)
struct P { rows: u32, parts: u32 }
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let row = ${WG_INDEX};
  if (row >= p.rows) { return; }
  let sl = li;
  let base = row * p.parts;
  var m0 = ${MASKED};
  for (var s = li; s < p.parts; s += ${WG}u) { m0 = max(m0, pml[base + s].x); }
  var l0 = 0.0;
  ${rep(U, (d) => `var a0_${d} = vec4f(0.0);`, " ")}
  for (var s = li; s < p.parts; s += ${WG}u) {
    let ml = pml[base + s];
    let f = exp2(ml.x - m0); // parts that saw no key have l = 0 and add nothing
    l0 += f * ml.y;
    let o = (base + s) * ${U}u;
    ${rep(U, (d) => `a0_${d} = fma(vec4f(f), pacc[o + ${d}u], a0_${d});`, " ")}
  }
  ${merge.body}
  if (li == 0u) {
    let inv = 1.0 / l0;
    ${rep(U, (d) => st("out", `row * ${D}u`, d, `a0_${d} * inv`))}
  }
}`;
  }
  return `
@group(0) @binding(0) var<storage, read> pacc: array<vec4f>;
@group(0) @binding(1) var<storage, read> pml: array<vec2f>;
@group(0) @binding(2) var<storage, read_write> out: array<${ty}>; // (B,n,H,D)
struct P { rows: u32, parts: u32 }
@group(0) @binding(3) var<uniform> p: P;

@compute @workgroup_size(1)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let row = ${WG_INDEX};
  if (row >= p.rows) { return; }
  let base = row * p.parts;
  var M = ${MASKED};
  for (var s = 0u; s < p.parts; s++) { M = max(M, pml[base + s].x); }
  var L = 0.0;
  ${rep(U, (d) => `var a${d} = vec4f(0.0);`, " ")}
  for (var s = 0u; s < p.parts; s++) {
    let ml = pml[base + s];
    let f = exp2(ml.x - M); // parts that saw no key have l = 0 and add nothing
    L += f * ml.y;
    let o = (base + s) * ${U}u;
    ${rep(U, (d) => `a${d} = fma(vec4f(f), pacc[o + ${d}u], a${d});`, " ")}
  }
  let inv = 1.0 / L;
  ${rep(U, (d) => st("out", `row * ${D}u`, d, `a${d} * inv`))}
}`;
}

/** New tokens from which decode uses the forward kernel instead of split-K. */
const DECODE_PREFILL_FROM = 16;
/** Keys per split-K workgroup (at least), and the workgroups a decode aims for. */
const DECODE_MIN_KEYS = 512;
const DECODE_WORKGROUPS = 32;

/** Options of {@link attentionDecode}. */
export interface AttentionDecodeOptions {
  /** Force the kernel: "split" (split-K over the cache) or "rows" (the forward kernel). */
  kernel?: "split" | "rows";
  /** Key slices per query for "split" (default: ~32 workgroups of >= 512 keys). */
  splits?: number;
}

/**
 * Attention of n new tokens against a layer's KV storage. q (B,n,H,D) holds the queries of the
 * tokens at positions lenPrev .. lenPrev+n-1; `store` must already hold keys/values for positions
 * 0 .. lenPrev+n-1 (write the new ones with {@link kvWrite} first). Query i attends to keys
 * 0 .. lenPrev+i (causal among the new tokens). Returns out (B,n,H,D).
 */
export function attentionDecode(
  gpu: Gpu,
  q: Tensor,
  store: KvBuffers,
  lenPrev: number,
  options: AttentionDecodeOptions = {},
): Tensor {
  const op = "attentionDecode";
  const [B, n, H, D] = dims4(op, "q", q);
  const { KVH, maxT } = store;
  if (B !== store.B || D !== store.D) {
    throw new RangeError(
      `${op}: q has shape [${q.shape}], expected (${store.B}, n, H, ${store.D}) for this cache`,
    );
  }
  checkHeads(op, H, KVH);
  if (!Number.isInteger(lenPrev) || lenPrev < 0 || lenPrev + n > maxT || !n) {
    throw new RangeError(
      `${op}: ${n} new tokens after ${lenPrev} do not fit a cache of ${maxT} positions`,
    );
  }
  const src = store.layout;
  const out = gpu.empty(q.shape); // (B,n,H,D)
  const kv: KvSource = store.layout === "tex"
    ? { tex: [store.k, store.v] }
    : { buf: [store.k, store.v], Tk: maxT };
  const kernel = options.kernel ?? (n >= DECODE_PREFILL_FROM ? "rows" : "split");
  if (kernel === "rows") {
    const lse = gpu.empty([1]); // not written (writeLse = 0)
    launchForward(gpu, q, kv, out, lse, { B, T: n, H, KVH, D }, lenPrev, false);
    lse.release();
    return out;
  }
  const WGD = attentionTuning[src].decodeLanes;
  const rowsN = B * n * H;
  const keys = lenPrev + n;
  const splits = options.splits ??
    Math.max(1, Math.min(Math.ceil(keys / DECODE_MIN_KEYS), Math.ceil(DECODE_WORKGROUPS / rowsN)));
  const keysPerSplit = Math.ceil(keys / splits);
  const parts = splits * WGD;
  const U = Math.ceil(D / 4);
  const pacc = gpu.empty([rowsN * parts * U * 4]);
  const pml = gpu.empty([rowsN * parts * 2]);
  const kvb = "tex" in kv ? kv.tex.map((t) => t.view) : kv.buf;
  gpu.dispatch(
    gpu.pipeline(`attentionDecode|${D}|${src}|${WGD}`, () => decodePartialKernel(D, src, WGD)),
    [q, ...kvb, pacc, pml],
    new Params().u32(rowsN).u32(n).u32(H).u32(KVH).u32(maxT).u32(lenPrev).u32(splits)
      .u32(keysPerSplit).f32(LOG2E / Math.sqrt(D)),
    grid(rowsN * splits),
  );
  // One lane per row on the cpu kind; on GPUs a workgroup per row (up to 64 lanes, fewer where
  // the merge buffer would not fit, or where there are fewer parts).
  const WGC = gpu.kind === "cpu"
    ? 1
    : splitLanes(gpu, Math.min(64, 2 ** Math.ceil(Math.log2(parts))), 1, U);
  gpu.dispatch(
    gpu.pipeline(`attentionDecodeCombine|${D}|${WGC}`, () => decodeCombineKernel(D, WGC)),
    [pacc, pml, out],
    new Params().u32(rowsN).u32(parts),
    grid(rowsN),
  );
  pacc.release();
  pml.release();
  return out;
}

// ---------------------------------------------------------------------------------------------
// CPU references (f64).

/** Shapes of the CPU references: q is (B,Tq,H,D); k, v are (B,Tk,KVH,D). */
export interface AttentionCpuDims {
  B: number;
  Tq: number;
  H: number;
  KVH: number;
  D: number;
  /** Rows of k/v per batch (default Tq). */
  Tk?: number;
  /** Position of query 0 (default 0): query t sees keys 0..qStart+t. */
  qStart?: number;
}

/** CPU reference of causal attention (f64): `{ out (B,Tq,H,D), lse (B,H,Tq) }`. */
export function attentionCpu(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  { B, Tq, H, KVH, D, Tk = Tq, qStart = 0 }: AttentionCpuDims,
): { out: Float32Array; lse: Float32Array } {
  const out = new Float32Array(B * Tq * H * D), lse = new Float32Array(B * H * Tq);
  const scale = 1 / Math.sqrt(D), rep = H / KVH;
  const s = new Float64Array(Tk);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / rep);
      for (let t = 0; t < Tq; t++) {
        const qo = ((b * Tq + t) * H + h) * D, nk = qStart + t + 1;
        let m = -Infinity;
        for (let j = 0; j < nk; j++) {
          const ko = ((b * Tk + j) * KVH + g) * D;
          let a = 0;
          for (let d = 0; d < D; d++) a += q[qo + d] * k[ko + d];
          s[j] = a * scale;
          m = Math.max(m, s[j]);
        }
        let l = 0;
        for (let j = 0; j < nk; j++) l += s[j] = Math.exp(s[j] - m);
        for (let d = 0; d < D; d++) {
          let a = 0;
          for (let j = 0; j < nk; j++) a += s[j] * v[((b * Tk + j) * KVH + g) * D + d];
          out[qo + d] = a / l;
        }
        lse[(b * H + h) * Tq + t] = m + Math.log(l);
      }
    }
  }
  return { out, lse };
}

/** CPU reference of {@link attentionBackward} (analytic, f64; recomputes the forward). */
export function attentionBackwardCpu(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  dout: ArrayLike<number>,
  { B, Tq: T, H, KVH, D }: AttentionCpuDims,
): { dq: Float32Array; dk: Float32Array; dv: Float32Array } {
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length);
  const dv = new Float64Array(v.length);
  const scale = 1 / Math.sqrt(D), rep = H / KVH;
  const P = new Float64Array(T), dP = new Float64Array(T);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < H; h++) {
      const g = Math.floor(h / rep);
      for (let t = 0; t < T; t++) {
        const qo = ((b * T + t) * H + h) * D;
        let m = -Infinity;
        for (let j = 0; j <= t; j++) {
          const ko = ((b * T + j) * KVH + g) * D;
          let a = 0;
          for (let d = 0; d < D; d++) a += q[qo + d] * k[ko + d];
          P[j] = a * scale;
          m = Math.max(m, P[j]);
        }
        let l = 0;
        for (let j = 0; j <= t; j++) l += P[j] = Math.exp(P[j] - m);
        let Di = 0;
        for (let j = 0; j <= t; j++) {
          P[j] /= l;
          const ko = ((b * T + j) * KVH + g) * D;
          let a = 0;
          for (let d = 0; d < D; d++) a += dout[qo + d] * v[ko + d];
          dP[j] = a;
          Di += P[j] * a; // = rowsum(dO * O)
        }
        for (let j = 0; j <= t; j++) {
          const ko = ((b * T + j) * KVH + g) * D;
          const ds = P[j] * (dP[j] - Di) * scale;
          for (let d = 0; d < D; d++) {
            dq[qo + d] += ds * k[ko + d];
            dk[ko + d] += ds * q[qo + d];
            dv[ko + d] += P[j] * dout[qo + d];
          }
        }
      }
    }
  }
  return { dq: Float32Array.from(dq), dk: Float32Array.from(dk), dv: Float32Array.from(dv) };
}
