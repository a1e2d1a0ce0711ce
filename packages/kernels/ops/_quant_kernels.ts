/**
 * WGSL of the block-quantized matrix kernels (private to ops/quant_matmul.ts). Every kernel reads a
 * weight W [N, K] stored as GGML blocks split for the GPU (@lvm/weights' `splitBlocks`): `qs`, the
 * quants of block `n*nb + b` (row n, columns 32b..32b+31; nb = K/32 blocks per row) as one
 * `vec4<u32>` (Q4_0) or two (Q8_0), and `sc`, the f16 scales, two per u32 (block i in half i&1 of
 * word i>>1). Dequantization happens in registers or workgroup memory, never into a full copy:
 *
 * - Q4_0, word i of a block (bytes 4i..4i+3): the nibble at bit 8t is element 4i+t, the nibble at
 *   bit 8t+4 is element 16+4i+t; value (q - 8) * d.
 * - Q8_0, word i of a block: byte t (bits 8t..8t+7) is element 4i+t, an int8; value q * d.
 *
 * So word i of a block pairs with columns 4i..4i+3 of x (one vec4), plus 16+4i.. for Q4_0's high
 * nibbles: x is read as vec4s in the same order as the quants.
 *
 * Two places the blocks may live ({@link QuantLayout}), read by every kernel through the accessors
 * of {@link quantSource} (`quant(n, c)`: texel c of row n, c = b for Q4_0, 2b and 2b+1 for Q8_0;
 * `scale(n, b)`):
 * - `storage`: `qs` (vec4<u32> per texel, rows after rows) and `sc` (u32, two scales per word, block
 *   i in half i&1 of word i>>1), storage buffers (real GPUs).
 * - `texture`: two rgba32uint 2D-array textures (llvmpipe, where a texel fetch is a vectorized
 *   gather and a storage load a loop over the lanes): texel c of row n's quants, and texel j of its
 *   scales holding blocks 8j..8j+7 (rows padded to a multiple of 8 blocks), with the rows of a
 *   group of 8 side by side ({@link texAt}): texel c of rows 8g..8g+7 at x = 8c..8c+7 of y = g, so
 *   the 8 lanes that llvmpipe runs together, on 8 adjacent rows, fetch 128 (256) neighbouring
 *   bytes, not 8 texels a row apart (measured: the Q4_0 GEMVs 1.1-1.5x faster, most at long K).
 *   Groups past 2^RS go to the next layer.
 * @module
 */
import type { QuantType } from "@lvm/weights";

/** Where a weight's blocks live (see the module doc). */
export type QuantLayout = "storage" | "texture";

/**
 * WGSL texture coordinates (`coords, layer` for a 2D-array textureLoad/textureStore) of texel `c`
 * of row `n` in the texture layout: x = 8c + n % 8, y = (n / 8) % 2^rs, layer (n / 8) >> rs.
 * `n` and `c` are WGSL u32 expressions.
 */
export function texAt(n: string, c: string, rs: number): string {
  return `vec2u((${c}) * 8u + ((${n}) & 7u), ((${n}) >> 3u) & ${(1 << rs) - 1}u), (${n}) >> ${
    rs + 3
  }u`;
}

/** Size [width, height, layers] of a texture-layout texture of W texels per row, N rows. */
export function texSize(W: number, N: number, rs: number): [number, number, number] {
  const groups = Math.ceil(N / 8);
  return [W * 8, Math.min(groups, 2 ** rs), Math.ceil(groups / 2 ** rs)];
}

/**
 * WGSL bindings 1 and 2 (quants, scales) of a kernel reading `layout`, and its accessors
 * `quant(n, c) -> vec4<u32>` and `scale(n, b) -> f32`. Storage needs the kernel's `p.nb`
 * (blocks per row); `rs`: log2 of the texture rows per layer.
 */
export function quantSource(type: QuantType, layout: QuantLayout, rs = 14): string {
  const T = texels(type);
  if (layout === "storage") {
    return `@group(0) @binding(1) var<storage, read> qs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> sc: array<u32>;
fn quant(n: u32, c: u32) -> vec4<u32> { return qs[n * p.nb * ${T}u + c]; }
fn scale(n: u32, b: u32) -> f32 { let i = n * p.nb + b; return unpack2x16float(sc[i >> 1u])[i & 1u]; }`;
  }
  const at = (x: string) => texAt("n", x, rs);
  return `@group(0) @binding(1) var tq: texture_storage_2d_array<rgba32uint, read>;
@group(0) @binding(2) var ts: texture_storage_2d_array<rgba32uint, read>;
fn quant(n: u32, c: u32) -> vec4<u32> { return textureLoad(tq, ${at("c")}); }
fn scale(n: u32, b: u32) -> f32 {
  return unpack2x16float(textureLoad(ts, ${at("b >> 3u")})[(b >> 1u) & 3u])[b & 1u];
}`;
}

/** Texels (vec4<u32>) per block: 1 for Q4_0, 2 for Q8_0. */
export function texels(type: QuantType): number {
  return type === "Q4_0" ? 1 : 2;
}

/** Quant words per block. */
export function blockWords(type: QuantType): number {
  return type === "Q4_0" ? 4 : 8;
}

