/**
 * Fused elementwise ops: one kernel evaluates a WGSL expression over up to four inputs, each read
 * in full, broadcast along rows (a bias of the last dimension) or as a scalar. Bias, residual,
 * activation and scaling fuse into one pass over memory (on lavapipe a dispatch costs ~40 us and
 * memory is the limit, so fusing is the main lever).
 *
 * Variants: one generic kernel, specialised per expression and broadcast pattern, 4 elements per
 * invocation, 256 invocations per workgroup, 2-D grid for tensors over 65535 workgroups.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "../gpu.ts";
import { numel, Tensor } from "../tensor.ts";

/** How an input is indexed against the output. */
export type Broadcast = "full" | "row" | "scalar";

/** One input of {@link map}: a tensor and how it broadcasts. */
export interface MapInput {
  t: Tensor;
  as?: Broadcast;
}

const NAMES = ["a", "b", "c", "d"];
const PER_THREAD = 4;
const WG = 256;

function mapKernel(expr: string, modes: Broadcast[], dtypes: string[], outF16: boolean): string {
  const load = (m: Broadcast, name: string, dt: string, k: number) => {
    const idx = m === "full" ? "i" : m === "row" ? "(i % p.C)" : "0u";
    return dt === "f16"
      ? `let ${name} = unpack2x16float(in${k}[${idx} / 2u])[${idx} % 2u];`
      : `let ${name} = f32(in${k}[${idx}]);`;
  };
  const ty = (dt: string) => (dt === "f16" ? "u32" : dt);
  const decls = modes.map((_, k) =>
    `@group(0) @binding(${k}) var<storage, read> in${k}: array<${ty(dtypes[k])}>;`
  ).join("\n");
  const loads = modes.map((m, k) => load(m, NAMES[k], dtypes[k], k)).join("\n      ");
  const n = modes.length;
  if (outF16) {
    return `${decls}
@group(0) @binding(${n}) var<storage, read_write> out: array<u32>;
struct P { N: u32, C: u32 }
@group(0) @binding(${n + 1}) var<uniform> p: P;
fn f(i: u32) -> f32 {
  ${loads}
  return ${expr};
}
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let w = (${WG_INDEX} * ${WG}u + li);
  let i = w * 2u;
  if (i >= p.N) { return; }
  let lo = f(i);
  var hi = 0.0;
  if (i + 1u < p.N) { hi = f(i + 1u); }
  out[w] = pack2x16float(vec2f(lo, hi));
}`;
  }
  return `${decls}
@group(0) @binding(${n}) var<storage, read_write> out: array<f32>;
struct P { N: u32, C: u32 }
@group(0) @binding(${n + 1}) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let base = (${WG_INDEX} * ${WG}u + li) * ${PER_THREAD}u;
  for (var k = 0u; k < ${PER_THREAD}u; k++) {
    let i = base + k;
    if (i >= p.N) { return; }
    {
      ${loads}
      out[i] = ${expr};
    }
  }
}`;
}

/**
 * Evaluates `expr` (WGSL over `a`, `b`, `c`, `d`, all f32) for every element of the output, whose shape
 * is that of the first `full` input. Row inputs have the output's last dimension as their size.
 * Writes into `out` when given; `out` must not be one of the inputs (WebGPU forbids binding a buffer
 * writable and readable in one dispatch).
 */
export function map(
  gpu: Gpu,
  expr: string,
  inputs: readonly (Tensor | MapInput)[],
  out?: Tensor,
): Tensor {
  if (inputs.length < 1 || inputs.length > 4) throw new RangeError("map: 1 to 4 inputs");
  const ins = inputs.map((x) => (x instanceof Tensor ? { t: x, as: "full" as Broadcast } : x));
  const modes = ins.map((x) => x.as ?? "full");
  const shapeSrc = ins.find((x, k) => modes[k] === "full");
  const shape = out?.shape ?? shapeSrc?.t.shape;
  if (!shape) throw new RangeError("map: needs an output or at least one full input");
  const N = numel(shape);
  const C = shape.length ? shape[shape.length - 1] : 1;
  ins.forEach((x, k) => {
    const want = modes[k] === "full" ? N : modes[k] === "row" ? C : 1;
    if (x.t.size !== want) {
      throw new RangeError(
        `map(${expr}): input ${NAMES[k]} has shape [${x.t.shape}], expected ${want} elements (${
          modes[k]
        } against [${shape}])`,
      );
    }
  });
  const o = out ?? gpu.empty(shape, "f32");
  if (o.size !== N) throw new RangeError(`map: out has shape [${o.shape}], expected [${shape}]`);
  if (ins.some((x) => x.t.buffer === o.buffer)) {
    throw new RangeError(`map(${expr}): out aliases an input; WebGPU cannot bind one buffer twice here`);
  }
  const outF16 = o.dtype === "f16";
  const dtypes = ins.map((x) => x.t.dtype);
  const key = `map|${expr}|${modes.join(",")}|${dtypes.join(",")}|${o.dtype}`;
  const pipe = gpu.pipeline(key, () => mapKernel(expr, modes, dtypes, outF16));
  const per = outF16 ? 2 : PER_THREAD;
  gpu.dispatch(
    pipe,
    [...ins.map((x) => x.t), o],
    new Params().u32(N).u32(C),
    grid(Math.ceil(N / (WG * per))),
  );
  return o;
}

