import { getGpu, type Gpu, makeTexture, type Tensor } from "@lvm/gpu";
import { assertClose, assertEquals, assertThrows, randu } from "@lvm/util/testing";
import {
  attentionCpu,
  type AttentionVariant,
  type KvBuffers,
  kvLayout,
  kvWrite,
} from "./attention.ts";
import {
  decodeAttention,
  decodeFfn,
  decodeFfnCpu,
  type DecodeFusedVariant,
  decodeLinearAdd,
  decodeLinearAddCpu,
  decodeNormLinear,
  decodeNormLinearCpu,
  decodeQkv,
  decodeQkvCpu,
  decodeTail,
  decodeTailCpu,
  decodeTailShape,
  qkvTuning,
} from "./decode_fused.ts";
import { type PackedWeight, packWeight } from "./matmul.ts";

const TOL = { atol: 2e-5, rtol: 2e-4 };

/** KV storage of a layout for batch 1, and its release. */
function kvStore(gpu: Gpu, maxT: number, KVH: number, D: number, layout: AttentionVariant) {
  const dims = { B: 1, maxT, KVH, D };
  let kv: KvBuffers;
  if (kvLayout(gpu, dims, layout) === "tex") {
    // makeKvTexture's layout, plus COPY_SRC so that the test can read the stored keys back.
    const usage = GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.TEXTURE_BINDING |
      GPUTextureUsage.COPY_SRC;
    const tex = (label: string) =>
      makeTexture(gpu, KVH * Math.ceil(D / 4), maxT, 1, label, { usage });
    kv = { ...dims, layout: "tex", k: tex("k"), v: tex("v") };
  } else {
    const [k, v] = [gpu.zeros([1, maxT, KVH, D]), gpu.zeros([1, maxT, KVH, D])];
    kv = { ...dims, layout: "buffer", k, v };
  }
  const release = () => {
    if (kv.layout === "tex") [kv.k, kv.v].forEach((t) => t.texture.destroy());
    else [kv.k, kv.v].forEach((t) => t.release());
  };
  return { kv, release };
}

/** The keys and values (KVH*D each) stored at position `pos`, read back from either layout. */
async function readKv(gpu: Gpu, kv: KvBuffers, pos: number): Promise<[Float32Array, Float32Array]> {
  const { KVH, D } = kv;
  if (kv.layout === "buffer") {
    const [k, v] = await Promise.all([gpu.readF32(kv.k), gpu.readF32(kv.v)]);
    const at = (a: Float32Array) => a.slice(pos * KVH * D, (pos + 1) * KVH * D);
    return [at(k), at(v)];
  }
  gpu.submit();
  const U = Math.ceil(D / 4), W = KVH * U, bytesPerRow = Math.ceil((W * 16) / 256) * 256;
  const out: Float32Array[] = [];
  for (const t of [kv.k, kv.v]) {
    const buf = gpu.device.createBuffer({
      size: bytesPerRow,
      usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ,
    });
    const enc = gpu.device.createCommandEncoder();
    enc.copyTextureToBuffer({ texture: t.texture, origin: [0, pos, 0] }, {
      buffer: buf,
      bytesPerRow,
    }, [
      W,
      1,
      1,
    ]);
    gpu.device.queue.submit([enc.finish()]);
    await buf.mapAsync(GPUMapMode.READ);
    const texels = new Float32Array(buf.getMappedRange().slice(0));
    buf.destroy();
    const row = new Float32Array(KVH * D);
    for (let g = 0; g < KVH; g++) {
      for (let d = 0; d < D; d++) row[g * D + d] = texels[(g * U) * 4 + d];
    }
    out.push(row);
  }
  return [out[0], out[1]];
}

/** A weight [N, K] of a dtype, its values as the GPU holds them, and a packed copy. */
async function weight(gpu: Gpu, N: number, K: number, dtype: "f32" | "f16", seed: number) {
  const t = gpu.upload(randu(N * K, seed, -0.5, 0.5), [N, K], dtype);
  const values = await gpu.readF32(t);
  return { t, values, packed: packWeight(gpu, t, { transB: true }) };
}

// [D, H, KVH, hd, pos, maxT, dtype]: odd hidden sizes, GQA (kvHeads < heads), positions > 0, x
// longer than one staged chunk (1030 > 1024), head dims 8/16 (the tex variant's groups of 4 pairs)
// and 6/10 (buffer variant only).
type QkvCase = [number, number, number, number, number, number, "f32" | "f16"];
const QKV: QkvCase[] = [
  [37, 3, 1, 8, 5, 7, "f32"],
  [45, 4, 2, 16, 0, 3, "f16"],
  [1030, 2, 1, 8, 3, 4, "f32"],
  [64, 2, 2, 32, 4100, 4101, "f16"],
  [29, 3, 3, 6, 2, 5, "f32"],
  [51, 4, 2, 10, 1, 2, "f16"],
];