/**
 * WGSL that sets `v0..v7` (vec4f) to the dequantized block, without the scale: v_i pairs with x
 * columns 4i..4i+3 of the block. `q` names the block's first vec4<u32> (Q8_0: `q` and `q1`).
 * `off` subtracts Q4_0's 8 per element (false when the kernel folds it into x's block sum).
 */
function unpackBlock(type: QuantType, off = true): string {
  if (type === "Q4_0") {
    const m = off ? " - 8.0" : "";
    return [0, 1, 2, 3].map((i) =>
      `let v${i} = vec4f((vec4u(q[${i}]) >> vec4u(0u, 8u, 16u, 24u)) & vec4u(15u))${m}; ` +
      `let v${4 + i} = vec4f((vec4u(q[${i}]) >> vec4u(4u, 12u, 20u, 28u)) & vec4u(15u))${m};`
    ).join("\n    ");
  }
  // Sign-extend byte t of a word: shift it to the top, arithmetic shift back down.
  return [0, 1, 2, 3, 4, 5, 6, 7].map((i) =>
    `let v${i} = vec4f((vec4i(bitcast<i32>(${i < 4 ? "q" : "q1"}[${
      i % 4
    }])) << vec4u(24u, 16u, 8u, 0u)) >> vec4u(24u));`
  ).join("\n    ");
}

/** WGSL loading block `blk`'s quants into `q` (and `q1`) from `qs` (storage layout). */
function loadBlock(type: QuantType, blk: string): string {
  return type === "Q4_0"
    ? `let q = qs[${blk}];`
    : `let q = qs[(${blk}) * 2u]; let q1 = qs[(${blk}) * 2u + 1u];`;
}

/** WGSL loading block b of row n into `q` (and `q1`) through {@link quantSource}'s `quant`. */
function loadRowBlock(type: QuantType, n: string, b: string): string {
  return type === "Q4_0"
    ? `let q = quant(${n}, ${b});`
    : `let q = quant(${n}, (${b}) * 2u); let q1 = quant(${n}, (${b}) * 2u + 1u);`;
}

/** `fn scale(blk) -> f32`: the f16 scale of block `blk` from `sc` (u32 words). */
const SCALE_FN = `fn scale(blk: u32) -> f32 { return unpack2x16float(sc[blk >> 1u])[blk & 1u]; }`;

/** Parameters of {@link gemvKernel}. */
export const GEMV_PARAMS = `struct P { N: u32, nb: u32, b0: u32, nbc: u32, acc: u32, o0: u32 }`;

/**
 * Decode's matrix-vector product on a CPU adapter (llvmpipe): y[n] (+)= sum_k x[k] W[n, k] for the
 * blocks b0 .. b0+nbc-1 of every row (K is split into chunks that fit the uniform buffer). Each
 * invocation owns R rows of W and streams their blocks; x comes from a uniform buffer, whose loads
 * are uniform across the lanes (cheap broadcasts; a storage-buffer load with a per-lane index is a
 * loop over the lanes in llvmpipe), and is loaded once per block for all R rows. Q4_0's -8 is
 * folded into x's block sum (once per block, not once per weight). `wide`: every row's scales
 * start on a 16-byte boundary (nb % 8 == 0) and are loaded 8 blocks at a time, an eighth of the
 * per-lane loads. Output row o0 + n.
 */
export function gemvKernel(type: QuantType, R: number, wide: boolean, WG = 64): string {
  const rs = [...Array(R).keys()];
  const q4 = type === "Q4_0";
  const xs = [0, 1, 2, 3, 4, 5, 6, 7];
  const row = (r: number) => {
    const d = wide
      ? `unpack2x16float(sv${r}[(kb >> 1u) & 3u])[kb & 1u]`
      : `scale(n${r} * p.nb + kb)`;
    return `{
      ${loadBlock(type, `n${r} * p.nb + kb`)}
      ${unpackBlock(type, false)}
      let a = ${xs.map((i) => `v${i} * x${i}`).join(" + ")};
      s${r} = fma(${d}, a.x + a.y + a.z + a.w${q4 ? " - xsum" : ""}, s${r});
    }`;
  };
  return `@group(0) @binding(0) var<uniform> X: array<vec4f, 4096>;
@group(0) @binding(1) var<storage, read> qs: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> sc: array<${wide ? "vec4<u32>" : "u32"}>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${GEMV_PARAMS}
@group(0) @binding(4) var<uniform> p: P;
${wide ? "" : SCALE_FN}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let nf = g.x * ${R}u;
  if (nf >= p.N) { return; }
  ${rs.map((r) => `let n${r} = min(nf + ${r}u, p.N - 1u); var s${r} = 0.0;`).join("\n  ")}
  ${wide ? rs.map((r) => `var sv${r} = vec4u(0u);`).join(" ") : ""}
  for (var b = 0u; b < p.nbc; b++) {
    let kb = p.b0 + b;
    ${xs.map((i) => `let x${i} = X[b * 8u + ${i}u];`).join(" ")}
    ${
    q4
      ? `let xa = ${
        xs.map((i) => `x${i}`).join(" + ")
      }; let xsum = 8.0 * (xa.x + xa.y + xa.z + xa.w);`
      : ""
  }
    ${
    wide
      ? `if ((kb & 7u) == 0u) { ${
        rs.map((r) => `sv${r} = sc[(n${r} * p.nb + kb) / 8u];`).join(" ")
      } }`
      : ""
  }
    ${rs.map(row).join("\n    ")}
  }
  ${
    rs.map((r) =>
      `if (nf + ${r}u < p.N) { let o = p.o0 + n${r}; if (p.acc != 0u) { s${r} += out[o]; } out[o] = s${r}; }`
    ).join("\n  ")
  }
}`;
}

