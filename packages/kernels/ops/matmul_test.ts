import { getGpu, type Gpu } from "@lvm/gpu";
import { assert, assertClose, assertEquals, fewCases, finiteDiff, randu } from "@lvm/util/testing";
import { roundF16 } from "@lvm/util";
import {
  colSum,
  linear,
  linearBackward,
  matmul,
  matmulCpu,
  matmulTuning,
  type MatmulVariant,
  packWeight,
  type TileConfig,
  TILED_CONFIGS,
  tiledConfig,
  tiledSplit,
} from "./matmul.ts";

const VARIANTS: MatmulVariant[] = ["naive", "blocked", "tiled", "tex", "gemv"];

/** One matmul problem: batch sizes of a and b (0 = 2-D operand), flags and epilogue. */
interface Case {
  M: number;
  K: number;
  N: number;
  aB?: number;
  bB?: number;
  transA?: boolean;
  transB?: boolean;
  f16?: boolean;
  bias?: boolean;
  acc?: boolean;
  alpha?: number;
  lo?: number;
  hi?: number;
}

/** f32 accumulation over K terms of size ~|a||b|: the error grows with K. */
function tol(K: number, scale = 1) {
  return { atol: (1e-5 + 3e-7 * K) * scale, rtol: 1e-4 };
}

/** Runs one case on the GPU with `variant` and compares with the CPU reference. */
async function check(
  gpu: Gpu,
  c: Case,
  variant?: MatmulVariant,
  seed = 1,
  tile?: TileConfig,
  splitK?: number,
): Promise<void> {
  const { M, K, N, aB = 0, bB = 0, lo = -1, hi = 1 } = c;
  const batch = Math.max(aB, bB, 1);
  const a = randu(Math.max(aB, 1) * M * K, seed, lo, hi);
  let b = randu(Math.max(bB, 1) * K * N, seed + 1, lo, hi);
  const aShape = c.transA ? [K, M] : [M, K], bShape = c.transB ? [N, K] : [K, N];
  const A = gpu.upload(a, aB ? [aB, ...aShape] : aShape);
  const B = gpu.upload(b, bB ? [bB, ...bShape] : bShape, c.f16 ? "f16" : "f32");
  if (c.f16) b = roundF16(b);
  // Reference per batch (a or b may be shared).
  const ref = new Float32Array(batch * M * N);
  for (let bi = 0; bi < batch; bi++) {
    const as = aB ? a.subarray(bi * M * K, (bi + 1) * M * K) : a;
    const bs = bB ? b.subarray(bi * K * N, (bi + 1) * K * N) : b;
    ref.set(matmulCpu(as, bs, 1, M, K, N, !!c.transA, !!c.transB), bi * M * N);
  }
  const alpha = c.alpha ?? 1;
  const bias = c.bias ? randu(N, seed + 2, -2, 2) : null;
  const prev = c.acc ? randu(batch * M * N, seed + 3) : null;
  for (let i = 0; i < ref.length; i++) {
    ref[i] = alpha * ref[i] + (bias ? bias[i % N] : 0) + (prev ? prev[i] : 0);
  }
  const outShape = aB || bB ? [batch, M, N] : [M, N];
  const out = prev ? gpu.upload(prev, outShape) : undefined;
  const Bias = bias ? gpu.upload(bias, [N]) : undefined;
  const y = matmul(gpu, A, B, {
    transA: c.transA,
    transB: c.transB,
    out,
    accumulate: c.acc,
    alpha: c.alpha,
    bias: Bias,
    variant,
    tile,
    splitK,
  });
  if (y.shape.join() !== outShape.join()) {
    throw new Error(`shape [${y.shape}] != [${outShape}]`);
  }
  const scale = Math.max(Math.abs(lo), Math.abs(hi)) ** 2;
  const label = `${variant ?? "auto"} ${JSON.stringify(c)}${
    tile ? ` tile ${JSON.stringify(tile)}` : ""
  }${splitK ? ` splitK ${splitK}` : ""}`;
  assertClose(await gpu.readF32(y), ref, tol(K, scale * Math.abs(alpha)), label);
  for (const t of [A, B, y, Bias]) t?.release();
}

