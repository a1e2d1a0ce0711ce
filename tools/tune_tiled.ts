/**
 * Times the `tiled` matmul (the real-GPU kernel) over tile shapes and problem shapes on this
 * adapter, each checked against the `naive` kernel, so that {@link tiledConfig}'s defaults can be
 * chosen on the GPU they run on:
 *
 *   deno run -A --unstable-webgpu tools/tune_tiled.ts [--json] [--per N] [--quick] [--warmup S]
 *
 * A product's time is its GPU time from timestamp queries where the adapter has the feature (best
 * of 3 rounds of 3), else the wall time of `per` products between two syncs (by default as many as
 * fill ~0.1 s, 1 to 20), best of 3, less an empty sync's time (Deno's queue wait, ~11 ms on lavapipe
 * and on NVIDIA, would otherwise swamp the small shapes). `--quick`: two small shapes and two
 * tiles (a smoke run; lavapipe needs it, its barriers are emulated). Prints a table (GFLOP/s per
 * tile and shape, the default's pick marked `*`) and, with --json, one JSON line per measurement.
 * `--warmup S` (default 2, 0 with --quick): S seconds of 1024^3 matmuls first, so that a card that
 * idles at a low clock is at its working clock for the first shape.
 * @module
 */
import { parseArgs } from "node:util";
import { getGpu, type Gpu, type Tensor } from "@lvm/gpu";
import { matmul, tileBytes, type TileConfig, tiledConfig, tiledSplit } from "@lvm/kernels";
import { randu } from "@lvm/util/testing";
import { warmUp } from "./bench/_harness.ts";

const { values: args } = parseArgs({
  options: {
    json: { type: "boolean", default: false },
    quick: { type: "boolean", default: false },
    per: { type: "string" },
    warmup: { type: "string" },
  },
});
const perArg = args.per === undefined ? undefined : Number(args.per);
if (perArg !== undefined && (!Number.isInteger(perArg) || perArg < 1)) {
  throw new RangeError(`--per must be a positive integer, got ${args.per}`);
}

/** A product: M x K times K x N, B a Linear weight [N, K] when transB. */
interface Shape {
  M: number;
  K: number;
  N: number;
  transB?: boolean;
  /** A stored (K, M). */
  transA?: boolean;
  batch?: number;
  label: string;
}

const SHAPES: Shape[] = args.quick
  ? [{ M: 96, K: 80, N: 136, label: "96x80x136" }, {
    M: 64,
    K: 64,
    N: 64,
    transB: true,
    label: "64x64x64 linear",
  }]
  : [
    { M: 1024, K: 1024, N: 1024, label: "1024^3" },
    { M: 2048, K: 2048, N: 2048, label: "2048^3" },
    { M: 4096, K: 4096, N: 4096, label: "4096^3" },
    { M: 512, K: 640, N: 1664, transB: true, label: "512x640x1664 linear" },
    { M: 1024, K: 4096, N: 1024, transB: true, label: "1024x4096x1024 linear" },
    { M: 4096, K: 1024, N: 4096, transB: true, label: "4096x1024x4096 linear" },
    { M: 256, K: 64, N: 256, batch: 64, label: "64x 256x64x256 batched" },
    // The `100m` transformer's training step at T=256: forward (x W^T), dx (dy W), dW (dy^T x).
    { M: 256, K: 640, N: 1664, transB: true, label: "100m fwd 256x640x1664" },
    { M: 256, K: 1664, N: 640, label: "100m dx 256x1664x640" },
    { M: 1664, K: 256, N: 640, transA: true, label: "100m dW 1664x256x640" },
    { M: 256, K: 640, N: 640, transB: true, label: "100m fwd 256x640x640" },
  ];

const TILES: TileConfig[] = args.quick
  ? [{ BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 }, { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8 }]
  : [
    { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 },
    { BM: 64, BN: 64, BK: 8, TM: 4, TN: 4 },
    { BM: 64, BN: 128, BK: 16, TM: 4, TN: 8 },
    { BM: 128, BN: 64, BK: 8, TM: 8, TN: 4 },
    { BM: 64, BN: 128, BK: 8, TM: 4, TN: 8 },
    { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8 },
    { BM: 128, BN: 128, BK: 16, TM: 8, TN: 8 },
    { BM: 32, BN: 32, BK: 16, TM: 2, TN: 2 },
    { BM: 32, BN: 32, BK: 16, TM: 4, TN: 4 },
    { BM: 32, BN: 64, BK: 16, TM: 4, TN: 4 },
    { BM: 64, BN: 32, BK: 16, TM: 4, TN: 4 },
    { BM: 32, BN: 64, BK: 8, TM: 2, TN: 4 },
  ];

const tileName = (t: TileConfig) => `${t.BM}x${t.BN}x${t.BK}/${t.TM}x${t.TN}`;