/**
 * Decode's matrix-vector product on llvmpipe from the texture layout: as {@link gemvKernel} (x in
 * a uniform buffer, K in chunks, Q4_0's -8 folded into x's block sums), with fewer instructions per
 * weight and the blocks fetched as texels (one rgba32uint fetch per Q4_0 block, a vectorized gather,
 * where a storage load loops over the lanes):
 * - a quant is isolated with one mask, left where it is (`w & 0xF00` is q * 2^8, exact in f32), and
 *   converted as a signed integer (one instruction, where u32 -> f32 takes several on AVX2); x is
 *   prescaled by 2^-p once per block for all R rows, so (q 2^p)(x 2^-p) = q x exactly. Q8_0's signed
 *   bytes are made unsigned by flipping their top bits (q + 128) and the 128 folded like Q4_0's 8.
 * - the 8 lanes llvmpipe runs together own 8 adjacent rows (one group of the texture layout, so
 *   their fetches of a block are one run of neighbouring texels), R rows each (rows 8r apart), and
 *   the scales of 8 blocks come in one texel; the loop steps 8 blocks (one scale texel) at a time,
 *   unrolled, so each block's scale is a constant component of it (a scale picked by a computed
 *   index cost ~15% of the kernel: llvmpipe spills the vector and reloads it per lane). Steps of
 *   1, 2 or 4 blocks (scales picked by selects) and 4 or 16 rows all ran slower, Q8_0 included.
 * x past the chunk's nbc blocks must read as zeros up to a multiple of 8 blocks (the caller pads
 * the uniform buffer); the quant texels past a row read as anything finite and the scales as 0.
 * Output row o0 + n; the chunk's first block b0 is a multiple of 8.
 */
export function gemvTexKernel(type: QuantType, R: number, rs = 14, WG = 64): string {
  const rows = [...Array(R).keys()], xs = [0, 1, 2, 3, 4, 5, 6, 7];
  const q4 = type === "Q4_0";
  const at = (n: string, x: string) => texAt(n, x, rs);
  // a: the block's 32 products (4 lanes of a vec4), before the offset and the scale.
  const words = q4
    ? [0, 1, 2, 3].map((i) =>
      `{ let w = q[${i}]; ` +
      `a = fma(vec4f(bitcast<vec4i>(vec4u(w) & vec4u(0xFu, 0xF00u, 0xF0000u, 0xF000000u))), xl${i}, a); ` +
      `a = fma(vec4f(bitcast<vec4i>(vec4u(w & 0xF0u, w & 0xF000u, w & 0xF00000u, w >> 28u))), xh${i}, a); }`
    )
    : xs.map((i) =>
      `{ let w = ${i < 4 ? `q[${i}]` : `q1[${i - 4}]`} ^ 0x80808080u; ` +
      `a = fma(vec4f(bitcast<vec4i>(vec4u(w & 0xFFu, w & 0xFF00u, w & 0xFF0000u, w >> 24u))), xs${i}, a); }`
    );
  const row = (r: number, j: number) =>
    `{
        let q = textureLoad(tq, ${at(`n${r}`, `kb * ${texels(type)}u`)});${
      q4 ? "" : `\n        let q1 = textureLoad(tq, ${at(`n${r}`, "kb * 2u + 1u")});`
    }
        var a = vec4f(0.0);
        ${words.join("\n        ")}
        s${r} = fma(unpack2x16float(sv${r}[${j >> 1}])[${
      j & 1
    }], a.x + a.y + a.z + a.w - xsum, s${r});
      }`;
  // 2^-p for the quant at bit p of its word.
  const prescale = q4
    ? [0, 1, 2, 3].map((i) =>
      `let xl${i} = x${i} * vec4f(1.0, 0.00390625, 1.52587890625e-05, 5.9604644775390625e-08); ` +
      `let xh${i} = x${4 + i} * vec4f(0.0625, 0.000244140625, 9.5367431640625e-07, 1.0);`
    ).join("\n      ")
    : xs.map((i) => `let xs${i} = x${i} * vec4f(1.0, 0.00390625, 1.52587890625e-05, 1.0);`).join(
      "\n      ",
    );
  const block = (j: number) =>
    `{
      let b = g8 + ${j}u; let kb = p.b0 + b;
      ${xs.map((i) => `let x${i} = X[b * 8u + ${i}u];`).join(" ")}
      let xa = ${xs.map((i) => `x${i}`).join(" + ")};
      let xsum = ${q4 ? "8.0" : "128.0"} * (xa.x + xa.y + xa.z + xa.w);
      ${prescale}
      ${rows.map((r) => row(r, j)).join("\n      ")}
    }`;
  const body = `for (var g8 = 0u; g8 < p.nbc; g8 += 8u) {
    ${scaleTexels(R, rs)}
    ${xs.map(block).join("\n    ")}
  }`;
  return `@group(0) @binding(0) var<uniform> X: array<vec4f, 4096>;
@group(0) @binding(1) var tq: texture_storage_2d_array<rgba32uint, read>;
@group(0) @binding(2) var ts: texture_storage_2d_array<rgba32uint, read>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${GEMV_PARAMS}
@group(0) @binding(4) var<uniform> p: P;
${rowGroupMain(R, WG, body)}`;
}

