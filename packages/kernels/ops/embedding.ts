/**
 * Token embedding lookup (HF `model.embed_tokens`) and its backward.
 *
 * Forward: out[n, :] = table[ids[n], :]. One workgroup of 64 invocations per token row, channels
 * spread over the lanes as vec4 (C % 4 == 0), vec2 of a packed f16 word (f16 table, C even) or
 * scalars. An id outside [0, V) is clamped into range inside the
 * kernel so it can never read out of bounds; callers validate ids on the host first
 * ({@link validateIds}) because a clamped id is a silent wrong answer.
 *
 * Backward without float atomics: the token ids are known on the host in training (the loader makes
 * them), so the host builds a CSR index with a stable counting sort ({@link buildEmbeddingIndex}):
 * the distinct ids present, and for each the list of token positions carrying it, in increasing
 * token order. One workgroup per distinct id then sums the dout rows of its tokens, lanes over
 * channels. Each dtable element is written by exactly one invocation, and the summation order is fixed
 * (token order), so the result is deterministic. Rows of ids that do not occur are zero (or left as
 * they were when accumulating into an existing gradient).
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";

const WG = 64;

/** Throws a RangeError naming the first id outside [0, V) and its position. */
export function validateIds(ids: ArrayLike<number>, V: number, label = "ids"): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id) || id < 0 || id >= V) {
      throw new RangeError(`${label}[${i}] is ${id}, expected an integer in [0, ${V})`);
    }
  }
}

function embeddingKernel(dtype: "f32" | "f16", C: number): string {
  // Per-row element type and how a lane moves one unit of it.
  let tableTy: string, outTy: string, units: number, body: string;
  if (dtype === "f32" && C % 4 === 0) {
    [tableTy, outTy, units] = ["vec4f", "vec4f", C / 4];
    body = "out[o + c] = table[r + c];";
  } else if (dtype === "f32") {
    [tableTy, outTy, units] = ["f32", "f32", C];
    body = "out[o + c] = table[r + c];";
  } else if (C % 2 === 0) {
    [tableTy, outTy, units] = ["u32", "vec2f", C / 2];
    body = "out[o + c] = unpack2x16float(table[r + c]);";
  } else {
    // Odd C: a row may start in the middle of a packed word.
    [tableTy, outTy, units] = ["u32", "f32", C];
    body = "let e = r + c;\n    out[o + c] = unpack2x16float(table[e / 2u])[e % 2u];";
  }
  return `
@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> table: array<${tableTy}>;
@group(0) @binding(2) var<storage, read_write> out: array<${outTy}>;
struct P { N: u32, V: u32 }
@group(0) @binding(3) var<uniform> p: P;
const U: u32 = ${units}u; // units per row
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let n = ${WG_INDEX};
  if (n >= p.N) { return; }
  // Clamp: an out-of-range id must never index outside the table.
  let id = u32(clamp(ids[n], 0, i32(p.V) - 1));
  let r = id * U;
  let o = n * U;
  for (var c = li; c < U; c += ${WG}u) {
    ${body}
  }
}`;
}

/**
 * Looks up rows of `table` (V,C) f32 or f16 for `ids` (any shape, N elements, i32).
 * Returns (...ids.shape, C) f32. Ids outside [0, V) are clamped (validate them on the host with
 * {@link validateIds} before upload).
 *
 * @example
 * ```ts
 * import { embedding } from "@lvm/kernels";
 * import { getGpu } from "@lvm/gpu";
 * const gpu = await getGpu();
 * const table = gpu.upload([0, 1, 10, 11, 20, 21], [3, 2]);
 * const out = embedding(gpu, gpu.upload([2, 0], [2], "i32"), table);
 * console.log(await gpu.read(out)); // Float32Array [20, 21, 0, 1]
 * ```
 */
export function embedding(gpu: Gpu, ids: Tensor, table: Tensor, out?: Tensor): Tensor {
  if (ids.dtype !== "i32") throw new TypeError(`embedding: ids must be i32, got ${ids.dtype}`);
  if (table.shape.length !== 2) {
    throw new RangeError(`embedding: table has shape [${table.shape}], expected (V, C)`);
  }
  if (table.dtype !== "f32" && table.dtype !== "f16") {
    throw new TypeError(`embedding: table must be f32 or f16, got ${table.dtype}`);
  }
  const [V, C] = table.shape;
  const N = ids.size;
  const shape = [...ids.shape, C];
  const o = out ?? gpu.empty(shape); // (N, C)
  if (o.size !== N * C || o.dtype !== "f32") {
    throw new RangeError(`embedding: out is [${o.shape}] ${o.dtype}, expected [${shape}] f32`);
  }
  const pipe = gpu.pipeline(
    `embedding|${table.dtype}|${C}`,
    () => embeddingKernel(table.dtype as "f32" | "f16", C),
  );
  gpu.dispatch(pipe, [ids, table, o], new Params().u32(N).u32(V), grid(N));
  return o;
}

/**
 * Host-built index for {@link embeddingBackward}: token positions grouped by id (CSR).
 * `rows[u]` is the u-th distinct id present (ascending); its tokens are
 * `order[offsets[u] .. offsets[u+1])`, in increasing token order.
 */
export interface EmbeddingIndex {
  /** Vocabulary size the ids were checked against. */
  V: number;
  /** Number of tokens. */
  N: number;
  /** (U) distinct ids present, ascending. */
  rows: Int32Array;
  /** (U+1) start of each id's token list in `order`. */
  offsets: Int32Array;
  /** (N) token positions sorted by id, stable. */
  order: Int32Array;
}

/**
 * Builds the CSR index of `ids` (N) by a stable counting sort in O(N + V). Throws a RangeError for an
 * id outside [0, V).
 */