Deno.test("decodeQkv()", async (t) => {
  const gpu = await getGpu();
  for (const [D, H, KVH, hd, pos, maxT, dtype] of QKV) {
    const x = randu(D, D + pos, -3, 3), norm = randu(D, 7, 0.5, 1.5);
    const [wq, wk, wv] = await Promise.all([
      weight(gpu, H * hd, D, dtype, 1),
      weight(gpu, KVH * hd, D, dtype, 2),
      weight(gpu, KVH * hd, D, dtype, 3),
    ]);
    const ref = decodeQkvCpu(x, norm, { q: wq.values, k: wk.values, v: wv.values }, {
      heads: H,
      kvHeads: KVH,
      headDim: hd,
      pos,
      theta: 500,
    });
    const xT = gpu.upload(x, [1, D]), nT = gpu.upload(norm, [D]);
    // The tex variant reads Wv as a storage texture where the device allows it, else sampled.
    // Its workgroups have 32 lanes, or 64 (qkvTuning.lanes): both on every case.
    type Run = [DecodeFusedVariant, AttentionVariant, boolean, boolean | null, (32 | 64)?];
    const runs: Run[] = [
      ["buffer", "buffer", false, null],
      ["buffer", "tex", true, null],
    ];
    if (wq.packed.texture && hd % 8 === 0) {
      runs.push(["tex", "tex", true, false]);
      if (gpu.limits.maxStorageTexturesPerShaderStage >= 5) runs.push(["tex", "tex", true, true]);
      runs.push(["tex", "tex", true, null, 64]);
    }
    for (const [variant, layout, packed, vStorage, lanes] of runs) {
      const vs = (vStorage === null ? "" : vStorage ? " Wv storage" : " Wv sampled") +
        (lanes ? ` lanes ${lanes}` : "");
      await t.step(
        `D=${D} H=${H} KVH=${KVH} hd=${hd} pos=${pos} ${dtype} ${variant}/${layout}${vs}`,
        async () => {
          qkvTuning.vStorage = vStorage;
          qkvTuning.lanes = lanes ?? null;
          const { kv, release } = kvStore(gpu, maxT, KVH, hd, layout);
          const pick = (w: { t: Tensor; packed: PackedWeight }) => packed ? w.packed : w.t;
          const w = { q: pick(wq), k: pick(wk), v: pick(wv) };
          const q = decodeQkv(gpu, xT, nT, w, kv, pos, { heads: H, theta: 500, variant });
          assertEquals(q.shape, [1, 1, H, hd]);
          assertClose(await gpu.readF32(q), ref.q, TOL, "q");
          const [k, v] = await readKv(gpu, kv, pos);
          assertClose(k, ref.k, TOL, "k");
          assertClose(v, ref.v, TOL, "v");
          q.release();
          release();
          qkvTuning.vStorage = null;
          qkvTuning.lanes = null;
        },
      );
    }
    for (const w of [wq, wk, wv]) {
      w.packed.release();
      w.t.release();
    }
    xT.release();
    nT.release();
  }
});

// [D, F, dtype]: F not a multiple of 4, x longer than one staged chunk, the tiny preset's sizes.
const FFN: [number, number, "f32" | "f16"][] = [
  [37, 90, "f32"],
  [45, 13, "f16"],
  [1030, 21, "f32"],
  [128, 344, "f16"],
];

Deno.test("decodeFfn()", async (t) => {
  const gpu = await getGpu();
  for (const [D, F, dtype] of FFN) {
    const x = randu(D, D, -3, 3), norm = randu(D, 5, 0.5, 1.5);
    const [wg, wu] = await Promise.all([weight(gpu, F, D, dtype, 4), weight(gpu, F, D, dtype, 5)]);
    const ref = decodeFfnCpu(x, norm, { gate: wg.values, up: wu.values }, F);
    const xT = gpu.upload(x, [1, D]), nT = gpu.upload(norm, [D]);
    const runs: [DecodeFusedVariant, boolean][] = [["buffer", false], ["buffer", true]];
    if (wg.packed.texture) runs.push(["tex", true]);
    for (const [variant, packed] of runs) {
      await t.step(`D=${D} F=${F} ${dtype} ${variant}${packed ? " packed" : ""}`, async () => {
        const w = packed ? { gate: wg.packed, up: wu.packed } : { gate: wg.t, up: wu.t };
        const act = decodeFfn(gpu, xT, nT, w, { variant });
        assertEquals(act.shape, [1, F]);
        assertClose(await gpu.readF32(act), ref, TOL, "act");
        act.release();
      });
    }
    for (const w of [wg, wu]) {
      w.packed.release();
      w.t.release();
    }
    xT.release();
    nT.release();
  }
});

