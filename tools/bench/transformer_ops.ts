/**
 * Transformer kernels of @lvm/kernels at the 100m preset's sizes (hidden 640, 10 heads of 64):
 * RMSNorm, RoPE, causal attention forward/backward at T=1024 and decode against a 3840-token cache
 * (15 images of context, the official inference window), and the fused decode kernels' weight
 * streaming (decodeQkv, decodeFfn).
 * @module
 */
import {
  attention,
  attentionBackward,
  attentionDecode,
  attentionTuning,
  decodeFfn,
  decodeQkv,
  embedding,
  type PackedWeight,
  packWeight,
  qkvTuning,
  rmsnorm,
  rmsnormBackward,
  rope,
  swiglu,
} from "@lvm/kernels";
import { type Gpu, type Tensor } from "@lvm/gpu";
import { KvCache } from "@lvm/transformer";
import { randu } from "@lvm/util/testing";
import type { BenchCase } from "./_harness.ts";

let held: Tensor[] = [];
let cache: KvCache | null = null;
let packed: PackedWeight[] = [];
const keep = <T extends Tensor>(t: T): T => (held.push(t), t);
const teardown = () => {
  held.forEach((t) => t.release());
  held = [];
};
const rand = (gpu: Gpu, shape: number[], seed: number) =>
  keep(gpu.upload(randu(shape.reduce((a, b) => a * b, 1), seed), shape));
/**
 * Runs `f` `n` times and releases what it returns (so repeated runs reuse pooled buffers). Small
 * ops run several times per timed run: each run pays one ~11 ms sync on lavapipe.
 */
const drop = (f: () => Tensor | Tensor[] | Record<string, Tensor>, n = 1) => () => {
  for (let i = 0; i < n; i++) {
    const r = f();
    const ts = r instanceof Array ? r : "buffer" in r ? [r as Tensor] : Object.values(r);
    ts.forEach((t) => t.release());
  }
};
/** Repeats of the memory-bound ops per timed run. */
const REP = 10;
/** Decode: one token through the 22 layers of the 100m preset per timed run. */
const LAYERS = 22;

const N = 4096, C = 640, F = 1664;
const [B, T, H, D] = [1, 1024, 10, 64];
const causalFlops = (t: number) => 4 * B * H * t * t * D / 2;
const CACHE = 3840;