/**
 * WGSL `main` of the GEMVs whose 8 adjacent lanes own 8 adjacent rows, R rows each, 8 apart
 * ({@link gemvTexKernel}, {@link gemvIntKernel}): rows n_r (clamped into [0, N)) and sums s_r,
 * `body` (the loop over the chunk's blocks), then each s_r written to output row o0 + n_r (added
 * to it where p.acc).
 */
function rowGroupMain(R: number, WG: number, body: string): string {
  const rows = [...Array(R).keys()];
  return `@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let base = (g.x / 8u) * ${8 * R}u + g.x % 8u;
  if (base >= p.N) { return; }
  ${rows.map((r) => `let n${r} = min(base + ${8 * r}u, p.N - 1u); var s${r} = 0.0;`).join("\n  ")}
  ${body}
  ${
    rows.map((r) =>
      `if (base + ${
        8 * r
      }u < p.N) { let o = p.o0 + n${r}; if (p.acc != 0u) { s${r} += out[o]; } out[o] = s${r}; }`
    ).join("\n  ")
  }
}`;
}

/** WGSL: sv_r, the scale texel of blocks b0 + g8 .. b0 + g8 + 7 of row n_r (texture layout). */
function scaleTexels(R: number, rs: number): string {
  return [...Array(R).keys()].map((r) =>
    `let sv${r} = textureLoad(ts, ${texAt(`n${r}`, "(p.b0 + g8) >> 3u", rs)});`
  ).join(" ");
}

/**
 * x quantized for {@link gemvIntKernel} (GGML's Q8_0 of an activation row, as llama.cpp's integer
 * dot products use it, with an f32 scale): per block of 32, dx = max|x| / 127 and
 * xq = round(x / dx) in [-127, 127] (round half to even; computed as x * (1 / dx)). Record of block
 * b: 8 vec4<u32> from XQ_STRIDE * b of the buffer (64 KiB: at most 512 blocks per chunk):
 * - 0..3: the 16 pair multipliers A_t = xq[4t+2] + xq[4t] 2^16, B_t = xq[4t+3] + xq[4t+1] 2^16
 *   (t = 0..7, u32 wrapping), record word 4j + c: A_{2j+c/2} for even c, B_{2j+(c-1)/2} for odd.
 * - 4: (dx as bits, Q4_0's initial accumulator 0x8000 - 0x00080008 sum_t (A_t + B_t), 0, 0).
 * Blocks nbc .. nbp-1 (the padding up to the texture kernel's 8-block steps) are all zeros.
 */
export const XQ_STRIDE = 8;

/** The pre-pass that quantizes one chunk of a row of x (see {@link XQ_STRIDE}): an invocation per block. */
export function quantizeXKernel(WG = 64): string {
  return `@group(0) @binding(0) var<storage, read> x: array<vec4f>;
@group(0) @binding(1) var<storage, read_write> X: array<vec4u>;
struct P { x0: u32, nbc: u32, nbp: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) g: vec3u) {
  let b = g.x;
  if (b >= p.nbp) { return; }
  let o = b * ${XQ_STRIDE}u;
  if (b >= p.nbc) {
    for (var j = 0u; j < 5u; j++) { X[o + j] = vec4u(0u); }
    return;
  }
  var v: array<vec4f, 8>;
  var m = vec4f(0.0);
  for (var t = 0u; t < 8u; t++) { v[t] = x[p.x0 + b * 8u + t]; m = max(m, abs(v[t])); }
  let d = max(max(m.x, m.y), max(m.z, m.w)) / 127.0;
  let id = select(0.0, 1.0 / d, d != 0.0);
  var k = 0u;
  for (var j = 0u; j < 4u; j++) {
    let e = bitcast<vec4u>(clamp(vec4i(round(v[2u * j] * id)), vec4i(-127), vec4i(127)));
    let f = bitcast<vec4u>(clamp(vec4i(round(v[2u * j + 1u] * id)), vec4i(-127), vec4i(127)));
    let w = vec4u(e.z + (e.x << 16u), e.w + (e.y << 16u), f.z + (f.x << 16u), f.w + (f.y << 16u));
    X[o + j] = w;
    k += w.x + w.y + w.z + w.w;
  }
  X[o + 4u] = vec4u(bitcast<u32>(d), 0x8000u - 0x00080008u * k, 0u, 0u);
}`;
}