const SHAPES: [number, number, number][] = [
  [1, 1, 1],
  [7, 7, 7],
  [45, 65, 33],
  [3, 1, 9],
  [33, 17, 1],
  [2, 64, 130],
  [70, 36, 129],
];

Deno.test("matmul() matches matmulCpu on odd shapes, every variant and transpose", async (t) => {
  const gpu = await getGpu();
  for (const variant of VARIANTS) {
    await t.step(variant, async () => {
      for (const [M, K, N] of SHAPES) {
        if (variant === "gemv" && M > 4) continue;
        for (const transA of [false, true]) {
          for (const transB of [false, true]) {
            await check(gpu, { M, K, N, transA, transB }, variant);
          }
        }
      }
    });
  }
});

Deno.test("matmul() tiled: every tile shape across tile edges, transposes, batches, f16", async (t) => {
  const gpu = await getGpu();
  // LVM_TEST_CASES=few (the browser run): the shipped tiles and the smallest odd one.
  const tiles: TileConfig[] = fewCases()
    ? [...TILED_CONFIGS, { BM: 16, BN: 16, BK: 8, TM: 1, TN: 2 }]
    : [
      ...TILED_CONFIGS,
      { BM: 64, BN: 64, BK: 16, TM: 4, TN: 4 },
      { BM: 128, BN: 128, BK: 8, TM: 8, TN: 8 },
      { BM: 128, BN: 64, BK: 16, TM: 8, TN: 4 },
      { BM: 32, BN: 64, BK: 8, TM: 2, TN: 4 },
      { BM: 16, BN: 16, BK: 8, TM: 1, TN: 2 },
    ];
  const cases: Case[] = [
    { M: 130, K: 37, N: 133 },
    { M: 130, K: 37, N: 133, transA: true, transB: true },
    { M: 65, K: 129, N: 31, transB: true, f16: true, bias: true },
    { M: 31, K: 17, N: 70, aB: 2, transA: true, acc: true, alpha: -0.5 },
    { M: 9, K: 8, N: 140, aB: 3, bB: 3, transB: true },
  ];
  for (const tile of tiles) {
    await t.step(`${tile.BM}x${tile.BN}x${tile.BK} / ${tile.TM}x${tile.TN}`, async () => {
      for (const c of cases) await check(gpu, c, "tiled", 11, tile);
    });
  }
  const A = gpu.upload(randu(4, 1), [2, 2]);
  for (
    const [tile, why] of [
      [{ BM: 64, BN: 64, BK: 16, TM: 3, TN: 4 }, /BM % TM/],
      [{ BM: 256, BN: 128, BK: 8, TM: 4, TN: 4 }, /2048 invocations/],
      [{ BM: 128, BN: 128, BK: 4096, TM: 8, TN: 8 }, /workgroup memory/],
      [{ BM: 64, BN: 64, BK: 0, TM: 4, TN: 4 }, /BK must be a positive integer/],
    ] as [TileConfig, RegExp][]
  ) {
    let msg = "";
    try {
      matmul(gpu, A, A, { variant: "tiled", tile });
    } catch (e) {
      msg = (e as Error).message;
    }
    assert(
      why.test(msg) && msg.startsWith("matmul: tile"),
      `tile ${JSON.stringify(tile)}: "${msg}"`,
    );
  }
  let splitMsg = "";
  try {
    matmul(gpu, A, A, { variant: "tiled", splitK: 0 });
  } catch (e) {
    splitMsg = (e as Error).message;
  }
  assert(/splitK must be a positive integer, got 0/.test(splitMsg), splitMsg);
  A.release();
  // Split-K: slices of K summed by a second pass, with every epilogue; uneven and 1-element slices.
  await t.step("split-K", async () => {
    const small: TileConfig = { BM: 32, BN: 32, BK: 16, TM: 4, TN: 4 };
    for (const splitK of [2, 3, 7]) {
      for (const c of cases) await check(gpu, { ...c, K: c.K + 300 }, "tiled", 13, small, splitK);
    }
    await check(gpu, { M: 5, K: 40, N: 6, bias: true, acc: true, alpha: 3 }, "tiled", 3, small, 40);
  });
  assertEquals(tiledSplit(200, 4096), 1);
  assertEquals(tiledSplit(40, 1664), 6);
  assertEquals(tiledSplit(4, 256), 1);
  assertEquals(tiledSplit(1, 100000), 256);
  // The default: 64x128 tiles from 512 of them, else 64x64.
  assertEquals(tiledConfig(gpu, 2048, 2048), TILED_CONFIGS[0]);
  assertEquals(tiledConfig(gpu, 64, 128, 512), TILED_CONFIGS[0]);
  assertEquals(tiledConfig(gpu, 1024, 1024), TILED_CONFIGS[1]);
  assertEquals(tiledConfig(gpu, 7, 9), TILED_CONFIGS[1]);
});

