/**
 * Nearest-neighbour 2x upsampling of NCHW images (the VQGAN decoder's `Upsample`, before its 3x3 conv)
 * and its backward (each input pixel's gradient is the sum of its 4 children).
 *
 * Variants: one kernel each way, one input pixel per invocation, the two output rows written as vec2
 * (2W is even, so every child pair is 8-byte aligned). Memory bound. conv2d can also fuse the upsample
 * into its padding pass (`conv2d(..., { upsample2x: true })`), which skips this kernel's output.
 * @module
 */
import { type Gpu, grid, Params, WG_INDEX } from "@lvm/gpu";
import type { Tensor } from "@lvm/gpu";

const WG = 256;

const FWD = `
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<vec2f>;
struct P { N: u32, H: u32, W: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * ${WG}u + li;   // input element (plane, h, w)
  if (i >= p.N) { return; }
  let w = i % p.W;
  let ph = i / p.W;                    // plane * H + h
  let v = vec2f(x[i]);
  // output row 2h of plane: (ph*2) * 2W; in vec2 units the row holds W pairs.
  let o = ph * 2u * p.W + w;
  y[o] = v;
  y[o + p.W] = v;
}`;

const BWD = `
@group(0) @binding(0) var<storage, read> dy: array<vec2f>;
@group(0) @binding(1) var<storage, read_write> dx: array<f32>;
struct P { N: u32, H: u32, W: u32 }
@group(0) @binding(2) var<uniform> p: P;
@compute @workgroup_size(${WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3u,
        @builtin(num_workgroups) nwg: vec3u) {
  let i = ${WG_INDEX} * ${WG}u + li;
  if (i >= p.N) { return; }
  let w = i % p.W;
  let ph = i / p.W;
  let o = ph * 2u * p.W + w;
  let a = dy[o];
  let b = dy[o + p.W];
  dx[i] = (a.x + a.y) + (b.x + b.y);
}`;

function check4d(name: string, t: Tensor): [number, number, number, number] {
  if (t.shape.length !== 4 || t.dtype !== "f32") {
    throw new RangeError(`${name}: expected an f32 (B,C,H,W) tensor, got [${t.shape}] ${t.dtype}`);
  }
  return t.shape as [number, number, number, number];
}

/** Nearest 2x upsample: x (B,C,H,W) -> (B,C,2H,2W), out[.., y, x] = in[.., y>>1, x>>1]. */
export function upsampleNearest2x(gpu: Gpu, x: Tensor, out?: Tensor): Tensor {
  const [B, C, H, W] = check4d("upsampleNearest2x x", x);
  const y = out ?? gpu.empty([B, C, 2 * H, 2 * W]); // (B,C,2H,2W)
  if (y.size !== 4 * x.size) {
    throw new RangeError(
      `upsampleNearest2x: out has shape [${y.shape}], expected [${B},${C},${2 * H},${2 * W}]`,
    );
  }
  const N = x.size;
  gpu.dispatch(
    gpu.pipeline("upsample2x", FWD),
    [x, y],
    new Params().u32(N).u32(H).u32(W),
    grid(Math.ceil(N / WG)),
  );
  return y;
}

/** Backward of {@link upsampleNearest2x}: dy (B,C,2H,2W) -> dx (B,C,H,W), the sum of the 4 children. */
export function upsampleNearest2xBackward(gpu: Gpu, dy: Tensor, out?: Tensor): Tensor {
  const [B, C, H2, W2] = check4d("upsampleNearest2xBackward dy", dy);
  if (H2 % 2 || W2 % 2) {
    throw new RangeError(
      `upsampleNearest2xBackward: dy spatial dims must be even, got [${dy.shape}]`,
    );
  }
  const H = H2 / 2, W = W2 / 2;
  const dx = out ?? gpu.empty([B, C, H, W]); // (B,C,H,W)
  if (dx.size * 4 !== dy.size) {
    throw new RangeError(
      `upsampleNearest2xBackward: out has shape [${dx.shape}], expected [${B},${C},${H},${W}]`,
    );
  }
  const N = dx.size;
  gpu.dispatch(
    gpu.pipeline("upsample2x_bwd", BWD),
    [dy, dx],
    new Params().u32(N).u32(H).u32(W),
    grid(Math.ceil(N / WG)),
  );
  return dx;
}

/** CPU reference of {@link upsampleNearest2x} on (B*C planes, H, W). */
export function upsampleNearest2xCpu(
  x: ArrayLike<number>,
  [B, C, H, W]: readonly number[],
): Float32Array {
  const out = new Float32Array(B * C * 4 * H * W);
  for (let p = 0; p < B * C; p++) {
    for (let y = 0; y < 2 * H; y++) {
      for (let xx = 0; xx < 2 * W; xx++) {
        out[(p * 2 * H + y) * 2 * W + xx] = x[(p * H + (y >> 1)) * W + (xx >> 1)];
      }
    }
  }
  return out;
}

/** CPU reference of {@link upsampleNearest2xBackward}; `shape` is the input's (B,C,H,W). */
export function upsampleNearest2xBackwardCpu(
  dy: ArrayLike<number>,
  [B, C, H, W]: readonly number[],
): Float32Array {
  const dx = new Float32Array(B * C * H * W);
  const W2 = 2 * W;
  for (let p = 0; p < B * C; p++) {
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const o = (p * 2 * H + 2 * y) * W2 + 2 * x;
        dx[(p * H + y) * W + x] = Math.fround(
          Math.fround(dy[o] + dy[o + 1]) + Math.fround(dy[o + W2] + dy[o + W2 + 1]),
        );
      }
    }
  }
  return dx;
}