/**
 * Decode's Q4_0 matrix-vector product with x quantized to 8 bits per block ({@link
 * quantizeXKernel}) and integer dot products, two per 32-bit multiply (SWAR): a quant word's
 * nibble pair (bits 0 and 16: elements 4i, 4i+2) masked out as m = q_a + q_b 2^16 and multiplied by
 * A = xq_b + xq_a 2^16 leaves q_a xq_a + q_b xq_b in bits 16..31 (the cross term q_a xq_b below,
 * q_b xq_a 2^32 gone). A block's 16 multiplies sum into one u32 that starts at the record's
 * 0x8000 - 0x00080008 sum(A + B): the -8 of every quant, so the fields hold signed q - 8 in [-8, 7],
 * |low| <= 16 * 8 * 127 < 2^15, |high| <= 32 * 8 * 127 < 2^15, and the block's integer dot product
 * sum (q - 8) xq is the accumulator's top half (an arithmetic shift; the 0x8000 rounds the low
 * field away). One float multiply-add per block: s += d_w dx isum. 15 integer operations per quant
 * word (8 weights) against the float path's 24.
 *
 * Texture layout: as {@link gemvTexKernel} (8 lanes on 8 adjacent rows, R rows each, 8-block steps
 * unrolled with the scales at constant components; the pre-pass pads x with zero blocks). Storage
 * layout (a weight too big for the textures): {@link quantSource}'s accessors, one block at a time.
 */
export function gemvIntKernel(
  R: number,
  layout: QuantLayout = "texture",
  rs = 14,
  WG = 64,
): string {
  const rows = [...Array(R).keys()], js = [0, 1, 2, 3, 4, 5, 6, 7];
  const tex = layout === "texture";
  const at = (n: string, x: string) => texAt(n, x, rs);
  const M = "0x000F000Fu";
  // Word i pairs with A_i, B_i (low nibbles) and A_{4+i}, B_{4+i} (high nibbles).
  const A = (t: number) => `X${t >> 1}[${(t & 1) * 2}]`,
    B = (t: number) => `X${t >> 1}[${(t & 1) * 2 + 1}]`;
  const row = (r: number, d: string) =>
    `{
        let q = ${tex ? `textureLoad(tq, ${at(`n${r}`, "kb")})` : `quant(n${r}, kb)`};
        var a = a0;
        ${
      [0, 1, 2, 3].map((i) =>
        `{ let w = q[${i}]; a += (w & ${M}) * ${A(i)} + ((w >> 8u) & ${M}) * ${B(i)} + ` +
        `((w >> 4u) & ${M}) * ${A(4 + i)} + ((w >> 12u) & ${M}) * ${B(4 + i)}; }`
      ).join("\n        ")
    }
        s${r} = fma(${d} * dx, f32(bitcast<i32>(a) >> 16u), s${r});
      }`;
  const head = (b: string) =>
    `let b = ${b}; let kb = p.b0 + b; let o = b * ${XQ_STRIDE}u;
      ${[0, 1, 2, 3].map((j) => `let X${j} = X[o + ${j}u];`).join(" ")}
      let mt = X[o + 4u]; let dx = bitcast<f32>(mt.x); let a0 = mt.y;`;
  const body = tex
    ? `for (var g8 = 0u; g8 < p.nbc; g8 += 8u) {
    ${scaleTexels(R, rs)}
    ${
      js.map((j) =>
        `{
      ${head(`g8 + ${j}u`)}
      ${rows.map((r) => row(r, `unpack2x16float(sv${r}[${j >> 1}])[${j & 1}]`)).join("\n      ")}
    }`
      ).join("\n    ")
    }
  }`
    : `for (var bb = 0u; bb < p.nbc; bb++) {
    ${head("bb")}
    ${rows.map((r) => row(r, `scale(n${r}, kb)`)).join("\n    ")}
  }`;
  const bind = tex
    ? `@group(0) @binding(1) var tq: texture_storage_2d_array<rgba32uint, read>;
@group(0) @binding(2) var ts: texture_storage_2d_array<rgba32uint, read>;`
    : quantSource("Q4_0", "storage", rs);
  return `@group(0) @binding(0) var<uniform> X: array<vec4u, 4096>;
${bind}
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${GEMV_PARAMS}
@group(0) @binding(4) var<uniform> p: P;
${rowGroupMain(R, WG, body)}`;
}

/** Parameters of the storage-operand kernels ({@link gemvWgKernel}, {@link blockedKernel}, {@link tiledKernel}). */
export const MM_PARAMS = `struct P { M: u32, N: u32, K: u32, nb: u32 }`;

/** Bindings of the matrix kernels: x (f32), quants and scales ({@link quantSource}), out, params. */
function mmBindings(xVec4: boolean, type: QuantType, layout: QuantLayout, rs: number): string {
  return `@group(0) @binding(0) var<storage, read> x: array<${xVec4 ? "vec4f" : "f32"}>;
${quantSource(type, layout, rs)}
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
${MM_PARAMS}
@group(0) @binding(4) var<uniform> p: P;`;
}

/**
 * Matrix-vector product for real GPUs: a workgroup of RW rows x 32 lanes; lane l of a row sums
 * blocks l, l+32, ... of that row (adjacent lanes read adjacent blocks), then the 32 partial sums
 * are reduced as a tree in workgroup memory. Rows of x (M) are the grid's z.
 */