Deno.test("matmul() batches, broadcasts, f16 weights, bias, alpha, accumulate", async (t) => {
  const gpu = await getGpu();
  const combos: Case[] = [
    { M: 5, K: 9, N: 6, aB: 3, bB: 3 },
    { M: 5, K: 9, N: 6, aB: 3, bB: 3, transA: true, transB: true },
    { M: 6, K: 11, N: 7, aB: 4 }, // shared B, folded into one (24, 11) product
    { M: 6, K: 11, N: 7, aB: 4, transA: true }, // shared B, not foldable
    { M: 3, K: 8, N: 5, aB: 2, transB: true }, // gemv on a batch
    { M: 4, K: 10, N: 3, bB: 3 }, // shared A
    { M: 9, K: 13, N: 10, f16: true },
    { M: 9, K: 16, N: 10, f16: true, transB: true },
    { M: 1, K: 16, N: 10, f16: true, transB: true }, // gemv vec2<u32> path
    { M: 2, K: 15, N: 10, f16: true, transB: true }, // gemv scalar path
    { M: 3, K: 12, N: 7, f16: true, aB: 2, bB: 2, transB: true },
    { M: 8, K: 12, N: 9, bias: true },
    { M: 8, K: 12, N: 9, acc: true, alpha: -0.5 },
    { M: 2, K: 12, N: 9, bias: true, acc: true, alpha: 2, transB: true, f16: true },
    { M: 17, K: 33, N: 21, aB: 2, bias: true, acc: true, alpha: 0.25, transA: true },
    { M: 1, K: 128, N: 33, transB: true, bias: true }, // gemv from a copied W texture
    { M: 3, K: 256, N: 17, transB: true, f16: true, acc: true, alpha: 0.5 },
    { M: 4, K: 4224, N: 5, transB: true }, // ... A over the uniform buffer: K chunks
    { M: 7, K: 5, N: 7, lo: -300, hi: 300 },
    { M: 3, K: 8, N: 5, lo: -300, hi: 300, transB: true },
  ];
  for (const variant of VARIANTS) {
    await t.step(variant, async () => {
      for (const c of combos) {
        if (variant === "gemv" && c.M > 4) continue;
        await check(gpu, c, variant, 7);
      }
    });
  }
  await t.step("automatic choice", async () => {
    for (const c of combos) await check(gpu, c, undefined, 9);
  });
});

