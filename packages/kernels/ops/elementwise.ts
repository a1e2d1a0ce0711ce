/**
 * Fused elementwise ops: one kernel evaluates a WGSL expression over up to four inputs, each read
 * in full, broadcast along rows (a bias of the last dimension) or as a scalar. Bias, residual,
 * activation and scaling fuse into one pass over memory (on lavapipe a dispatch costs ~40 us and
 * memory is the limit, so fusing is the main lever).
 *
 * Variants, specialised per expression, broadcast pattern and dtypes (2-D grid over 65535
 * workgroups):
 * - "tex" (on request): the f32 full and row inputs are first copied into rgba32float textures (a
 *   transfer, memcpy speed) and read with `textureLoad`; the rest as in "vec4". It was lavapipe's
 *   default for N >= 65536 (Mesa 22.3 turns a storage-buffer load with a per-lane index into a loop
 *   over the SIMD lanes, texel fetches are vectorised: WEBGPU-CPU.md), until "vec4" measured faster
 *   with the driver's threads pinned (`a + b`, a one-off script, median of 5 runs, 2 cores):
 *   147456 elements 0.24 vs 0.17 ms, 2M 3.2 vs 2.3 ms, 16M 25.2 vs 20.9 ms. The copies run on the
 *   driver's queue thread while its workers wait.
 * - "vec4" (when N % 4 == 0 and every row input's length is a multiple of 4): inputs and output
 *   as `vec4<f32>` (f16 as `vec2<u32>`, two packed pairs), the expression evaluated per component,
 *   4 vec4s per invocation, 64 invocations per workgroup; a scalar input is read once per
 *   invocation, at a constant index.
 * - "scalar" (fallback): one f32 (or one packed f16 pair) at a time, 4 elements per invocation,
 *   256 invocations per workgroup.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import { numel, Tensor } from "@lvm/gpu";
import { TextureCache } from "@lvm/gpu";

/** How an input is indexed against the output. */
export type Broadcast = "full" | "row" | "scalar";

/** Kernel variants of {@link map} (see the module doc). */
export type MapVariant = "tex" | "vec4" | "scalar";

/** Options of {@link map}. */
export interface MapOptions {
  /** Force a variant (default: "vec4" when allowed, else "scalar"). */
  variant?: MapVariant;
}

/** One input of {@link map}: a tensor and how it broadcasts. */
export interface MapInput {
  t: Tensor;
  as?: Broadcast;
}

const NAMES = ["a", "b", "c", "d"];
const PER_THREAD = 4;
const WG = 256;

/**
 * WGSL: the entry point of the scalar elementwise kernels ({@link map}, swiglu's backward), up to
 * the body for element `i`: invocations of a workgroup of 256 take 4 consecutive elements each and
 * stop at `p.N`. The body closes the element loop and `main`; {@link perElementGrid} launches it.
 */
export const WGSL_PER_ELEMENT_MAIN = `@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let base = (${WG_INDEX} * ${WG}u + li) * ${PER_THREAD}u;
  for (var k = 0u; k < ${PER_THREAD}u; k++) {
    let i = base + k;
    if (i >= p.N) { return; }`;

/** The workgroups of a {@link WGSL_PER_ELEMENT_MAIN} kernel over `n` elements. */
export function perElementGrid(n: number): [number, number, number] {
  return grid(Math.ceil(n / (WG * PER_THREAD)));
}
/** vec4s per invocation and invocations per workgroup of the vec4 and tex variants. */
const VEC_PER_THREAD = 4;
const VEC_WG = 64;
/** Texels per row of the textures of {@link texelCopy}. */
export const TEXEL_ROW = 1024;

/** A tensor's f32 data in an rgba32float texture: texel i holds elements 4i..4i+3 at (i % 1024, i / 1024). */
export interface TexelCopy {
  texture: GPUTexture;
  view: GPUTextureView;
  /** Texels holding data (the texture may have more rows). */
  texels: number;
}

const texScratch = new TextureCache("texelCopy", 4);

