import { getGpu } from "@lvm/gpu";
import { assertClose, finiteDiff, randu } from "@lvm/util/testing";
import {
  attention,
  attentionBackward,
  attentionBackwardCpu,
  attentionCpu,
  attentionDecode,
  attentionTuning,
  type AttentionVariant,
  type KvBuffers,
  type KvDims,
  kvLayout,
  kvWrite,
  makeKvTexture,
} from "./attention.ts";
import type { Gpu } from "@lvm/gpu";

/** Plain KV storage of the given layout, as a cache would allocate it, and its release. */
function kvStore(gpu: Gpu, dims: KvDims, layout?: AttentionVariant): [KvBuffers, () => void] {
  const { B, maxT, KVH, D } = dims;
  if (kvLayout(gpu, dims, layout) === "tex") {
    const k = makeKvTexture(gpu, dims, "k"), v = makeKvTexture(gpu, dims, "v");
    return [{ ...dims, layout: "tex", k, v }, () => [k, v].forEach((t) => t.texture.destroy())];
  }
  const k = gpu.zeros([B, maxT, KVH, D]), v = gpu.zeros([B, maxT, KVH, D]);
  return [{ ...dims, layout: "buffer", k, v }, () => [k, v].forEach((t) => t.release())];
}

type Case = [number, number, number, number, number, AttentionVariant, number?, number?];
// [B, T, H, KVH, D, variant, rows per lane]: odd T around the query blocks, GQA groups, scalar (5)
// and vec4 head dims, the presets' 64/96/100/128. "tex" is the default on lavapipe, "buffer" the GPU
// variant. D = 96/100/128 run with 1 row per lane: the generated code differs from the default
// (2 rows) only in how often a row's statements repeat, and llvmpipe compiles it 3-5x faster.
// An 8th entry forces the "buffer" kernels' split (lanes per row; the gpu kind's default splits
// training sizes): rows whose split lanes see only masked keys, blocks past T, the merge's
// softmax rescaling, scalar and vec4 head dims.
const FORWARD: Case[] = [
  [1, 1, 1, 1, 4, "tex"],
  [1, 7, 3, 1, 5, "tex"],
  [2, 33, 2, 2, 12, "tex"],
  [1, 70, 3, 3, 64, "tex"],
  [2, 65, 4, 2, 8, "tex"],
  [1, 9, 2, 1, 100, "tex", 1],
  [1, 17, 1, 1, 96, "tex", 1],
  [1, 5, 2, 2, 128, "tex", 1],
  [1, 7, 3, 1, 5, "buffer"],
  [2, 70, 4, 2, 12, "buffer"],
  [1, 7, 3, 1, 5, "buffer", undefined, 4],
  [2, 70, 4, 2, 12, "buffer", undefined, 16],
  [1, 33, 2, 1, 64, "buffer", undefined, 8],
  [1, 9, 2, 2, 100, "buffer", undefined, 2],
];
const BACKWARD: Case[] = [
  [1, 7, 3, 1, 5, "tex"],
  [2, 33, 2, 2, 12, "tex"],
  [1, 70, 4, 2, 8, "tex"],
  [1, 20, 1, 1, 64, "tex"],
  [1, 7, 3, 1, 5, "buffer"],
  [1, 70, 4, 2, 12, "buffer"],
  [1, 7, 3, 1, 5, "buffer", undefined, 4],
  [1, 70, 4, 2, 12, "buffer", undefined, 16],
  [2, 33, 2, 1, 64, "buffer", undefined, 8],
  [1, 9, 2, 2, 100, "buffer", undefined, 2],
];

function inputs(B: number, T: number, H: number, KVH: number, D: number, seed: number, amp = 1) {
  return {
    q: randu(B * T * H * D, seed, -amp, amp),
    k: randu(B * T * KVH * D, seed + 1, -amp, amp),
    v: randu(B * T * KVH * D, seed + 2, -amp, amp),
  };
}

/** attention() of {@link inputs}: the inputs, and the output and log-sum-exp read back. */
async function attendInputs(
  gpu: Gpu,
  [B, T, H, KVH, D]: number[],
  seed: number,
  amp: number,
) {
  const { q, k, v } = inputs(B, T, H, KVH, D, seed, amp);
  const { out, lse } = attention(
    gpu,
    gpu.upload(q, [B, T, H, D]),
    gpu.upload(k, [B, T, KVH, D]),
    gpu.upload(v, [B, T, KVH, D]),
  );
  const [o, l] = await gpu.readMany([out, lse]);
  return { q, k, v, o, l };
}