export function gemvWgKernel(
  type: QuantType,
  layout: QuantLayout = "storage",
  rs = 14,
  RW = 8,
): string {
  const L = 32;
  return `${mmBindings(true, type, layout, rs)}
var<workgroup> part: array<f32, ${RW * L}>;
@compute @workgroup_size(${L}, ${RW})
fn main(@builtin(local_invocation_id) l: vec3u, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let n = (wg.x + wg.y * nwg.x) * ${RW}u + l.y;
  let m = wg.z;
  var s = 0.0;
  if (n < p.N) {
    for (var b = l.x; b < p.nb; b += ${L}u) {
      ${loadRowBlock(type, "n", "b")}
      ${unpackBlock(type)}
      let xo = (m * p.K) / 4u + b * 8u;
      let a = ${[0, 1, 2, 3, 4, 5, 6, 7].map((i) => `v${i} * x[xo + ${i}u]`).join(" + ")};
      s = fma(scale(n, b), a.x + a.y + a.z + a.w, s);
    }
  }
  let li = l.y * ${L}u + l.x;
  part[li] = s;
  workgroupBarrier();
  for (var h = ${L / 2}u; h > 0u; h >>= 1u) {
    if (l.x < h) { part[li] += part[li + h]; }
    workgroupBarrier();
  }
  if (l.x == 0u && n < p.N) { out[m * p.N + n] = part[li]; }
}`;
}

/**
 * Matrix product for a CPU adapter (prefill, scoring), shaped like matmul's texture kernel: each
 * invocation computes R rows x C columns of the output (outputs n0..n0+C-1 as C/4 vec4s per row)
 * in registers; 1-D workgroups of 64 lanes over column groups, the R rows of x chosen by the
 * workgroup (x's loads are uniform across the lanes). Per block a lane loads its C rows of W once
 * and dequantizes them 4 columns of K at a time; each x vec4 loaded feeds C/4 x 4 vec4 FMAs, each
 * weight R FMAs. No workgroup memory, no barriers (both are slow on llvmpipe).
 */
export function blockedKernel(
  type: QuantType,
  R: number,
  C = 8,
  layout: QuantLayout = "storage",
  rs = 14,
): string {
  const xr = [...Array(R).keys()];
  const cs = [...Array(C).keys()];
  const gs = [...Array(C / 4).keys()];
  const load = cs.map((c) =>
    type === "Q4_0"
      ? `let q${c} = quant(n${c}, b); let d${c} = scale(n${c}, b); let e${c} = vec4f(-8.0 * d${c});`
      : `let q${c} = quant(n${c}, b * 2u); let r${c} = quant(n${c}, b * 2u + 1u); let d${c} = scale(n${c}, b);`
  ).join("\n    ");
  // v{c}: column c's weights at k = 4i..4i+3 of the block (the loop's i = 0..7: word i % 4, and
  // for Q4_0 the low nibbles for i < 4, the high ones after). A loop, not unrolled: 8x less code
  // for LLVM to compile (seconds per pipeline on llvmpipe at R = 16, C = 8), at no measured cost.
  const deq = cs.map((c) => {
    if (type === "Q4_0") {
      // (q - 8) d as one fma: q d + (-8 d).
      return `let v${c} = fma(vec4f((vec4u(q${c}[i & 3u]) >> sh) & vec4u(15u)), vec4f(d${c}), e${c});`;
    }
    return `let v${c} = vec4f((vec4i(bitcast<i32>(select(q${c}[i & 3u], r${c}[i & 3u], i >= 4u))) << vec4u(24u, 16u, 8u, 0u)) >> vec4u(24u)) * d${c};`;
  }).join("\n      ");
  // w{g}_{j}: row k+j of W^T, columns 4g..4g+3 (in llvmpipe's SoA code a regrouping is free).
  const regroup = gs.map((g) =>
    [0, 1, 2, 3].map((j) =>
      `let w${g}_${j} = vec4f(${[0, 1, 2, 3].map((c) => `v${4 * g + c}[${j}]`).join(", ")});`
    ).join(" ")
  ).join("\n      ");
  const fmaRow = (r: number, g: number) =>
    `c${r}_${g} = fma(vec4f(xv.w), w${g}_3, fma(vec4f(xv.z), w${g}_2, fma(vec4f(xv.y), w${g}_1, fma(vec4f(xv.x), w${g}_0, c${r}_${g}))));`;
  const step = `for (var i = 0u; i < 8u; i++) {
      ${
    type === "Q4_0"
      ? "let sh = select(vec4u(0u, 8u, 16u, 24u), vec4u(4u, 12u, 20u, 28u), i >= 4u);"
      : ""
  }
      ${deq}
      ${regroup}
      ${
    xr.map((r) => `{ let xv = x[xo${r} + b * 8u + i]; ${gs.map((g) => fmaRow(r, g)).join(" ")} }`)
      .join("\n      ")
  }
    }`;
  return `${mmBindings(true, type, layout, rs)}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u, @builtin(workgroup_id) wg: vec3u) {
  let nf = g.x * ${C}u;
  ${cs.map((c) => `let n${c} = min(nf + ${c}u, p.N - 1u);`).join(" ")}
  let m0 = wg.y * ${R}u;
  ${
    xr.map((r) =>
      `let xo${r} = (min(m0 + ${r}u, p.M - 1u) * p.K) / 4u; ${
        gs.map((g) => `var c${r}_${g} = vec4f(0.0);`).join(" ")
      }`
    ).join("\n  ")
  }
  for (var b = 0u; b < p.nb; b++) {
    ${load}
    ${step}
  }
  if (nf >= p.N) { return; }
  ${
    xr.map((r) =>
      `if (m0 + ${r}u < p.M) { let o = (m0 + ${r}u) * p.N + nf; ${
        gs.map((g) =>
          `for (var j = 0u; j < 4u; j++) { if (nf + ${4 * g}u + j < p.N) { out[o + ${
            4 * g
          }u + j] = c${r}_${g}[j]; } }`
        ).join(" ")
      } }`
    ).join("\n  ")
  }
}`;
}