export function buildEmbeddingIndex(ids: ArrayLike<number>, V: number): EmbeddingIndex {
  validateIds(ids, V);
  const N = ids.length;
  const count = new Int32Array(V + 1);
  for (let i = 0; i < N; i++) count[ids[i] + 1]++;
  let U = 0;
  for (let v = 1; v <= V; v++) if (count[v]) U++;
  const rows = new Int32Array(U), offsets = new Int32Array(U + 1);
  const start = new Int32Array(V); // position of each id's list in `order`
  let u = 0, pos = 0;
  for (let v = 0; v < V; v++) {
    const c = count[v + 1];
    start[v] = pos;
    if (c) {
      rows[u] = v;
      offsets[u] = pos;
      u++;
      pos += c;
    }
  }
  offsets[U] = N;
  const order = new Int32Array(N);
  for (let i = 0; i < N; i++) order[start[ids[i]]++] = i;
  return { V, N, rows, offsets, order };
}

function embeddingBackwardKernel(C: number, accumulate: boolean): string {
  const vec = C % 4 === 0;
  const ty = vec ? "vec4f" : "f32";
  const units = vec ? C / 4 : C;
  return `
@group(0) @binding(0) var<storage, read> index: array<i32>; // rows (U) | offsets (U+1) | order (N)
@group(0) @binding(1) var<storage, read> dout: array<${ty}>; // (N, C)
@group(0) @binding(2) var<storage, read_write> dtable: array<${ty}>; // (V, C)
struct P { U: u32 }
@group(0) @binding(3) var<uniform> p: P;
const UNITS: u32 = ${units}u;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let u = ${WG_INDEX};
  if (u >= p.U) { return; }
  let row = u32(index[u]);
  let begin = u32(index[p.U + u]);
  let end = u32(index[p.U + u + 1u]);
  let orderBase = 2u * p.U + 1u;
  for (var c = li; c < UNITS; c += ${WG}u) {
    var acc = ${ty}(0.0);
    for (var k = begin; k < end; k++) {
      let n = u32(index[orderBase + k]);
      acc += dout[n * UNITS + c];
    }
    ${accumulate ? "dtable[row * UNITS + c] += acc;" : "dtable[row * UNITS + c] = acc;"}
  }
}`;
}

/** Options of {@link embeddingBackward}. */
export interface EmbeddingBackwardOptions {
  /** (V,C) f32 gradient to add into (e.g. gradient accumulation); returned as the result. */
  accumulate?: Tensor;
}

/**
 * Gradient of {@link embedding} with respect to the table: dtable (V,C) f32, where
 * dtable[v] = sum of dout[n] over tokens n with ids[n] == v. `ids` are the host-side token ids (N)
 * or an index from {@link buildEmbeddingIndex}; `dout` is (N,C) f32 (any leading shape).
 * No float atomics: one workgroup per distinct id sums its tokens' rows in token order.
 */
export function embeddingBackward(
  gpu: Gpu,
  ids: ArrayLike<number> | EmbeddingIndex,
  dout: Tensor,
  V: number,
  options: EmbeddingBackwardOptions = {},
): Tensor {
  const index = "order" in ids ? ids : buildEmbeddingIndex(ids as ArrayLike<number>, V);
  if (index.V !== V) {
    throw new RangeError(`embeddingBackward: index was built for V=${index.V}, expected ${V}`);
  }
  if (dout.dtype !== "f32") throw new TypeError(`embeddingBackward: dout must be f32`);
  const N = index.N;
  const C = N ? dout.size / N : dout.shape[dout.shape.length - 1];
  if (!Number.isInteger(C) || dout.shape[dout.shape.length - 1] !== C) {
    throw new RangeError(
      `embeddingBackward: dout has shape [${dout.shape}], expected (${N}, C) for ${N} ids`,
    );
  }
  const acc = options.accumulate;
  if (acc && (acc.size !== V * C || acc.dtype !== "f32")) {
    throw new RangeError(
      `embeddingBackward: accumulate is [${acc.shape}] ${acc.dtype}, expected [${V},${C}] f32`,
    );
  }
  const dtable = acc ?? gpu.zeros([V, C]); // (V, C)
  const U = index.rows.length;
  if (U === 0) return dtable;
  const packed = new Int32Array(2 * U + 1 + N);
  packed.set(index.rows, 0);
  packed.set(index.offsets, U);
  packed.set(index.order, 2 * U + 1);
  const idx = gpu.upload(packed, [packed.length], "i32");
  const pipe = gpu.pipeline(
    `embeddingBackward|${C}|${!!acc}`,
    () => embeddingBackwardKernel(C, !!acc),
  );
  gpu.dispatch(pipe, [idx, dout, dtable], new Params().u32(U), grid(U));
  idx.release(); // recorded work keeps using it; the pool hands it out again only after
  return dtable;
}

/** CPU reference of {@link embedding} (clamping like the kernel). */
export function embeddingCpu(
  ids: ArrayLike<number>,
  table: ArrayLike<number>,
  V: number,
  C: number,
): Float32Array {
  const out = new Float32Array(ids.length * C);
  for (let n = 0; n < ids.length; n++) {
    const id = Math.min(Math.max(ids[n], 0), V - 1);
    for (let c = 0; c < C; c++) out[n * C + c] = table[id * C + c];
  }
  return out;
}

/** CPU reference of {@link embeddingBackward} (f64 sums). */
export function embeddingBackwardCpu(
  ids: ArrayLike<number>,
  dout: ArrayLike<number>,
  V: number,
  C: number,
): Float32Array {
  const acc = new Float64Array(V * C);
  for (let n = 0; n < ids.length; n++) {
    for (let c = 0; c < C; c++) acc[ids[n] * C + c] += dout[n * C + c];
  }
  return Float32Array.from(acc);
}