Deno.test("attention()", async (t) => {
  const gpu = await getGpu();
  for (const [B, T, H, KVH, D, variant, rows, split] of FORWARD) {
    const name = `forward B=${B} T=${T} H=${H} KVH=${KVH} D=${D} ${variant}` +
      (split ? ` split ${split}` : "");
    await t.step(name, async () => {
      attentionTuning.variant = variant;
      attentionTuning.rows = rows ?? null;
      attentionTuning.split = split ?? null;
      const { q, k, v } = inputs(B, T, H, KVH, D, T + D, 2);
      const Q = gpu.upload(q, [B, T, H, D]);
      const K = gpu.upload(k, [B, T, KVH, D]), V = gpu.upload(v, [B, T, KVH, D]);
      const { out, lse } = attention(gpu, Q, K, V);
      const [o, l] = await gpu.readMany([out, lse]);
      const ref = attentionCpu(q, k, v, { B, Tq: T, H, KVH, D });
      assertClose(o, ref.out, { atol: 2e-6, rtol: 1e-4 }, "out");
      assertClose(l, ref.lse, { atol: 2e-6, rtol: 1e-5 }, "lse");
      [Q, K, V, out, lse].forEach((x) => x.release());
    });
  }
  attentionTuning.variant = null;
  attentionTuning.rows = null;
  attentionTuning.split = null;

  await t.step("extreme values: scores of +-1e5, values +-300", async () => {
    const [B, T, H, KVH, D] = [1, 40, 2, 1, 12];
    const { q, k, v, o, l } = await attendInputs(gpu, [B, T, H, KVH, D], 5, 300);
    const ref = attentionCpu(q, k, v, { B, Tq: T, H, KVH, D });
    assertClose(o, ref.out, { atol: 1e-3, rtol: 1e-4 }, "out extremes");
    assertClose(l, ref.lse, { atol: 1e-3, rtol: 1e-5 }, "lse extremes");
  });

  await t.step("T=4096, D=64: sampled rows match", async () => {
    const [B, T, H, KVH, D] = [1, 4096, 1, 1, 64];
    const { q, k, v, o, l } = await attendInputs(gpu, [B, T, H, KVH, D], 9, 1);
    for (const row of [0, 63, 64, 2049, 4095]) {
      // Reference for one query row: a Tq=1 problem at position `row`.
      const ref = attentionCpu(q.subarray(row * D, (row + 1) * D), k, v, {
        B,
        Tq: 1,
        H,
        KVH,
        D,
        Tk: T,
        qStart: row,
      });
      assertClose(
        o.subarray(row * D, (row + 1) * D),
        ref.out,
        { atol: 2e-6, rtol: 1e-4 },
        `row ${row}`,
      );
      assertClose([l[row]], ref.lse, { atol: 1e-5, rtol: 1e-5 }, `lse ${row}`);
    }
  });

  await t.step("shape errors name the input", () => {
    let msg = "";
    try {
      attention(gpu, gpu.zeros([1, 4, 3, 8]), gpu.zeros([1, 4, 2, 8]), gpu.zeros([1, 4, 2, 8]));
    } catch (e) {
      msg = e instanceof RangeError ? e.message : "";
    }
    if (!/3 query heads are not a multiple of 2 KV heads/.test(msg)) throw new Error(msg);
  });
});

Deno.test("attentionBackward()", async (t) => {
  const gpu = await getGpu();
  for (const [B, T, H, KVH, D, variant, , split] of BACKWARD) {
    await t.step(
      `analytic reference B=${B} T=${T} H=${H} KVH=${KVH} D=${D} ${variant}` +
        (split ? ` split ${split}` : ""),
      async () => {
        attentionTuning.variant = variant;
        attentionTuning.split = split ?? null;
        const { q, k, v } = inputs(B, T, H, KVH, D, 3 * T + D, 2);
        const dout = randu(q.length, 99);
        const Q = gpu.upload(q, [B, T, H, D]);
        const K = gpu.upload(k, [B, T, KVH, D]), V = gpu.upload(v, [B, T, KVH, D]);
        const { out, lse } = attention(gpu, Q, K, V);
        const g = attentionBackward(gpu, Q, K, V, out, lse, gpu.upload(dout, [B, T, H, D]));
        const [dq, dk, dv] = await gpu.readMany([g.dq, g.dk, g.dv]);
        const ref = attentionBackwardCpu(q, k, v, dout, { B, Tq: T, H, KVH, D });
        const tol = { atol: 1e-5, rtol: 1e-3 };
        assertClose(dq, ref.dq, tol, "dq");
        assertClose(dk, ref.dk, tol, "dk");
        assertClose(dv, ref.dv, tol, "dv");
        [Q, K, V, out, lse, g.dq, g.dk, g.dv].forEach((x) => x.release());
      },
    );
  }
  attentionTuning.variant = null;
  attentionTuning.split = null;

  await t.step("finite differences of the CPU reference (tiny, GQA)", async () => {
    const [B, T, H, KVH, D] = [1, 5, 2, 1, 3];
    const { q, k, v } = inputs(B, T, H, KVH, D, 61, 1.5);
    const w = randu(q.length, 62); // L = sum(out * w)
    const Q = gpu.upload(q, [B, T, H, D]);
    const K = gpu.upload(k, [B, T, KVH, D]), V = gpu.upload(v, [B, T, KVH, D]);
    const { out, lse } = attention(gpu, Q, K, V);
    const g = attentionBackward(gpu, Q, K, V, out, lse, gpu.upload(w, [B, T, H, D]));
    const [dq, dk, dv] = await gpu.readMany([g.dq, g.dk, g.dv]);
    const dm = { B, Tq: T, H, KVH, D };
    const loss = (qq: ArrayLike<number>, kk: ArrayLike<number>, vv: ArrayLike<number>) =>
      attentionCpu(qq, kk, vv, dm).out.reduce((s, o, i) => s + o * w[i], 0);
    const tol = { atol: 2e-4, rtol: 2e-3 };
    assertClose(dq, finiteDiff((x) => loss(x, k, v), q, 1e-3), tol, "fd dq");
    assertClose(dk, finiteDiff((x) => loss(q, x, v), k, 1e-3), tol, "fd dk");
    assertClose(dv, finiteDiff((x) => loss(q, k, x), v, 1e-3), tol, "fd dv");
  });
});

