/**
 * Next-token sampling on the GPU from one row of logits (1,V), so a decode loop can chain steps
 * without reading logits back: the chosen id goes into an i32 tensor the next step's embedding reads
 * (and into a slot of an ids tensor read back once per many tokens).
 *
 * Semantics are @lvm/sampler's `sampleToken` (Hugging Face's order): ids >= n are suppressed ->
 * temperature -> top-k keeping every logit equal to the k-th largest -> softmax -> multinomial walking
 * ids in ascending order until u < the cumulative probability. Greedy is the arg-max over ids < n,
 * ties -> the lowest id. NaN logits are removed (never chosen); a row with no logit above -inf gives
 * id 0 (the arg-max's answer); when the largest survivor is +inf, the +inf ids share the probability
 * (the softmax limit). Top-p < 1 is not done here (the caller samples such rows on the CPU).
 *
 * One workgroup of 256 invocations, one dispatch, over order-preserving u32 keys of the logits
 * (NaN -> key(-inf), -0 -> key(+0)), so every comparison is exact and independent of how the adapter
 * rounds division or exp:
 * 1. arg-max: strided loop, then a tree over (key, id) pairs (ties -> lower id).
 * 2. top-k (0 < k < n): exact k-th largest key by radix select, 4 passes of 8-bit histograms in
 *    workgroup atomics; invocation 0 scans the 256 bins from the top. The threshold is taken on the
 *    raw logits: dividing by T > 0 preserves their order, and this avoids the GPU's division rounding.
 * 3. weights w_i = exp((x_i - max) / T) of the survivors, summed over contiguous chunks (one per
 *    invocation); invocation 0 scans the 256 chunk sums serially (exclusive prefix e_t, total S).
 * 4. multinomial: target = u * S; the invocation with e_t <= target < e_{t+1} walks its chunk (its
 *    partial sums end exactly at e_{t+1}, the same f32 additions); target >= S (rounding) -> the last
 *    id of positive weight.
 * The uniform u and the output slot travel in the uniform parameters, so a chain of steps needs no
 * buffer of uniforms.
 *
 * Accuracy: greedy and the top-k survivor set are exact; the sampling distribution is f32 (weights
 * and sums relative error ~1e-6), so the chosen id can differ from an f64 reference only when u lies
 * within that distance of a cumulative-probability boundary.
 * @module
 */
import { type Gpu, Params } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";

const WG = 256;

/** What {@link sampleLogits} does with a row (the subset of @lvm/sampler's options it supports). */
export interface SampleOptions {
  /** Ids >= n are never chosen (suppressFrom; default and upper bound: V). */
  n?: number;
  /** Arg-max instead of sampling (temperature, topK and u are ignored). */
  greedy?: boolean;
  /** Divides the logits, > 0 (default 1). */
  temperature?: number;
  /** Keep the k largest logits and every logit equal to the k-th (0 = off, the default). */
  topK?: number;
  /** The uniform draw in [0, 1) of this token (needed unless greedy). */
  u?: number;
}

/** Where {@link sampleLogits} writes the chosen id. */
export interface SampleTargets {
  /** i32 ids tensor; the id goes to out[index] (default: a new (1) i32 tensor). */
  out?: Tensor;
  /** Slot of `out` (default 0). */
  index?: number;
  /** Optional i32 tensor whose element 0 also receives the id (the next decode step's token). */
  token?: Tensor;
}