/**
 * Matrix product for real GPUs: a 16x16 workgroup computes a 64x64 tile of the output (4x4 per
 * invocation); K advances one block (32) at a time: x's 64x32 tile is copied and W's 64 blocks are
 * dequantized (8 weights per invocation) into workgroup memory, then multiplied from there.
 */
export function tiledKernel(type: QuantType, layout: QuantLayout = "storage", rs = 14): string {
  // Invocation t dequantizes block row t/4 (output n0 + t/4), elements 8*(t%4) .. +7.
  const deq = type === "Q4_0"
    ? `let w = quant(n0 + r, b)[j];  // bytes 4j..4j+3: elements 4j..4j+3 (low) and 16+4j.. (high)
        for (var t = 0u; t < 4u; t++) {
          Ws[(4u * j + t) * 64u + r] = (f32((w >> (8u * t)) & 15u) - 8.0) * d;
          Ws[(16u + 4u * j + t) * 64u + r] = (f32((w >> (8u * t + 4u)) & 15u) - 8.0) * d;
        }`
    : `let qv = quant(n0 + r, b * 2u + j / 2u);
        for (var h = 0u; h < 2u; h++) {
          let w = qv[(j % 2u) * 2u + h];  // elements 8j + 4h .. +3
          for (var t = 0u; t < 4u; t++) {
            Ws[(8u * j + 4u * h + t) * 64u + r] = f32((bitcast<i32>(w) << (24u - 8u * t)) >> 24u) * d;
          }
        }`;
  return `${mmBindings(false, type, layout, rs)}
var<workgroup> Xs: array<f32, 2048>; // (32 k, 64 m)
var<workgroup> Ws: array<f32, 2048>; // (32 k, 64 n)
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_id) l: vec3u) {
  let m0 = wg.y * 64u; let n0 = wg.x * 64u;
  let li = l.y * 16u + l.x;
  var acc: array<array<f32, 4>, 4>;
  for (var b = 0u; b < p.nb; b++) {
    // x tile: 2048 values, 8 per invocation; rows past M read as 0.
    for (var e = 0u; e < 8u; e++) {
      let idx = li + e * 256u;
      let mm = idx / 32u; let kk = idx % 32u;
      var v = 0.0;
      if (m0 + mm < p.M) { v = x[(m0 + mm) * p.K + b * 32u + kk]; }
      Xs[kk * 64u + mm] = v;
    }
    {
      let r = li / 4u; let j = li % 4u;
      if (n0 + r < p.N) {
        let d = scale(n0 + r, b);
        ${deq}
      } else {
        for (var t = 0u; t < 8u; t++) { Ws[(8u * j + t) * 64u + r] = 0.0; }
      }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < 32u; kk++) {
      var av: array<f32, 4>; var bv: array<f32, 4>;
      for (var i = 0u; i < 4u; i++) { av[i] = Xs[kk * 64u + l.y * 4u + i]; bv[i] = Ws[kk * 64u + l.x * 4u + i]; }
      for (var i = 0u; i < 4u; i++) {
        for (var j = 0u; j < 4u; j++) { acc[i][j] = fma(av[i], bv[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + l.y * 4u + i;
    if (m >= p.M) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + l.x * 4u + j;
      if (n < p.N) { out[m * p.N + n] = acc[i][j]; }
    }
  }
}`;
}

/**
 * Embedding lookup from a quantized table (V, C): one workgroup per token, lanes over the row's
 * blocks, each writing its 32 dequantized values as 8 vec4s. Ids are clamped into [0, V).
 */
export function embeddingKernel(
  type: QuantType,
  layout: QuantLayout = "storage",
  rs = 14,
  WG = 64,
): string {
  return `@group(0) @binding(0) var<storage, read> ids: array<i32>;
${quantSource(type, layout, rs)}
@group(0) @binding(3) var<storage, read_write> out: array<vec4f>;
struct P { N: u32, V: u32, nb: u32 }
@group(0) @binding(4) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let t = wg.x + wg.y * nwg.x;
  if (t >= p.N) { return; }
  let id = u32(clamp(ids[t], 0, i32(p.V) - 1));
  for (var b = li; b < p.nb; b += ${WG}u) {
    ${loadRowBlock(type, "id", "b")}
    let d = scale(id, b);
    ${unpackBlock(type)}
    let o = (t * p.nb + b) * 8u;
    ${[0, 1, 2, 3, 4, 5, 6, 7].map((i) => `out[o + ${i}u] = v${i} * d;`).join(" ")}
  }
}`;
}