Deno.test("matmul() tex path: K split into chunks, rows split over layers, batch rounds", async () => {
  const gpu = await getGpu();
  const max = gpu.limits.maxTextureDimension2D;
  // K larger than a texture is tall: accumulated over K chunks (bias added once).
  await check(gpu, { M: 5, K: max + 9, N: 3, bias: true }, "tex");
  await check(gpu, { M: 5, K: max + 9, N: 3, transA: true, transB: true, alpha: 0.5 }, "tex");
  // More rows than a texture layer holds: rows continue on the next layer (packed by the kernel,
  // then by plain copies: rows of 64 floats are 256 bytes).
  await check(gpu, { M: max + 21, K: 3, N: 2 }, "tex");
  await check(gpu, { M: max + 21, K: 64, N: 64 }, "tex");
  // A weight taller than a texture layer read by the decode kernel from a copied texture.
  await check(gpu, { M: 1, K: 64, N: max + 3, transB: true }, "gemv");
  await check(gpu, { M: 2, K: 128, N: max + 3, transB: true, f16: true }, "gemv");
  // Batched operands packed by copies, and the copy path next to a transposed operand.
  await check(gpu, { M: 33, K: 64, N: 128, aB: 3, bB: 3, bias: true }, "tex");
  await check(gpu, { M: 33, K: 128, N: 64, aB: 2, bB: 2, transB: true }, "tex");
  // More batches than texture layers: several pack+dispatch rounds.
  await check(gpu, {
    M: 2,
    K: 3,
    N: 2,
    aB: gpu.limits.maxTextureArrayLayers + 5,
    bB: 0,
    transA: true,
  }, "tex");
  await check(gpu, {
    M: 2,
    K: 3,
    N: 2,
    aB: gpu.limits.maxTextureArrayLayers + 5,
    bB: gpu.limits.maxTextureArrayLayers + 5,
  }, "tex");
});

Deno.test("matmul() tex: every tile and operand layout, bias and accumulate", async (t) => {
  const gpu = await getGpu();
  const [M, K, N] = [67, 37, 70];
  const x = randu(M * K, 31), w = randu(N * K, 32), bias = randu(N, 33), prev = randu(M * N, 34);
  const xT = new Float32Array(M * K); // x stored (K, M)
  for (let m = 0; m < M; m++) for (let k = 0; k < K; k++) xT[k * M + m] = x[m * K + k];
  const Bias = gpu.upload(bias, [N]);
  // [name, A stored transposed, B layout]: raw W [N,K] (the B^T texture), W^T [K,N], packed W.
  type Layout = [string, boolean, "raw" | "rawT" | "packed", "f32" | "f16"];
  const all: Layout[] = [
    ["x W^T", false, "raw", "f32"],
    ["x W^T f16", false, "raw", "f16"],
    ["x packed", false, "packed", "f32"],
    ["x packed f16", false, "packed", "f16"],
    ["x^T W^T^T", true, "rawT", "f32"],
  ];
  for (const tile of [[16, 2], [8, 2], [4, 1]] as [number, number][]) {
    await t.step(`${tile}`, async () => {
      matmulTuning.texTile = tile;
      try {
        // The production tile in every layout; the small ones in the common two.
        for (const [name, aT, kind, dtype] of tile[0] === 16 ? all : [all[0], all[3]]) {
          const wT = new Float32Array(K * N); // W^T stored (K, N)
          for (let n = 0; n < N; n++) for (let k = 0; k < K; k++) wT[k * N + n] = w[n * K + k];
          const W = kind === "rawT" ? gpu.upload(wT, [K, N], dtype) : gpu.upload(w, [N, K], dtype);
          const Wp = kind === "packed" ? packWeight(gpu, W, { transB: true }) : W;
          const X = aT ? gpu.upload(xT, [K, M]) : gpu.upload(x, [M, K]);
          const out = gpu.upload(prev, [M, N]);
          matmul(gpu, X, Wp, {
            transA: aT,
            transB: kind !== "rawT",
            out,
            bias: Bias,
            accumulate: true,
            alpha: 1.5,
            variant: "tex",
          });
          const ref = matmulCpu(x, dtype === "f16" ? roundF16(w) : w, 1, M, K, N, false, true)
            .map((v, i) => 1.5 * v + bias[i % N] + prev[i]);
          assertClose(await gpu.readF32(out), ref, tol(K, 1.5), `tile ${tile} ${name}`);
          if (Wp !== W) Wp.release();
          for (const u of [W, X, out]) u.release();
        }
      } finally {
        matmulTuning.texTile = null;
      }
    });
  }
});