/** Memory-bound ops in GB/s, attention in GFLOP/s (causal: half of the 4*B*H*T*T*D matmul flops). */
export const benches: BenchCase[] = [
  {
    name: "embedding",
    shape: `${N} ids, 8292x${C}`,
    per: REP,
    bytes: REP * 2 * N * C * 4,
    note: `row gather: read + write N*C f32`,
    setup: (gpu) => {
      const ids = keep(
        gpu.upload(Int32Array.from({ length: N }, (_, i) => (i * 97) % 8192), [N], "i32"),
      );
      const table = rand(gpu, [8292, C], 1);
      return drop(() => embedding(gpu, ids, table), REP);
    },
    teardown,
  },
  ...(["rows", "wg"] as const).map((variant): BenchCase => ({
    name: `rmsnorm ${variant}`,
    shape: `${N}x${C}`,
    per: REP,
    bytes: REP * 2 * N * C * 4,
    note: `read x + write y, f32`,
    setup: (gpu) => {
      const x = rand(gpu, [N, C], 1), w = rand(gpu, [C], 2);
      return drop(() => rmsnorm(gpu, x, w, 1e-6, { variant }), REP);
    },
    teardown,
  })),
  ...(["rows", "wg"] as const).map((variant): BenchCase => ({
    name: `rmsnorm bwd ${variant}`,
    shape: `${N}x${C}`,
    per: REP,
    bytes: REP * 5 * N * C * 4,
    note: `dx: x, dy read + dx write; dw: x, dy read`,
    setup: (gpu) => {
      const x = rand(gpu, [N, C], 1), w = rand(gpu, [C], 2), dy = rand(gpu, [N, C], 3);
      const { y, rstd } = rmsnorm(gpu, x, w);
      keep(y), keep(rstd);
      return drop(() => rmsnormBackward(gpu, x, w, rstd, dy, { variant }), REP);
    },
    teardown,
  })),
  {
    name: "rope",
    shape: `B=${B} T=4096 H=${H} D=${D}`,
    per: REP,
    bytes: REP * 2 * 4096 * H * D * 4,
    note: `q: read + write (table reads not counted)`,
    setup: (gpu) => {
      const q = rand(gpu, [1, 4096, H, D], 1);
      return drop(() => rope(gpu, q, { heads: H, headDim: D }), REP);
    },
    teardown,
  },
  {
    name: "swiglu",
    shape: `${N}x${F}`,
    per: REP,
    bytes: REP * 3 * N * F * 4,
    note: `2 reads + 1 write`,
    setup: (gpu) => {
      const g = rand(gpu, [N, F], 1), u = rand(gpu, [N, F], 2);
      return drop(() => swiglu(gpu, g, u), REP);
    },
    teardown,
  },
  attnFwd(T),
  attnBwd(T),
  // The gpu kind's A/B of the "buffer" kernels' split (attentionTuning.split: the default, and 1),
  // at the bench's T = 1024 and at the `100m` train step's T = 256, 20 ops per timed run: a GPU
  // idling between single small ops (the ~11 ms sync) ran them at a lower clock (the same kernel
  // read 0.59 and 1.8 ms in two cases of one H200 run).
  ...[T, 256].flatMap((t) => [
    attnFwd(t, "split"),
    attnFwd(t, "unsplit"),
    attnBwd(t, "split"),
    attnBwd(t, "unsplit"),
  ]),
  {
    name: "attention decode",
    shape: `B=1 n=1 H=${H} D=${D} cache ${CACHE}`,
    per: LAYERS,
    flops: LAYERS * 4 * H * CACHE * D,
    bytes: LAYERS * 2 * CACHE * H * D * 4,
    note:
      `one token through ${LAYERS} layers per run (ms per layer); each reads its f32 K/V cache once`,
    setup: (gpu) => {
      const q = rand(gpu, [1, 1, H, D], 1);
      cache = new KvCache(gpu, { batch: 1, maxT: 4096, kvHeads: H, headDim: D });
      const k = rand(gpu, [1, CACHE, H, D], 2), v = rand(gpu, [1, CACHE, H, D], 3);
      cache.write(gpu, k, v, 0);
      return drop(() => attentionDecode(gpu, q, cache!.buffers, CACHE - 1), LAYERS);
    },
    teardown: () => {
      teardown();
      cache?.release();
    },
  },
  // The fused decode kernels, four tokens through 22 layers per run (the ~11 ms sync spread over
  // 88 dispatches), packed weights (what decode streams): bytes = the weights read once per
  // dispatch; the rest (x, the cache row) is small beside them.
  // Wv as a storage texture (the default where the device allows 5 per stage) and sampled.
  // The default; Wv sampled (qkvTuning.vStorage false); workgroups of 64 (qkvTuning.lanes; the
  // default is 32).
  ...([[null, null], [false, null], [null, 64]] as const).map(([vStorage, lanes]): BenchCase => ({
    name: vStorage === false
      ? "decodeQkv[Wv sampled]"
      : lanes
      ? `decodeQkv[lanes ${lanes}]`
      : "decodeQkv",
    shape: `D=${C} H=${H} hd=${D} packed f32`,
    per: 4 * LAYERS,
    bytes: 4 * LAYERS * 3 * H * D * C * 4,
    note: "rmsnorm + q/k/v projections + RoPE + the KV-cache append, one dispatch per layer",
    setup: (gpu) => {
      const x = rand(gpu, [1, C], 1), norm = rand(gpu, [C], 2);
      const w = (s: number) => packWeight(gpu, rand(gpu, [H * D, C], s), { transB: true });
      const ws = { q: w(3), k: w(4), v: w(5) };
      packed.push(ws.q, ws.k, ws.v);
      cache = new KvCache(gpu, { batch: 1, maxT: 64, kvHeads: H, headDim: D });
      const run = drop(
        () => decodeQkv(gpu, x, norm, ws, cache!.buffers, 5, { heads: H }),
        4 * LAYERS,
      );
      return () => {
        qkvTuning.vStorage = vStorage;
        qkvTuning.lanes = lanes;
        try {
          run();
        } finally {
          qkvTuning.vStorage = null;
          qkvTuning.lanes = null;
        }
      };
    },
    teardown: () => {
      teardown();
      packed.forEach((p) => p.release());
      packed = [];
      cache?.release();
    },
  })),
  {
    name: "decodeFfn",
    shape: `D=${C} F=${F} packed f32`,
    per: 4 * LAYERS,
    bytes: 4 * LAYERS * 2 * F * C * 4,
    note: "rmsnorm + gate and up projections + SwiGLU, one dispatch per layer",
    setup: (gpu) => {
      const x = rand(gpu, [1, C], 1), norm = rand(gpu, [C], 2);
      const w = (s: number) => packWeight(gpu, rand(gpu, [F, C], s), { transB: true });
      const ws = { gate: w(3), up: w(4) };
      packed.push(ws.gate, ws.up);
      return drop(() => decodeFfn(gpu, x, norm, ws), 4 * LAYERS);
    },
    teardown: () => {
      teardown();
      packed.forEach((p) => p.release());
      packed = [];
    },
  },
];