// [K, N, dtype]: N not a multiple of 4 or of a workgroup's 32 columns, K past one staged chunk and
// not a multiple of 4 (its rows split over the lanes unevenly), the 100m preset's o projection.
const LIN: [number, number, "f32" | "f16"][] = [
  [37, 90, "f32"],
  [45, 13, "f16"],
  [1030, 21, "f32"],
  [3, 5, "f32"],
  [640, 640, "f16"],
];

Deno.test("decodeLinearAdd()", async (t) => {
  const gpu = await getGpu();
  for (const [K, N, dtype] of LIN) {
    const a = randu(K, K, -3, 3), x = randu(N, N + 1, -2, 2);
    const w = await weight(gpu, N, K, dtype, 6);
    const ref = decodeLinearAddCpu(x, w.values, a);
    const aT = gpu.upload(a, [1, K]);
    const runs: [DecodeFusedVariant, boolean][] = [["buffer", false], ["buffer", true]];
    if (w.packed.texture) runs.push(["tex", true]);
    for (const [variant, packed] of runs) {
      await t.step(`K=${K} N=${N} ${dtype} ${variant}${packed ? " packed" : ""}`, async () => {
        const out = gpu.upload(x, [1, N]);
        assertEquals(decodeLinearAdd(gpu, aT, packed ? w.packed : w.t, out, { variant }), out);
        assertClose(await gpu.readF32(out), ref, TOL, "out");
        out.release();
      });
    }
    w.packed.release();
    w.t.release();
    aT.release();
  }
});

// [H, KVH, hd, pos, maxT]: GQA, a head dim that is not a multiple of 4 (6), positions 0 and
// past a lane's share (keys > 32 lanes), the widest head (128: 16 lanes).
const ATT: [number, number, number, number, number][] = [
  [3, 1, 8, 5, 7],
  [4, 2, 6, 0, 3],
  [2, 2, 64, 70, 80],
  [4, 1, 128, 40, 41],
];

Deno.test("decodeAttention()", async (t) => {
  const gpu = await getGpu();
  for (const [H, KVH, hd, pos, maxT] of ATT) {
    const q = randu(H * hd, 1, -2, 2);
    const k = randu((pos + 1) * KVH * hd, 2, -2, 2), v = randu((pos + 1) * KVH * hd, 3);
    const ref = attentionCpu(q, k, v, { B: 1, Tq: 1, H, KVH, D: hd, Tk: pos + 1, qStart: pos });
    // The widest head only in the tex layout: llvmpipe compiles its buffer variant for seconds.
    for (const layout of hd > 64 ? ["tex"] as const : ["tex", "buffer"] as const) {
      await t.step(`H=${H} KVH=${KVH} hd=${hd} pos=${pos} ${layout}`, async () => {
        const { kv, release } = kvStore(gpu, maxT, KVH, hd, layout);
        const kT = gpu.upload(k, [1, pos + 1, KVH, hd]), vT = gpu.upload(v, [1, pos + 1, KVH, hd]);
        kvWrite(gpu, kv, kT, vT, 0);
        const qT = gpu.upload(q, [1, 1, H, hd]);
        const out = decodeAttention(gpu, qT, kv, pos);
        assertEquals(out.shape, [1, 1, H, hd]);
        assertClose(await gpu.readF32(out), ref.out, TOL, "out");
        for (const x of [kT, vT, qT, out]) x.release();
        release();
      });
    }
  }
});