Deno.test("matmul() tex: skinny products take the 16x2 tile in workgroups of 8-64 lanes", async (t) => {
  const gpu = await getGpu();
  // [M, K, N, lanes]: 16x2 invocations = ceil(M/16) * ceil(N/8); lanes: the most with >= 8 groups.
  const cases: [number, number, number, number][] = [
    [16, 37, 520, 8], // 65 invocations
    [5, 19, 1030, 16], // 129
    [33, 23, 700, 32], // 3 x 88 = 264
    [64, 9, 1030, 64], // 4 x 129 = 516
  ];
  for (const [M, K, N, lanes] of cases) {
    await t.step(`${M}x${K}x${N}: ${lanes} lanes`, async () => {
      const labels: string[] = [];
      const dispatch = gpu.dispatch;
      gpu.dispatch = (p, ...rest) => (labels.push(p.label), dispatch.call(gpu, p, ...rest));
      try {
        await check(gpu, { M, K, N, bias: true, acc: true, alpha: 0.5 }, "tex", M + N);
      } finally {
        gpu.dispatch = dispatch;
      }
      const tex = labels.filter((l) => l.startsWith("matmul/tex/"));
      assertEquals(tex.length, 1, labels.join());
      assert(tex[0].startsWith("matmul/tex/16x2/") && tex[0].endsWith(`/${lanes}`), tex[0]);
    });
  }
});

Deno.test("matmul() tex: rows a multiple of 4 KiB, in textures with and without the padded pitch", async (t) => {
  const gpu = await getGpu();
  // 1024 floats per row: the plain-copy pack into a texture wider than the copy (padded pitch), and
  // into one exactly as wide (padPitch off); both layouts of each operand and a packed weight.
  const cases: Case[] = [
    { M: 19, K: 1024, N: 1024, bias: true, acc: true, alpha: 0.5 },
    { M: 19, K: 1024, N: 1024, transA: true, transB: true },
    { M: 21, K: 64, N: 1024, aB: 2, bB: 2, acc: true },
  ];
  for (const pad of [true, false]) {
    await t.step(`padPitch ${pad}`, async () => {
      matmulTuning.padPitch = pad;
      try {
        for (const c of cases) await check(gpu, c, "tex", 41);
        const [M, K, N] = [19, 1024, 1024];
        const x = randu(M * K, 42), w = randu(N * K, 43);
        const W = gpu.upload(w, [N, K]);
        const Wp = packWeight(gpu, W, { transB: true });
        const X = gpu.upload(x, [M, K]);
        const ref = matmulCpu(x, w, 1, M, K, N, false, true);
        assertClose(await gpu.readF32(linear(gpu, X, Wp)), ref, tol(K), `packed, pad ${pad}`);
        Wp.release();
        for (const u of [W, X]) u.release();
      } finally {
        matmulTuning.padPitch = true;
      }
    });
  }
});

