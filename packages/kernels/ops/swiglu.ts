/**
 * SwiGLU, the gate of LLaMA's MLP: `h = silu(gate) * up`, where gate = x Wg^T and up = x Wu^T come
 * from the matmul helper's `linear` (HF LlamaMLP: `down(act_fn(gate_proj(x)) * up_proj(x))`).
 *
 * Variants: the forward is one fused {@link map} expression (memory bound: 2 reads + 1 write); the
 * backward is one kernel with two outputs, so gate, up and dh are each read once (3 reads + 2 writes),
 * 4 elements per invocation, 256 invocations per workgroup, 2-D grid past 65535 workgroups.
 *
 * Math (s = sigmoid(g)): h = g*s*u; dh/du = g*s; dh/dg = u * s * (1 + g*(1 - s)).
 * For g = -300, exp(300) overflows to inf and s = 0 exactly, so every expression stays finite.
 * @module
 */
import { type Gpu, Params } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";
import { map, perElementGrid, WGSL_PER_ELEMENT_MAIN } from "./elementwise.ts";

// silu(a) * b. a / (1 + exp(-a)) rather than a * sigmoid: one division, exact 0 at a = -inf.
const SWIGLU = "a / (1.0 + exp(-a)) * b";

function checkPair(op: string, gate: Tensor, up: Tensor, extra?: [string, Tensor]) {
  const same = (a: readonly number[], b: readonly number[]) =>
    a.length === b.length && a.every((d, i) => d === b[i]);
  if (!same(gate.shape, up.shape)) {
    throw new RangeError(
      `${op}: up has shape [${up.shape}], expected gate's shape [${gate.shape}]`,
    );
  }
  if (extra && !same(extra[1].shape, gate.shape)) {
    throw new RangeError(
      `${op}: ${extra[0]} has shape [${extra[1].shape}], expected gate's shape [${gate.shape}]`,
    );
  }
  for (const [name, t] of [["gate", gate], ["up", up], ...(extra ? [extra] : [])] as const) {
    if (t.dtype !== "f32") throw new TypeError(`${op}: ${name} must be f32, got ${t.dtype}`);
  }
}

/**
 * `silu(gate) * up`, elementwise. gate, up: (N,F) f32 (any shape, the same for both).
 * Writes into `out` when given (it must not alias an input).
 *
 * @example
 * ```ts
 * import { getGpu } from "@lvm/gpu";
 * import { swiglu } from "@lvm/kernels";
 * const gpu = await getGpu();
 * const h = swiglu(gpu, gpu.upload([0, 1], [1, 2]), gpu.upload([5, 2], [1, 2]));
 * console.log(await gpu.read(h)); // Float32Array [0, 1.4621...]
 * ```
 */
export function swiglu(gpu: Gpu, gate: Tensor, up: Tensor, out?: Tensor): Tensor {
  checkPair("swiglu", gate, up);
  return map(gpu, SWIGLU, [gate, up], out); // (N,F)
}

function swigluBackwardKernel(): string {
  return `
@group(0) @binding(0) var<storage, read> gate: array<f32>;
@group(0) @binding(1) var<storage, read> up: array<f32>;
@group(0) @binding(2) var<storage, read> dh: array<f32>;
@group(0) @binding(3) var<storage, read_write> dgate: array<f32>;
@group(0) @binding(4) var<storage, read_write> dup: array<f32>;
struct P { N: u32 }
@group(0) @binding(5) var<uniform> p: P;
${WGSL_PER_ELEMENT_MAIN}
    let g = gate[i];
    let u = up[i];
    let d = dh[i];
    let s = 1.0 / (1.0 + exp(-g));
    dup[i] = d * g * s;
    dgate[i] = d * u * s * (1.0 + g * (1.0 - s));
  }
}`;
}

/**
 * Backward of {@link swiglu}: given gate, up and dh = dL/d(silu(gate)*up), all (N,F) f32,
 * returns `{ dgate, dup }` (N,F).
 */
export function swigluBackward(
  gpu: Gpu,
  gate: Tensor,
  up: Tensor,
  dh: Tensor,
): { dgate: Tensor; dup: Tensor } {
  checkPair("swigluBackward", gate, up, ["dh", dh]);
  const N = gate.size;
  const dgate = gpu.empty(gate.shape); // (N,F)
  const dup = gpu.empty(gate.shape); // (N,F)
  const pipe = gpu.pipeline("swigluBackward", swigluBackwardKernel);
  gpu.dispatch(
    pipe,
    [gate, up, dh, dgate, dup],
    new Params().u32(N),
    perElementGrid(N),
  );
  return { dgate, dup };
}

/** CPU reference of {@link swiglu} (f64 math, f32 result). */
export function swigluCpu(gate: ArrayLike<number>, up: ArrayLike<number>): Float32Array {
  const out = new Float32Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = gate[i] / (1 + Math.exp(-gate[i])) * up[i];
  return out;
}

/** CPU reference of {@link swigluBackward} (analytic, f64 math). */
export function swigluBackwardCpu(
  gate: ArrayLike<number>,
  up: ArrayLike<number>,
  dh: ArrayLike<number>,
): { dgate: Float32Array; dup: Float32Array } {
  const n = gate.length;
  const dgate = new Float32Array(n), dup = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const g = gate[i], s = 1 / (1 + Math.exp(-g));
    dup[i] = dh[i] * g * s;
    dgate[i] = dh[i] * up[i] * s * (1 + g * (1 - s));
  }
  return { dgate, dup };
}