/** Runs `f` with attentionTuning.split at 1 (one row per lane) when `unsplit`. */
function splitOff<R>(unsplit: boolean, f: () => R): R {
  const before = attentionTuning.split;
  if (unsplit) attentionTuning.split = 1;
  try {
    return f();
  } finally {
    attentionTuning.split = before;
  }
}

/** The A/B variants: gpu kind only, 20 ops per run, "unsplit" with split 1. */
type AB = "split" | "unsplit";
function abFields(ab: AB | undefined) {
  return ab
    ? {
      kinds: ["gpu" as const],
      per: 20,
      reps: 3,
      note: ab === "unsplit" ? "; one row per lane (split 1)" : "; the kind's split",
    }
    : { per: 1, reps: 3, note: "" };
}

function attnFwd(t: number, ab?: AB): BenchCase {
  const { note, ...f } = abFields(ab);
  return {
    name: ab ? `attention fwd[${ab}]` : "attention fwd",
    shape: `B=${B} T=${t} H=${H} D=${D}`,
    flops: f.per * causalFlops(t),
    note: "4*B*H*T*T*D/2 (causal)" + note,
    ...f,
    setup: (gpu) => {
      const q = rand(gpu, [B, t, H, D], 1), k = rand(gpu, [B, t, H, D], 2);
      const v = rand(gpu, [B, t, H, D], 3);
      return drop(() => splitOff(ab === "unsplit", () => attention(gpu, q, k, v)), f.per);
    },
    teardown,
  };
}

function attnBwd(t: number, ab?: AB): BenchCase {
  const { note, ...f } = abFields(ab);
  return {
    name: ab ? `attention bwd[${ab}]` : "attention bwd",
    shape: `B=${B} T=${t} H=${H} D=${D}`,
    flops: f.per * 2.5 * causalFlops(t),
    note: "2.5x forward flops (FA2 count); this kernel pair does 3.5x" + note,
    ...f,
    setup: (gpu) => {
      const q = rand(gpu, [B, t, H, D], 1), k = rand(gpu, [B, t, H, D], 2);
      const v = rand(gpu, [B, t, H, D], 3), dout = rand(gpu, [B, t, H, D], 4);
      const { out, lse } = attention(gpu, q, k, v);
      keep(out), keep(lse);
      return drop(
        () => splitOff(ab === "unsplit", () => attentionBackward(gpu, q, k, v, out, lse, dout)),
        f.per,
      );
    },
    teardown,
  };
}