Deno.test("packWeight(): packed weights match, refresh() picks up new values", async () => {
  const gpu = await getGpu();
  const [M, K, N] = [37, 20, 23];
  const x = randu(M * K, 3), w1 = randu(N * K, 4), w2 = randu(N * K, 5);
  const X = gpu.upload(x, [M, K]);
  for (const dtype of ["f32", "f16"] as const) {
    const W = gpu.upload(w1, [N, K], dtype);
    const Wp = packWeight(gpu, W, { transB: true });
    const r = (w: Float32Array) =>
      matmulCpu(x, dtype === "f16" ? roundF16(w) : w, 1, M, K, N, false, true);
    assertClose(await gpu.readF32(linear(gpu, X, Wp)), r(w1), tol(K), `packed ${dtype}`);
    gpu.write(W, w2);
    Wp.refresh();
    assertClose(
      await gpu.readF32(matmul(gpu, X, Wp, { variant: "tex" })),
      r(w2),
      tol(K),
      `refreshed ${dtype}`,
    );
    assertClose(await gpu.readF32(linear(gpu, X.view([M, K]), Wp)), r(w2), tol(K), `auto ${dtype}`);
    const x1 = gpu.upload(x.subarray(0, K), [1, K]);
    assertClose(
      await gpu.readF32(linear(gpu, x1, Wp)),
      r(w2).subarray(0, N),
      tol(K),
      `gemv ${dtype}`,
    );
    Wp.release();
  }
  // Decode through a packed weight: odd K (scalar tail), K over the uniform buffer (chunks),
  // bias + alpha + accumulate, f32 and f16 textures; and the tex kernel on the u16 layout.
  for (const dtype of ["f32", "f16"] as const) {
    for (
      const [m, k, n, variant] of [[1, 7, 5, "gemv"], [3, 4103, 19, "gemv"], [4, 9, 33, "gemv"], [
        9,
        13,
        41,
        "tex",
      ]] as const
    ) {
      const xv = randu(m * k, 6), wv = randu(n * k, 7), bv = randu(n, 8), prev = randu(m * n, 9);
      const Wt = gpu.upload(wv, [n, k], dtype);
      const Wp = packWeight(gpu, Wt, { transB: true });
      const out = gpu.upload(prev, [m, n]);
      matmul(gpu, gpu.upload(xv, [m, k]), Wp, {
        bias: gpu.upload(bv, [n]),
        out,
        accumulate: true,
        alpha: 0.5,
        variant,
      });
      const wr = dtype === "f16" ? roundF16(wv) : wv;
      const ref = matmulCpu(xv, wr, 1, m, k, n, false, true).map((v, i) =>
        0.5 * v + bv[i % n] + prev[i]
      );
      assertClose(await gpu.readF32(out), ref, tol(k), `packed ${variant} ${dtype} ${m}x${k}x${n}`);
      Wp.release();
    }
  }
  const Wn = gpu.upload(w1, [K, N]);
  const Wnp = packWeight(gpu, Wn);
  assertClose(
    await gpu.readF32(matmul(gpu, X, Wnp, { variant: "tex" })),
    matmulCpu(x, w1, 1, M, K, N, false, false),
    tol(K),
    "packed (K,N)",
  );
  Wnp.release();
});

Deno.test("matmul() reports bad inputs", () => {
  const gpu = getGpu();
  return gpu.then((gpu) => {
    const a = gpu.upload(randu(6), [2, 3]), b = gpu.upload(randu(8), [4, 2]);
    const expect = (fn: () => unknown, re: RegExp) => {
      try {
        fn();
      } catch (e) {
        if (re.test(String(e))) return;
        throw new Error(`wrong error: ${e}`);
      }
      throw new Error(`no error, expected ${re}`);
    };
    expect(() => matmul(gpu, a, b), /inner sizes differ.*K=3.*K=4/);
    expect(
      () => matmul(gpu, a, gpu.upload(randu(6), [3, 2]), { out: a }),
      /out must be f32 with 4/,
    );
    const sq = gpu.upload(randu(9), [3, 3]);
    expect(() => matmul(gpu, sq, sq.view([3, 3]), { out: sq }), /aliases a/);
    expect(() => matmul(gpu, gpu.upload(randu(6), [2, 3], "f16"), sq), /a must be f32/);
    expect(() => matmul(gpu, sq, sq, { accumulate: true }), /accumulate needs an out/);
    expect(() => matmul(gpu, sq, sq, { bias: a }), /bias must be f32 with N=3/);
    expect(() => linear(gpu, a, b), /W must be \[out, 3\]/);
  });
});

