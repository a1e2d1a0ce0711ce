import { getGpu, grid, Params } from "@lvm/gpu";
import { assertEquals } from "@lvm/util/testing";
import { UDIVF } from "./_udivf.ts";

Deno.test("udivf (WGSL): a / b by the reciprocal is exact for a < 2^22", async () => {
  const gpu = await getGpu();
  // Every divisor up to 300 and a few large ones, against dividends at and around its multiples
  // (where a product rounded down truncates one too low, and one rounded up would reach the next
  // quotient), up to the range's end.
  const as: number[] = [], bs: number[] = [];
  const divisors = [...Array.from({ length: 300 }, (_, i) => i + 1), 1024, 4095, 8192, 65537];
  for (const b of divisors) {
    for (const base of [0, b, 7 * b, 2 ** 22 - 1 - ((2 ** 22 - 1) % b), 2 ** 21 + 3 * b]) {
      for (const d of [-1, 0, 1, b - 1]) {
        const a = base + d;
        if (a >= 0 && a < 2 ** 22) as.push(a), bs.push(b);
      }
    }
  }
  const n = as.length;
  const A = gpu.upload(as, [n], "i32"), B = gpu.upload(bs, [n], "i32"), Q = gpu.empty([n], "i32");
  gpu.dispatch(
    gpu.pipeline("test_udivf", () => `
@group(0) @binding(0) var<storage, read> a: array<u32>;
@group(0) @binding(1) var<storage, read> b: array<u32>;
@group(0) @binding(2) var<storage, read_write> q: array<u32>;
struct P { n: u32 }
@group(0) @binding(3) var<uniform> p: P;
${UDIVF}
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) g: vec3u) {
  if (g.x >= p.n) { return; }
  q[g.x] = udivf(a[g.x], b[g.x], 1.0 / f32(b[g.x]));
}`),
    [A, B, Q],
    new Params().u32(n),
    grid(Math.ceil(n / 64)),
  );
  const got = Array.from(await gpu.read(Q));
  assertEquals(got, as.map((a, i) => Math.floor(a / bs[i])));
  for (const t of [A, B, Q]) t.release();
});