/** Texture rows for `rows` rows of data: a power of two up to 1024, then a multiple of 512. */
function rowClass(rows: number): number {
  return rows <= 1024 ? Math.max(16, 2 ** Math.ceil(Math.log2(rows))) : Math.ceil(rows / 512) * 512;
}

/**
 * Records a copy of `t` (f32, size a multiple of 4) into a scratch texture of slot `slot` and
 * returns it. Textures are kept per slot and size class (rows: a power of two up to 1024, then a
 * multiple of 512), at most 4 classes per slot, the least recently used destroyed first; so the
 * scratch memory is a few times the largest input of each slot ({@link texelTrim} frees it).
 * A dispatch that reads several copies must give them different slots; reusing a slot in later
 * dispatches of the same batch is safe (WebGPU orders the copy after the earlier dispatch).
 */
export function texelCopy(gpu: Gpu, t: Tensor, slot: string): TexelCopy {
  if (t.dtype !== "f32" || t.size % 4 !== 0 || t.size === 0) {
    throw new RangeError(
      `texelCopy: tensor [${t.shape}] ${t.dtype} must be f32 with a size that is a multiple of 4`,
    );
  }
  const texels = t.size / 4;
  const H = rowClass(Math.ceil(texels / TEXEL_ROW));
  if (H > gpu.limits.maxTextureDimension2D) {
    throw new RangeError(
      `texelCopy: [${t.shape}] needs ${H} texture rows, over this adapter's ${gpu.limits.maxTextureDimension2D}`,
    );
  }
  const tex = texScratch.get(gpu, slot, TEXEL_ROW, H, 1, {
    usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
    view: "2d",
  });
  const full = Math.floor(texels / TEXEL_ROW);
  const bytesPerRow = TEXEL_ROW * 16;
  if (full > 0) {
    gpu.copyToTexture(t, { bytesPerRow, rowsPerImage: full }, { texture: tex.texture }, [
      TEXEL_ROW,
      full,
    ]);
  }
  const rest = texels - full * TEXEL_ROW;
  if (rest > 0) {
    const origin = [0, full];
    gpu.copyToTexture(t, { offset: full * bytesPerRow }, { texture: tex.texture, origin }, [
      rest,
      1,
    ]);
  }
  return { texture: tex.texture, view: tex.view, texels };
}

/** Frees the scratch textures of {@link texelCopy} (they are re-made on demand). */
export function texelTrim(gpu: Gpu): void {
  texScratch.trim(gpu);
}

/** WGSL to fetch texel `i` (a u32 expression) of a {@link texelCopy} texture bound as `name`. */
export function wgslTexel(name: string, i: string): string {
  return `textureLoad(${name}, vec2u((${i}) % ${TEXEL_ROW}u, (${i}) / ${TEXEL_ROW}u), 0)`;
}

/** Where an input of the vec4/tex variants comes from. */
type Source = "buf32" | "buf16" | "tex";

/**
 * The vec4 and tex variants: `p.N` and `p.C` count vec4s. f32 buffers are `array<vec4f>`, f16
 * buffers `array<vec2u>` (4 halves), "tex" inputs texelCopy textures; a scalar input is one element.
 */