/** Relative L2 error of `got` against `ref`. */
function relErr(got: Float32Array, ref: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = got[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

/**
 * Milliseconds of one product: its GPU time from timestamp queries where the adapter has them
 * (best of 3 rounds of 3 dispatches), else wall time of `per` products between syncs, the sync
 * measured alone and taken off.
 */
async function time(gpu: Gpu, run: () => void): Promise<number> {
  run();
  await gpu.sync();
  let best = Infinity;
  if (gpu.features.has("timestamp-query")) {
    for (let r = 0; r < 3; r++) {
      gpu.startProfile();
      for (let i = 0; i < 3; i++) run();
      const ks = (await gpu.stopProfile()).filter((k) => k.kernel.startsWith("matmul/"));
      best = Math.min(best, ks.reduce((a, k) => a + k.ms, 0) / 3);
    }
    return best;
  }
  let floor = Infinity;
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    await gpu.sync();
    floor = Math.min(floor, performance.now() - t0);
  }
  const t0 = performance.now();
  run();
  await gpu.sync();
  const per = perArg ??
    Math.max(1, Math.min(20, Math.round(100 / Math.max(performance.now() - t0 - floor, 0.1))));
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    for (let i = 0; i < per; i++) run();
    await gpu.sync();
    best = Math.min(best, (performance.now() - t0 - floor) / per);
  }
  return best;
}

const gpu = await getGpu();
const warmSeconds = Number(args.warmup ?? (args.quick ? 0 : 2));
if (!(warmSeconds >= 0)) throw new RangeError(`--warmup must be seconds >= 0, got ${args.warmup}`);
const warmed = await warmUp(gpu, warmSeconds);
console.error(
  `tune_tiled: ${gpu.describe()}; ${
    gpu.features.has("timestamp-query")
      ? "GPU time (timestamp queries)"
      : `${perArg ?? "up to 20"} products per timing`
  }, best of 3; warm-up ${warmed} products in ${warmSeconds} s`,
);
const maxShared = gpu.limits.maxComputeWorkgroupStorageSize;
/** What is timed: each tile shape alone (no split-K), then the default (tiledConfig, tiledSplit). */
const candidates: { name: string; tile?: TileConfig; splitK?: number }[] = [
  ...TILES.map((t) => ({ name: tileName(t), tile: t, splitK: 1 })),
  { name: "default" },
];
const table: string[][] = [["tile", ...SHAPES.map((s) => s.label)]];
const rows = new Map<string, string[]>();
for (const c of candidates) rows.set(c.name, [c.name]);
for (const s of SHAPES) {
  const { M, K, N, batch = 1 } = s;
  const a = gpu.upload(randu(batch * M * K, 1), [
    ...(batch > 1 ? [batch] : []),
    ...(s.transA ? [K, M] : [M, K]),
  ]);
  const b = gpu.upload(randu(batch * K * N, 2), [
    ...(batch > 1 ? [batch] : []),
    ...(s.transB ? [N, K] : [K, N]),
  ]);
  const opts = { transA: s.transA, transB: s.transB };
  const ref = await gpu.readF32(matmul(gpu, a, b, { ...opts, variant: "naive" }));
  const out: Tensor = gpu.empty(batch > 1 ? [batch, M, N] : [M, N], "f32");
  const pickTile = tiledConfig(gpu, M, N, batch);
  const pick = tileName(pickTile);
  const split = tiledSplit(Math.ceil(M / pickTile.BM) * Math.ceil(N / pickTile.BN) * batch, K);
  const flops = 2 * M * K * N * batch;
  for (const c of candidates) {
    const row = rows.get(c.name)!;
    if (c.tile && tileBytes(c.tile) > maxShared) {
      row.push("-");
      continue;
    }
    const run = () =>
      void matmul(gpu, a, b, { ...opts, variant: "tiled", tile: c.tile, splitK: c.splitK, out });
    run();
    const err = relErr(await gpu.readF32(out), ref);
    const ms = await time(gpu, run);
    const gflops = flops / ms / 1e6;
    const mark = c.name === pick ? "*" : "";
    row.push(err < 1e-5 ? `${gflops.toFixed(0)}${mark}` : `ERR ${err.toExponential(1)}`);
    if (args.json) {
      console.log(JSON.stringify({
        tile: c.tile ? c.name : pick,
        split_k: c.splitK ?? split,
        default: !c.tile,
        shape: s.label,
        ms: +ms.toFixed(4),
        gflops: +gflops.toFixed(1),
        rel_err: err,
      }));
    }
  }
  for (const x of [a, b, out]) x.release();
  console.error(`tune_tiled: ${s.label} done (default: ${pick}, split-K ${split})`);
}
for (const c of candidates) table.push(rows.get(c.name)!);
const widths = table[0].map((_, j) => Math.max(...table.map((r) => (r[j] ?? "").length)));
const text = table.map((r) => r.map((c, j) => c.padStart(widths[j])).join("  ")).join("\n");
console.error(
  `GFLOP/s of the tiled matmul, split-K off (* = tiledConfig's pick; default = its pick with\n` +
    `tiledSplit's split-K; ERR = rel. L2 error >= 1e-5):\n${text}`,
);