/** CPU reference of {@link map}: `fn` gets the broadcast values of each input. */
export function mapCpu(
  fn: (...v: number[]) => number,
  inputs: readonly { data: ArrayLike<number>; as?: Broadcast }[],
  N: number,
  C: number,
): Float32Array {
  const out = new Float32Array(N);
  const v = new Array<number>(inputs.length);
  for (let i = 0; i < N; i++) {
    for (let k = 0; k < inputs.length; k++) {
      const m = inputs[k].as ?? "full";
      v[k] = inputs[k].data[m === "full" ? i : m === "row" ? i % C : 0];
    }
    out[i] = fn(...v);
  }
  return out;
}

// Named ops. The expressions are the single source of the math; the CPU twins below mirror them.
const SILU = "a / (1.0 + exp(-a))";
// tanh-approximation GELU (GPT-2). Clamped so exp() never overflows for |x| large.
const GELU =
  "0.5 * a * (1.0 + tanh(clamp(0.7978845608 * (a + 0.044715 * a * a * a), -15.0, 15.0)))";

/** out = a + b */
export const add = (g: Gpu, a: Tensor, b: Tensor, out?: Tensor): Tensor =>
  map(g, "a + b", [a, b], out);
/** out = a - b */
export const sub = (g: Gpu, a: Tensor, b: Tensor, out?: Tensor): Tensor =>
  map(g, "a - b", [a, b], out);
/** out = a * b */
export const mul = (g: Gpu, a: Tensor, b: Tensor, out?: Tensor): Tensor =>
  map(g, "a * b", [a, b], out);
/** out = a * s */
export const scale = (g: Gpu, a: Tensor, s: number, out?: Tensor): Tensor =>
  map(g, `a * ${f32Literal(s)}`, [a], out);
/** out = x + bias (bias over the last dimension) */
export const biasAdd = (g: Gpu, x: Tensor, bias: Tensor, out?: Tensor): Tensor =>
  map(g, "a + b", [x, { t: bias, as: "row" }], out);
/** out = silu(a) = a * sigmoid(a) */
export const silu = (g: Gpu, a: Tensor, out?: Tensor): Tensor => map(g, SILU, [a], out);
/** out = gelu(a) (tanh approximation) */
export const gelu = (g: Gpu, a: Tensor, out?: Tensor): Tensor => map(g, GELU, [a], out);
/** dx = dy * silu'(x) */
export const siluBackward = (g: Gpu, x: Tensor, dy: Tensor, out?: Tensor): Tensor =>
  map(g, "b * (1.0 / (1.0 + exp(-a))) * (1.0 + a * (1.0 - 1.0 / (1.0 + exp(-a))))", [x, dy], out);
/** Converts any float tensor to `dtype` storage (e.g. f32 -> packed f16). */
export const cast = (g: Gpu, a: Tensor, dtype: "f32" | "f16"): Tensor =>
  map(g, "a", [a], g.empty(a.shape, dtype));

/** A WGSL f32 literal for a JS number (exact for f32-representable values). */
export function f32Literal(x: number): string {
  if (!Number.isFinite(x)) throw new RangeError(`Not a finite number: ${x}`);
  const s = Math.fround(x).toString();
  return /[.eE]/.test(s) ? s.replace(/^(-?\d+)e/, "$1.0e") : `${s}.0`;
}

/** CPU references of the named ops. */
export const cpu = {
  silu: (a: number) => a / (1 + Math.exp(-a)),
  gelu: (a: number) =>
    0.5 * a * (1 + Math.tanh(Math.max(-15, Math.min(15, 0.7978845608 * (a + 0.044715 * a ** 3))))),
  siluBackward: (a: number, dy: number) => {
    const s = 1 / (1 + Math.exp(-a));
    return dy * s * (1 + a * (1 - s));
  },
};