Deno.test("attentionDecode()", async (t) => {
  const gpu = await getGpu();
  // [B, H, KVH, D, maxT, lenPrev, n, kernel, cache layout]
  const CASES: [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
    "split" | "rows",
    AttentionVariant,
  ][] = [
    [1, 1, 1, 4, 8, 0, 1, "split", "tex"],
    [2, 3, 1, 12, 48, 39, 1, "split", "tex"],
    [1, 2, 2, 5, 48, 20, 3, "split", "tex"],
    [1, 2, 2, 12, 700, 650, 2, "split", "tex"], // several key slices
    [2, 2, 1, 12, 48, 20, 3, "rows", "tex"],
    [1, 3, 3, 8, 100, 17, 70, "rows", "tex"],
    [2, 3, 1, 12, 48, 39, 1, "split", "buffer"],
    [1, 2, 2, 5, 700, 650, 3, "split", "buffer"],
    [1, 3, 3, 12, 100, 17, 70, "rows", "buffer"],
  ];
  for (const [B, H, KVH, D, maxT, lenPrev, n, kernel, layout] of CASES) {
    const label =
      `B=${B} H=${H} KVH=${KVH} D=${D} cache ${lenPrev}+${n}/${maxT} ${kernel} ${layout}`;
    await t.step(`${label} == rows of full causal attention`, async () => {
      const T = lenPrev + n;
      const { q, k, v } = inputs(B, T, H, KVH, D, 7 * T + D, 2);
      const full = attentionCpu(q, k, v, { B, Tq: T, H, KVH, D });
      const [cache, release] = kvStore(gpu, { B, maxT, KVH, D }, layout);
      // Rows t0..t1 of a (B, T, heads, D) array.
      const rows = (x: Float32Array, heads: number, t0: number, t1: number) => {
        const out = new Float32Array(B * (t1 - t0) * heads * D);
        for (let b = 0; b < B; b++) {
          out.set(
            x.subarray((b * T + t0) * heads * D, (b * T + t1) * heads * D),
            b * (t1 - t0) * heads * D,
          );
        }
        return out;
      };
      // Fill the cache in two writes, as prefill then decode would.
      for (const [t0, t1] of [[0, lenPrev], [lenPrev, T]]) {
        if (t1 === t0) continue;
        const shape = [B, t1 - t0, KVH, D];
        kvWrite(
          gpu,
          cache,
          gpu.upload(rows(k, KVH, t0, t1), shape),
          gpu.upload(rows(v, KVH, t0, t1), shape),
          t0,
        );
      }
      const Q = gpu.upload(rows(q, H, lenPrev, T), [B, n, H, D]);
      const out = attentionDecode(gpu, Q, cache, lenPrev, { kernel });
      assertClose(
        await gpu.readF32(out),
        rows(full.out, H, lenPrev, T),
        { atol: 2e-6, rtol: 1e-4 },
        label,
      );
      release();
    });
  }

  await t.step("a cache too short is a RangeError", () => {
    let msg = "";
    const [cache, release] = kvStore(gpu, { B: 1, maxT: 8, KVH: 1, D: 4 });
    try {
      attentionDecode(gpu, gpu.zeros([1, 2, 1, 4]), cache, 7);
    } catch (e) {
      msg = e instanceof RangeError ? e.message : "";
    }
    release();
    if (!/2 new tokens after 7 do not fit a cache of 8 positions/.test(msg)) throw new Error(msg);
  });
});
