/**
 * WGSL helpers shared by kernels, not part of the package's exports.
 * @module
 */

/**
 * a / b for a < 2^22 by the reciprocal r = 1 / b: the product's truncation is the quotient or one
 * below it (r and the product round to f32, each within 2^-24 relative, so the product exceeds a / b
 * by less than a * 2^-23 / b < 1 / (2b), short of the next integer, which is at least 1 / b away; it
 * may fall just below an exact quotient), corrected by the remainder's size. The forward conv's
 * channel loop divides plane and weight-row numbers by the layout's P and wH, uniforms: an integer
 * division by a non-constant is one scalar `div` per lane on lavapipe (8 per vector; the loop's head
 * was ~9% of a 3x3 conv's `perf` samples). Measured with a one-off script (best of 7, one process,
 * alternating; 8 x 64 at 32x32 / 8 x 128 at 16x16): forward 8.14 / 8.24 -> 7.41 / 7.85 ms, dx
 * 7.68 / 6.70 -> 7.22 / 6.43 ms; compiling the sizes in instead was as fast but makes a pipeline per
 * layout. conv2d.ts's launchFwd checks the range.
 */
export const UDIVF = `
fn udivf(a: u32, b: u32, r: f32) -> u32 {
  let q = u32(f32(a) * r);
  return select(q, q + 1u, a - q * b >= b);
}`;