Deno.test("linearBackward() matches finite differences; accumulates", async (t) => {
  const gpu = await getGpu();
  // x (2,3,5) -> y (2,3,4); loss = sum(y * g)
  const [B, T, I, O] = [2, 3, 5, 4];
  const x = randu(B * T * I, 11),
    w = randu(O * I, 12),
    bias = randu(O, 13),
    g = randu(B * T * O, 14);
  const X = gpu.upload(x, [B, T, I]), W = gpu.upload(w, [O, I]), Bias = gpu.upload(bias, [O]);
  const G = gpu.upload(g, [B, T, O]);
  const loss = (xv: ArrayLike<number>, wv: ArrayLike<number>, bv: ArrayLike<number>) => {
    let s = 0;
    for (let r = 0; r < B * T; r++) {
      for (let o = 0; o < O; o++) {
        let y = bv[o];
        for (let i = 0; i < I; i++) y += xv[r * I + i] * wv[o * I + i];
        s += y * g[r * O + o];
      }
    }
    return s;
  };
  await t.step("forward", async () => {
    const y = linear(gpu, X, W, Bias);
    if (y.shape.join() !== [B, T, O].join()) throw new Error(`shape [${y.shape}]`);
    const ref = matmulCpu(x, w, 1, B * T, I, O, false, true).map((v, i) => v + bias[i % O]);
    assertClose(await gpu.readF32(y), ref, tol(I), "linear forward");
  });
  await t.step("gradients", async () => {
    const { dx, dW, dbias } = linearBackward(gpu, X, W, G, { bias: true });
    if (dx!.shape.join() !== [B, T, I].join()) throw new Error(`dx shape [${dx!.shape}]`);
    const [gx, gw, gb] = await gpu.readMany([dx!, dW, dbias!]);
    const fx = finiteDiff((v) => loss(v, w, bias), x);
    const fw = finiteDiff((v) => loss(x, v, bias), w);
    const fb = finiteDiff((v) => loss(x, w, v), bias);
    assertClose(gx, fx, { atol: 1e-4, rtol: 1e-3 }, "dx");
    assertClose(gw, fw, { atol: 1e-4, rtol: 1e-3 }, "dW");
    assertClose(gb, fb, { atol: 1e-4, rtol: 1e-3 }, "dbias");
  });
  await t.step("accumulate, no dx, f16 W", async () => {
    const dW = gpu.upload(new Float32Array(O * I).fill(1), [O, I]);
    const dbias = gpu.upload(new Float32Array(O).fill(-1), [O]);
    const Wh = gpu.upload(w, [O, I], "f16");
    for (let k = 0; k < 2; k++) {
      const r = linearBackward(gpu, X, Wh, G, { dW, dbias, accumulate: true, needDx: false });
      if (r.dx) throw new Error("dx computed although needDx is false");
    }
    const fw = finiteDiff((v) => loss(x, v, bias), w).map((v) => 1 + 2 * v);
    const fb = finiteDiff((v) => loss(x, w, v), bias).map((v) => -1 + 2 * v);
    assertClose(await gpu.readF32(dW), fw, { atol: 2e-4, rtol: 1e-3 }, "dW accumulated");
    assertClose(await gpu.readF32(dbias), fb, { atol: 2e-4, rtol: 1e-3 }, "dbias accumulated");
    const { dx } = linearBackward(gpu, X, Wh, G);
    const ref = matmulCpu(g, roundF16(w), 1, B * T, O, I, false, false);
    assertClose(await gpu.readF32(dx!), ref, tol(O), "dx with f16 W");
  });
  await t.step("colSum on a larger odd matrix", async () => {
    const [M, N] = [131, 67];
    const v = randu(M * N, 21, -300, 300);
    const ref = new Float32Array(N);
    for (let m = 0; m < M; m++) for (let n = 0; n < N; n++) ref[n] += v[m * N + n];
    const got = await gpu.readF32(colSum(gpu, gpu.upload(v, [M, N]), gpu.empty([N])));
    assertClose(got, ref, { atol: 1e-2, rtol: 1e-5 }, "colSum");
  });
});