Deno.test("decodeNormLinear()", async (t) => {
  const gpu = await getGpu();
  // [D, N, dtype]: N not a multiple of 4, x past one staged chunk, a head-sized output.
  for (
    const [D, N, dtype] of [[37, 90, "f32"], [45, 13, "f16"], [1030, 5, "f32"], [
      24,
      2061,
      "f32",
    ]] as const
  ) {
    const x = randu(D, D, -3, 3), norm = randu(D, 5, 0.5, 1.5);
    const w = await weight(gpu, N, D, dtype, 8);
    const ref = decodeNormLinearCpu(x, norm, w.values, N);
    const xT = gpu.upload(x, [1, D]), nT = gpu.upload(norm, [D]);
    const runs: [DecodeFusedVariant, boolean][] = [["buffer", false]];
    if (w.packed.texture) runs.push(["tex", true]);
    for (const [variant, packed] of runs) {
      await t.step(`D=${D} N=${N} ${dtype} ${variant}`, async () => {
        const y = decodeNormLinear(gpu, xT, nT, packed ? w.packed : w.t, { variant });
        assertEquals(y.shape, [1, N]);
        assertClose(await gpu.readF32(y), ref, TOL, "y");
        y.release();
      });
    }
    w.packed.release();
    w.t.release();
    xT.release();
    nT.release();
  }
});

// [D, F, H, KVH, hd, pos, maxT, dtype]: the tiny preset's layer, GQA with 3 heads (48 lanes), one
// head (64 lanes on it), positions below and above the lanes per head.
const TAIL: [number, number, number, number, number, number, number, "f32" | "f16"][] = [
  [128, 344, 4, 4, 32, 40, 48, "f32"],
  [48, 40, 3, 1, 16, 0, 5, "f16"],
  [64, 96, 2, 2, 8, 70, 80, "f32"],
  [32, 64, 1, 1, 32, 9, 12, "f16"],
];

Deno.test("decodeTail()", async (t) => {
  const gpu = await getGpu();
  for (const [D, F, H, KVH, hd, pos, maxT, dtype] of TAIL) {
    await t.step(`D=${D} F=${F} H=${H} KVH=${KVH} hd=${hd} pos=${pos} ${dtype}`, async () => {
      const x = randu(D, D + pos, -2, 2), norm = randu(D, 5, 0.5, 1.5);
      const q = randu(H * hd, 6, -2, 2);
      const k = randu((pos + 1) * KVH * hd, 7, -2, 2), v = randu((pos + 1) * KVH * hd, 8);
      const [wo, wg, wu, wd] = await Promise.all([
        weight(gpu, D, H * hd, dtype, 11),
        weight(gpu, F, D, dtype, 12),
        weight(gpu, F, D, dtype, 13),
        weight(gpu, D, F, dtype, 14),
      ]);
      const ref = decodeTailCpu(x, q, { k, v, KVH, hd, pos }, norm, {
        o: wo.values,
        gate: wg.values,
        up: wu.values,
        down: wd.values,
      }, F);
      const { kv, release } = kvStore(gpu, maxT, KVH, hd, "tex");
      const kT = gpu.upload(k, [1, pos + 1, KVH, hd]), vT = gpu.upload(v, [1, pos + 1, KVH, hd]);
      kvWrite(gpu, kv, kT, vT, 0);
      const xT = gpu.upload(x, [1, D]), nT = gpu.upload(norm, [D]);
      const qT = gpu.upload(q, [1, 1, H, hd]);
      const w = { o: wo.packed, gate: wg.packed, up: wu.packed, down: wd.packed };
      const shape = decodeTailShape(gpu, qT, kv, xT, w);
      // It applies where the weights have packed textures (the cpu kind) and six storage
      // textures may be bound (lavapipe: 36; a browser's adapter may give WebGPU's 4).
      const applies = [wo, wg, wu, wd].every((z) => z.packed.texture !== null) &&
        kv.layout === "tex" && gpu.limits.maxStorageTexturesPerShaderStage >= 6;
      if (applies) {
        const S = 2 ** Math.floor(Math.log2(64 / H)); // lanes per head: a power of two, <= 64
        assertEquals([shape?.S, shape?.WG], [S, H * S]);
        decodeTail(gpu, qT, kv, pos, xT, nT, w);
        assertClose(await gpu.readF32(xT), ref, TOL, "x");
      } else {
        assertEquals(shape, null);
        assertThrows(() => decodeTail(gpu, qT, kv, pos, xT, nT, w), RangeError, "packed weights");
      }
      // Unpacked weights never apply, and the error says what it needs.
      const plain = { o: wo.t, gate: wg.t, up: wu.t, down: wd.t };
      assertEquals(decodeTailShape(gpu, qT, kv, xT, plain), null);
      assertThrows(() => decodeTail(gpu, qT, kv, pos, xT, nT, plain), RangeError, "packed weights");
      for (const z of [kT, vT, xT, nT, qT]) z.release();
      for (const z of [wo, wg, wu, wd]) {
        z.packed.release();
        z.t.release();
      }
      release();
    });
  }
});