/** WGSL: the 4 bytes (`word`) and 2 bytes (`half`) at an even byte offset o of `src` (GGUF blocks). */
const SRC_BYTES = `fn word(o: u32) -> u32 {
  let a = o >> 2u;
  if ((o & 3u) == 0u) { return src[a]; }
  return (src[a] >> 16u) | (src[a + 1u] << 16u);
}
fn half(o: u32) -> u32 { return (src[o >> 2u] >> ((o & 2u) * 8u)) & 0xFFFFu; }`;

/**
 * Splits GGUF blocks (uploaded as they are, `B` = 34 or 18 bytes each, so mostly unaligned) into
 * the kernels' layout, as @lvm/weights' `splitBlocks` does on the host: invocation i handles blocks
 * 2i and 2i+1, whose f16 scales make word i of `sc`. Every block starts at an even byte, so each
 * scale is one half of a word and each quant word is one source word or two halves of two.
 */
export function splitKernel(type: QuantType, WG = 64): string {
  const B = type === "Q4_0" ? 18 : 34, W = blockWords(type);
  return `@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> sc: array<u32>;
@group(0) @binding(2) var<storage, read_write> qs: array<u32>;
struct P { blocks: u32 }
@group(0) @binding(3) var<uniform> p: P;
${SRC_BYTES}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = (wg.x + wg.y * nwg.x) * ${WG}u + li;
  let b0 = 2u * i;
  if (b0 >= p.blocks) { return; }
  var s = half(b0 * ${B}u);
  if (b0 + 1u < p.blocks) { s |= half((b0 + 1u) * ${B}u) << 16u; }
  sc[i] = s;
  for (var b = b0; b < min(b0 + 2u, p.blocks); b++) {
    for (var w = 0u; w < ${W}u; w++) { qs[b * ${W}u + w] = word(b * ${B}u + 2u + 4u * w); }
  }
}`;
}

/**
 * {@link splitKernel} for the texture layout: invocation i handles row n = i / G, blocks 8j..8j+7
 * (j = i % G, G = ceil(nb / 8)): their quant texels and the one scale texel (zeros past the row).
 */
export function splitTexKernel(type: QuantType, rs = 14, WG = 64): string {
  const B = type === "Q4_0" ? 18 : 34, T = texels(type);
  const at = (x: string) => texAt("n", x, rs);
  return `@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var tq: texture_storage_2d_array<rgba32uint, write>;
@group(0) @binding(2) var ts: texture_storage_2d_array<rgba32uint, write>;
struct P { N: u32, nb: u32, G: u32 }
@group(0) @binding(3) var<uniform> p: P;
${SRC_BYTES}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = (wg.x + wg.y * nwg.x) * ${WG}u + li;
  let n = i / p.G; let j = i % p.G;
  if (n >= p.N) { return; }
  var h = array<u32, 8>(0u, 0u, 0u, 0u, 0u, 0u, 0u, 0u);
  for (var e = 0u; e < 8u; e++) {
    let b = j * 8u + e;
    if (b >= p.nb) { break; }
    let o = (n * p.nb + b) * ${B}u;
    h[e] = half(o);
    for (var t = 0u; t < ${T}u; t++) {
      let q = o + 2u + 16u * t;
      textureStore(tq, ${at(`b * ${T}u + t`)},
        vec4u(word(q), word(q + 4u), word(q + 8u), word(q + 12u)));
    }
  }
  textureStore(ts, ${at("j")},
    vec4u(h[0] | (h[1] << 16u), h[2] | (h[3] << 16u), h[4] | (h[5] << 16u), h[6] | (h[7] << 16u)));
}`;
}

/**
 * The texture layout back to the storage one (for reading a weight back): invocation i writes
 * blocks 2i and 2i+1 (numbered row after row): their quant words and their scale word.
 */
export function unsplitTexKernel(type: QuantType, rs = 14, WG = 64): string {
  const T = texels(type);
  const at = (x: string, n: string) => texAt(n, x, rs);
  return `@group(0) @binding(0) var tq: texture_storage_2d_array<rgba32uint, read>;
@group(0) @binding(1) var ts: texture_storage_2d_array<rgba32uint, read>;
@group(0) @binding(2) var<storage, read_write> sc: array<u32>;
@group(0) @binding(3) var<storage, read_write> qs: array<vec4<u32>>;
struct P { blocks: u32, nb: u32 }
@group(0) @binding(4) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = (wg.x + wg.y * nwg.x) * ${WG}u + li;
  if (2u * i >= p.blocks) { return; }
  var s = 0u;
  for (var e = 0u; e < 2u; e++) {
    let blk = 2u * i + e;
    if (blk >= p.blocks) { break; }
    let n = blk / p.nb; let b = blk % p.nb;
    let h = (textureLoad(ts, ${at("b >> 3u", "n")})[(b >> 1u) & 3u] >> ((b & 1u) * 16u)) & 0xFFFFu;
    s |= h << (16u * e);
    for (var t = 0u; t < ${T}u; t++) { qs[blk * ${T}u + t] = textureLoad(tq, ${
    at(`b * ${T}u + t`, "n")
  }); }
  }
  sc[i] = s;
}`;
}
