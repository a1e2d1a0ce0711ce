import { add, silu } from "@lvm/kernels";
import { type Gpu, type Tensor } from "@lvm/gpu";
import type { BenchCase } from "./_harness.ts";

const N = 4096 * 1024;
let a: Tensor, b: Tensor, o: Tensor;
const setup = (gpu: Gpu) => {
  a = gpu.upload(new Float32Array(N).fill(0.5), [4096, 1024]);
  b = gpu.upload(new Float32Array(N).fill(0.25), [4096, 1024]);
  o = gpu.empty([4096, 1024]);
};
const teardown = () => [a, b, o].forEach((t) => t.release());

/** Elementwise kernels: memory bound, so GB/s (bytes = reads + writes, f32). */
export const benches: BenchCase[] = [
  {
    name: "add",
    shape: "4096x1024",
    bytes: 3 * 4 * N,
    note: "2 reads + 1 write of 4 MiElem f32",
    setup: (gpu) => (setup(gpu), () => add(gpu, a, b, o)),
    teardown,
  },
  {
    name: "add then silu",
    shape: "4096x1024",
    bytes: 5 * 4 * N,
    note: "two passes: 3+2 f32 streams",
    setup: (gpu) => (setup(gpu), () => silu(gpu, add(gpu, a, b, o), b)),
    teardown,
  },
];