function mapKernelVec4(
  expr: string,
  modes: Broadcast[],
  srcs: Source[],
  outF16: boolean,
): string {
  const n = modes.length;
  const decls = modes.map((m, k) => {
    if (srcs[k] === "tex") return `@group(0) @binding(${k}) var in${k}: texture_2d<f32>;`;
    const f16 = srcs[k] === "buf16";
    const ty = m === "scalar" ? (f16 ? "u32" : "f32") : f16 ? "vec2u" : "vec4f";
    return `@group(0) @binding(${k}) var<storage, read> in${k}: array<${ty}>;`;
  }).join("\n");
  const load = (m: Broadcast, k: number) => {
    if (m === "scalar") {
      return srcs[k] === "buf16"
        ? `let v${k} = vec4f(unpack2x16float(in${k}[0]).x);`
        : `let v${k} = vec4f(in${k}[0]);`;
    }
    const idx = m === "full" ? "i" : "(i % p.C)";
    if (srcs[k] === "tex") return `let v${k} = ${wgslTexel(`in${k}`, idx)};`;
    return srcs[k] === "buf16"
      ? `let w${k} = in${k}[${idx}];
      let v${k} = vec4f(unpack2x16float(w${k}.x), unpack2x16float(w${k}.y));`
      : `let v${k} = in${k}[${idx}];`;
  };
  // Scalar inputs are loop-invariant: load them once.
  const hoisted = modes.map((m, k) => (m === "scalar" ? load(m, k) : "")).join("\n  ");
  const loads = modes.map((m, k) => (m === "scalar" ? "" : load(m, k))).join("\n      ");
  const args = (c: string) => modes.map((_, k) => `v${k}.${c}`).join(", ");
  const params = modes.map((_, k) => `${NAMES[k]}: f32`).join(", ");
  const value = `vec4f(f(${args("x")}), f(${args("y")}), f(${args("z")}), f(${args("w")}))`;
  const store = outF16
    ? `let r = ${value};
      out[i] = vec2u(pack2x16float(r.xy), pack2x16float(r.zw));`
    : `out[i] = ${value};`;
  return `${decls}
@group(0) @binding(${n}) var<storage, read_write> out: array<${outF16 ? "vec2u" : "vec4f"}>;
struct P { N: u32, C: u32 }
@group(0) @binding(${n + 1}) var<uniform> p: P;
fn f(${params}) -> f32 {
  return ${expr};
}
@compute @workgroup_size(${VEC_WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let base = (${WG_INDEX} * ${VEC_WG}u + li) * ${VEC_PER_THREAD}u;
  ${hoisted}
  for (var k = 0u; k < ${VEC_PER_THREAD}u; k++) {
    let i = base + k;
    if (i >= p.N) { return; }
    {
      ${loads}
      ${store}
    }
  }
}`;
}

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
${WGSL_PER_ELEMENT_MAIN}
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
 * writable and readable in one dispatch). `options.variant` forces a kernel variant (see the module
 * doc; a variant the inputs do not allow falls back to the next one).
 */
export function map(
  gpu: Gpu,
  expr: string,
  inputs: readonly (Tensor | MapInput)[],
  out?: Tensor,
  options: MapOptions = {},
): Tensor {
  if (inputs.length < 1 || inputs.length > 4) throw new RangeError("map: 1 to 4 inputs");
  const ins = inputs.map((x) => (x instanceof Tensor ? { t: x, as: "full" as Broadcast } : x));
  const modes = ins.map((x) => x.as ?? "full");
  const shapeSrc = ins.find((_x, k) => modes[k] === "full");
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
    throw new RangeError(
      `map(${expr}): out aliases an input; WebGPU cannot bind one buffer twice here`,
    );
  }
  const outF16 = o.dtype === "f16";
  const dtypes = ins.map((x) => x.t.dtype);
  const floats = dtypes.every((d) => d === "f32" || d === "f16");
  const vec4 = floats && N % 4 === 0 && (C % 4 === 0 || !modes.includes("row")) &&
    options.variant !== "scalar";
  if (vec4) {
    const wantTex = options.variant === "tex";
    const rows = rowClass(Math.ceil(N / 4 / TEXEL_ROW));
    const tex = wantTex && rows <= gpu.limits.maxTextureDimension2D;
    const srcs: Source[] = ins.map((x, k) =>
      x.t.dtype === "f16" ? "buf16" : tex && modes[k] !== "scalar" ? "tex" : "buf32"
    );
    const key = `map|vec4|${expr}|${modes.join(",")}|${srcs.join(",")}|${o.dtype}`;
    const pipe = gpu.pipeline(key, () => mapKernelVec4(expr, modes, srcs, outF16));
    const bind = (x: MapInput, k: number) =>
      srcs[k] === "tex" ? texelCopy(gpu, x.t, `map${k}`).view : x.t;
    gpu.dispatch(
      pipe,
      [...ins.map(bind), o],
      new Params().u32(N / 4).u32(C / 4),
      grid(Math.ceil(N / 4 / (VEC_WG * VEC_PER_THREAD))),
    );
    return o;
  }
  const key = `map|scalar|${expr}|${modes.join(",")}|${dtypes.join(",")}|${o.dtype}`;
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