/** Options with defaults filled in and checked; n clamped to V. */
function resolve(o: SampleOptions, V: number, op: string) {
  const r = {
    n: Math.min(V, o.n ?? V),
    greedy: o.greedy ?? false,
    temperature: o.temperature ?? 1,
    topK: o.topK ?? 0,
    u: o.u ?? NaN,
  };
  if (!Number.isInteger(r.n) || r.n < 1) {
    throw new RangeError(`${op}: n (suppressFrom) must be a positive integer, found ${o.n}`);
  }
  if (!r.greedy) {
    if (!(r.temperature > 0) || !Number.isFinite(r.temperature)) {
      throw new RangeError(`${op}: temperature must be finite and > 0, found ${r.temperature}`);
    }
    if (!Number.isInteger(r.topK) || r.topK < 0) {
      throw new RangeError(`${op}: topK must be a non-negative integer (0 = off), found ${r.topK}`);
    }
    if (!(r.u >= 0 && r.u < 1)) {
      throw new RangeError(`${op}: sampling needs a uniform u in [0, 1), found ${o.u}`);
    }
  }
  return r;
}

/**
 * Unnormalised sampling weights of a row in f64 (0 for removed ids), the distribution
 * {@link sampleLogits} draws from; all zeros when no id < n has a logit above -inf (then the result is
 * id 0). For greedy options, the one-hot weight of the arg-max.
 */
export function sampleWeights(logits: ArrayLike<number>, options: SampleOptions): Float64Array {
  const V = logits.length;
  const o = resolve({ ...options, u: options.u ?? 0 }, V, "sampleWeights");
  const x = (i: number) => (Number.isNaN(logits[i]) ? -Infinity : logits[i]);
  const w = new Float64Array(V);
  let best = 0, m = -Infinity;
  for (let i = 0; i < o.n; i++) {
    if (x(i) > m) [m, best] = [x(i), i];
  }
  if (m === -Infinity) return w;
  if (o.greedy) {
    w[best] = 1;
    return w;
  }
  let kth = -Infinity;
  if (o.topK > 0 && o.topK < o.n) {
    const sorted = Float64Array.from({ length: o.n }, (_, i) => x(i)).sort();
    kth = sorted[o.n - o.topK];
  }
  for (let i = 0; i < o.n; i++) {
    const v = x(i);
    if (v === -Infinity || v < kth) continue;
    w[i] = v === m ? 1 : m === Infinity ? 0 : Math.exp((v - m) / o.temperature);
  }
  return w;
}

/**
 * CPU reference of {@link sampleLogits} in f64: the id it chooses for one row of logits (V) and, when
 * sampling, the uniform `u`.
 *
 * @example
 * ```ts
 * import { sampleCpu } from "@lvm/kernels";
 * sampleCpu([1, 5, 5, 9], { greedy: true, n: 3 }); // 1
 * sampleCpu([0, 0, 0], { u: 0.5 }); // 1 (each id has probability 1/3)
 * ```
 */
export function sampleCpu(logits: ArrayLike<number>, options: SampleOptions): number {
  const V = logits.length;
  const o = resolve(options, V, "sampleCpu");
  const w = sampleWeights(logits, o);
  let total = 0, last = -1;
  for (let i = 0; i < V; i++) {
    total += w[i];
    if (w[i] > 0) last = i;
  }
  if (last < 0) return 0; // no logit above -inf
  if (o.greedy) return last;
  const target = o.u * total;
  let cum = 0;
  for (let i = 0; i <= last; i++) {
    cum += w[i];
    if (w[i] > 0 && target < cum) return i;
  }
  return last;
}