/** CPU reference of linear's backward in f64: dx = dy W, dW = dy^T x, dbias = sum_rows dy. */
function linearBackwardCpu(
  x: Float32Array, // (Mr, I)
  w: Float32Array, // (O, I)
  dy: Float32Array, // (Mr, O)
  Mr: number,
  I: number,
  O: number,
) {
  const dx = new Float64Array(Mr * I), dW = new Float64Array(O * I), dbias = new Float64Array(O);
  for (let r = 0; r < Mr; r++) {
    for (let o = 0; o < O; o++) {
      const g = dy[r * O + o];
      dbias[o] += g;
      for (let i = 0; i < I; i++) {
        dx[r * I + i] += g * w[o * I + i];
        dW[o * I + i] += g * x[r * I + i];
      }
    }
  }
  return { dx, dW, dbias };
}

Deno.test("linearBackward() matches the CPU reference on odd, tile-crossing shapes", async (t) => {
  const gpu = await getGpu();
  // lead: x's leading dims (rows Mr = their product); I -> O; value ranges of x, W and dy.
  const cases = [
    { lead: [45], I: 65, O: 70, xr: 300, wr: 1, gr: 1 },
    { lead: [70], I: 129, O: 33, xr: 1, wr: 300, gr: 300 },
    { lead: [1], I: 65, O: 70, xr: 300, wr: 300, gr: 1 },
    { lead: [1], I: 129, O: 33, xr: 1, wr: 1, gr: 300 },
    { lead: [3, 15], I: 65, O: 70, xr: 300, wr: 1, gr: 300 },
  ];
  let seed = 100;
  for (const { lead, I, O, xr, wr, gr } of cases) {
    const Mr = lead.reduce((a, b) => a * b, 1);
    await t.step(`x [${lead},${I}] -> ${O}, |x|<${xr} |W|<${wr} |dy|<${gr}`, async () => {
      const x = randu(Mr * I, seed++, -xr, xr), w = randu(O * I, seed++, -wr, wr);
      const dy = randu(Mr * O, seed++, -gr, gr);
      const X = gpu.upload(x, [...lead, I]), W = gpu.upload(w, [O, I]);
      const G = gpu.upload(dy, [...lead, O]);
      const ref = linearBackwardCpu(x, w, dy, Mr, I, O);
      // f32 sums over K terms of size |a||b|: dx over O, dW and dbias over the Mr rows.
      const tdx = tol(O, gr * wr), tdW = tol(Mr, gr * xr), tdb = tol(Mr, gr);
      const { dx, dW, dbias } = linearBackward(gpu, X, W, G, { bias: true });
      if (dx!.shape.join() !== [...lead, I].join()) throw new Error(`dx shape [${dx!.shape}]`);
      const [gx, gw, gb] = await gpu.readMany([dx!, dW, dbias!]);
      assertClose(gx, ref.dx, tdx, "dx");
      assertClose(gw, ref.dW, tdW, "dW");
      assertClose(gb, ref.dbias, tdb, "dbias");
      // accumulate: dW += and dbias += onto existing values (twice), dx not needed.
      const w0 = randu(O * I, seed++, -xr * gr, xr * gr), b0 = randu(O, seed++, -gr, gr);
      const dWacc = gpu.upload(w0, [O, I]), dbAcc = gpu.upload(b0, [O]);
      for (let k = 0; k < 2; k++) {
        linearBackward(gpu, X, W, G, { dW: dWacc, dbias: dbAcc, accumulate: true, needDx: false });
      }
      const accTol = (tl: { atol: number; rtol: number }, s: number) => ({
        atol: 2 * tl.atol + 1e-6 * s,
        rtol: tl.rtol,
      });
      assertClose(
        await gpu.readF32(dWacc),
        w0.map((v, i) => v + 2 * ref.dW[i]),
        accTol(tdW, xr * gr),
        "dW accumulated",
      );
      assertClose(
        await gpu.readF32(dbAcc),
        b0.map((v, i) => v + 2 * ref.dbias[i]),
        accTol(tdb, gr),
        "dbias accumulated",
      );
      for (const T of [X, W, G, dx!, dW, dbias!, dWacc, dbAcc]) T.release();
    });
  }
});