function sampleKernel(token: boolean): string {
  const bindings = [
    "var<storage, read> x: array<f32>; // (V) logits",
    "var<storage, read_write> out: array<i32>;",
    ...(token ? ["var<storage, read_write> tok: array<i32>; // (1) next step's token"] : []),
  ];
  return `${bindings.map((b, i) => `@group(0) @binding(${i}) ${b}`).join("\n")}
struct P { n: u32, greedy: u32, topK: u32, index: u32, invT: f32, u: f32 }
@group(0) @binding(${bindings.length}) var<uniform> p: P;
const WG: u32 = ${WG}u;
const NEG_INF_KEY: u32 = 0x007fffffu; // key(-inf), also every NaN's
const POS_INF_KEY: u32 = 0xff800000u; // key(+inf)
const NONE: u32 = 0xffffffffu;
var<workgroup> rk: array<u32, ${WG}>; // arg-max tree: keys
var<workgroup> ri: array<u32, ${WG}>; // ... and their ids
var<workgroup> hist: array<atomic<u32>, 256>; // radix-select bins of one byte
var<workgroup> sel: vec2u; // radix select: key prefix found so far, rank left among keys with it
var<workgroup> ex: array<f32, ${WG + 1}>; // exclusive prefix sums of chunk weights; ex[WG] = total
var<workgroup> tgt: f32;
var<workgroup> pick: u32;
var<workgroup> lastPos: atomic<u32>; // 1 + the largest id of positive weight (0: none)

// Order-preserving key: a < b as floats <=> key(a) < key(b). NaN -> key(-inf), -0 -> key(+0).
// Bit tests, not float compares: WGSL lets compilers assume there are no NaNs or infinities.
fn key(v: f32) -> u32 {
  var b = bitcast<u32>(v);
  if ((b & 0x7fffffffu) > 0x7f800000u) { return NEG_INF_KEY; }
  if (b == 0x80000000u) { b = 0u; }
  return select(b | 0x80000000u, ~b, (b >> 31u) != 0u);
}
fn unkey(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k >> 31u) != 0u));
}
// Unnormalised probability exp((x - m) / T): 1 at the max (so a +inf max shares among the +inf ids),
// 0 for removed ids (NaN, -inf, below the k-th key). The clamps keep x - m finite.
fn weight(xv: f32, mk: u32, m: f32, kth: u32) -> f32 {
  let k = key(xv);
  if (k < kth || k == NEG_INF_KEY) { return 0.0; }
  if (k == mk) { return 1.0; }
  if (mk == POS_INF_KEY) { return 0.0; }
  return exp(max(max(xv - m, -3.0e38) * p.invT, -200.0));
}

@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32) {
  let n = p.n;
  if (li == 0u) {
    atomicStore(&lastPos, 0u);
    pick = NONE;
    sel = vec2u(0u, p.topK);
  }
  // 1. arg-max over ids < n (-inf and NaN never win; none above -inf -> id 0).
  var bk = NEG_INF_KEY;
  var bi = 0u;
  for (var i = li; i < n; i += WG) {
    let k = key(x[i]);
    if (k > bk) { bk = k; bi = i; }
  }
  rk[li] = bk;
  ri[li] = bi;
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    workgroupBarrier();
    if (li < h) {
      let k2 = rk[li + h];
      let i2 = ri[li + h];
      if (k2 > rk[li] || (k2 == rk[li] && i2 < ri[li])) {
        rk[li] = k2;
        ri[li] = i2;
      }
    }
  }
  workgroupBarrier();
  let mk = rk[0];
  var id = ri[0];
  if (p.greedy == 0u) {
    // 2. The k-th largest key (counting repeats) by radix select, most significant byte first.
    var kth = NEG_INF_KEY;
    if (p.topK > 0u && p.topK < n) {
      for (var d = 0u; d < 4u; d++) {
        let shift = 24u - 8u * d;
        let hiMask = ~(0xffffffffu >> (8u * d)); // the bytes already decided
        atomicStore(&hist[li], 0u);
        workgroupBarrier();
        let pre = sel.x;
        for (var i = li; i < n; i += WG) {
          let k = key(x[i]);
          if ((k & hiMask) == pre) { atomicAdd(&hist[(k >> shift) & 255u], 1u); }
        }
        workgroupBarrier();
        if (li == 0u) {
          var r = sel.y;
          var b = 255u;
          loop {
            let c = atomicLoad(&hist[b]);
            if (c >= r || b == 0u) { break; }
            r -= c;
            b -= 1u;
          }
          sel = vec2u(pre | (b << shift), r);
        }
        workgroupBarrier();
      }
      kth = sel.x;
    }
    // 3. Survivor weights over contiguous chunks, chunk sums, serial scan of the sums.
    let m = unkey(mk);
    let c = (n + WG - 1u) / WG;
    let lo = min(li * c, n);
    let hi = min(lo + c, n);
    var s = 0.0;
    var last = 0u;
    for (var i = lo; i < hi; i++) {
      let w = weight(x[i], mk, m, kth);
      s += w;
      if (w > 0.0) { last = i + 1u; }
    }
    atomicMax(&lastPos, last);
    ex[li + 1u] = s;
    workgroupBarrier();
    if (li == 0u) {
      var acc = 0.0;
      ex[0] = 0.0;
      for (var t = 1u; t <= WG; t++) {
        acc += ex[t];
        ex[t] = acc;
      }
      tgt = p.u * acc;
    }
    workgroupBarrier();
    // 4. The chunk holding the target walks its ids in ascending order.
    let e0 = ex[li];
    let goal = tgt;
    if (s > 0.0 && goal >= e0 && goal < ex[li + 1u]) {
      var cum = 0.0;
      var found = NONE;
      var lastHere = lo;
      for (var i = lo; i < hi; i++) {
        let w = weight(x[i], mk, m, kth);
        cum += w;
        if (w > 0.0) {
          lastHere = i;
          if (goal < e0 + cum) { found = i; break; }
        }
      }
      pick = select(found, lastHere, found == NONE); // the fallback only guards against rounding
    }
    workgroupBarrier();
    if (li == 0u && mk != NEG_INF_KEY) {
      id = select(pick, atomicLoad(&lastPos) - 1u, pick == NONE);
    }
  }
  if (li == 0u) {
    out[p.index] = i32(id);
    ${token ? "tok[0] = i32(id);" : ""}
  }
}`;
}

/**
 * Chooses the next token id from one row of logits (1,V) or (V) f32 on the GPU, one dispatch, no
 * read back: the id (< n) goes to `out[index]` (and `token[0]` when given). Returns `out`.
 * Same result as {@link sampleCpu}, up to f32 rounding of the sampling distribution.
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { sampleLogits } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const logits = gpu.upload([1, 5, 5, 9], [1, 4]);
 * const id = sampleLogits(gpu, logits, { greedy: true, n: 3 });
 * console.log(await gpu.read(id)); // Int32Array [1]
 * ```
 */
export function sampleLogits(
  gpu: Gpu,
  logits: Tensor,
  options: SampleOptions,
  targets: SampleTargets = {},
): Tensor {
  const op = "sampleLogits";
  if (logits.dtype !== "f32") throw new TypeError(`${op}: logits must be f32, got ${logits.dtype}`);
  const V = logits.shape[logits.shape.length - 1] ?? 0;
  if (logits.size !== V || V < 1) {
    throw new RangeError(`${op}: logits has shape [${logits.shape}], expected one row (1,V)`);
  }
  const o = resolve(options, V, op);
  const out = targets.out ?? gpu.empty([1], "i32"); // (1) or (count) ids
  const index = targets.index ?? 0;
  if (out.dtype !== "i32") throw new TypeError(`${op}: out must be i32, got ${out.dtype}`);
  if (!Number.isInteger(index) || index < 0 || index >= out.size) {
    throw new RangeError(`${op}: index ${index} is outside out [${out.shape}]`);
  }
  const token = targets.token;
  if (token && (token.dtype !== "i32" || token.size < 1)) {
    throw new TypeError(`${op}: token must be an i32 tensor of >= 1 element`);
  }
  const pipe = gpu.pipeline(`sample|${token ? "token" : "plain"}`, () => sampleKernel(!!token));
  const params = new Params().u32(o.n).u32(o.greedy ? 1 : 0).u32(o.topK).u32(index)
    .f32(1 / o.temperature).f32(o.greedy ? 0 : o.u);
  gpu.dispatch(pipe, token ? [logits, out, token] : [logits, out], params, 1);
  return out;
}
