/**
 * The VQGAN against tests/fixtures/tokenizer (written by tools/ref_vqgan.py, PyTorch, float64 math on
 * the stored weights): the same ids and decoded pixels from the .bin, the open-muse safetensors and
 * the diffusers safetensors (with its diffusers config.json); the training loss and gradients; the
 * same for the 3-level levels3/ fixture, whose channel counts change in the encoder and the decoder
 * (nin_shortcut blocks); and, for another nin_shortcut config, the forward against the CPU reference
 * and the gradients against finite differences of it.
 */
import { join } from "node:path";
import { loadImage } from "@lvm/image/fs";
import { getGpu, type Gpu, type Tensor } from "./_deps.ts";
import { SafetensorsFile } from "@lvm/weights/fs";
import { assertClose, assertEquals, assertRejects, finiteDiff, randu } from "@lvm/util/testing";
import {
  configToJson,
  parseConfig,
  presetConfig,
  type VqganConfig,
  vqganParamSpecs,
} from "./config.ts";
import { conv2dTuning } from "@lvm/kernels";
import { initVqganWeights, Tape, Vqgan } from "./model.ts";
import { VqganCpu } from "./_reference.ts";
import { createTokenizer, TokenCountError } from "./tokenizer.ts";
import { loadTokenizer, readTokenizerDir, saveTokenizer } from "./fs.ts";
import { releaseLoss, vqganLossAndGrads } from "./train.ts";
import type { VqganWeights } from "./weights.ts";

const FIX = new URL("../../tests/fixtures/tokenizer/", import.meta.url).pathname;
const ref = await SafetensorsFile.open(join(FIX, "reference.safetensors"));
const images = await ref.readF32("images"); // (2,3,16,16)
const idsRaw = await ref.readRaw("ids");
const refIds = new Int32Array(
  idsRaw.buffer.slice(idsRaw.byteOffset, idsRaw.byteOffset + idsRaw.byteLength),
);
const P = 3 * 16 * 16, T = 64;
const asImages = () =>
  [0, 1].map((i) => ({ width: 16, height: 16, data: images.slice(i * P, (i + 1) * P) }));

/**
 * Asserts every `grad.NAME` tensor of a PyTorch reference file matches `grads.get(NAME)` (to 1e-4
 * of the largest reference value, 2e-3 relative); returns the names.
 */
async function assertGradsMatch(
  gpu: Gpu,
  ref: SafetensorsFile,
  grads: Map<string, Tensor>,
): Promise<string[]> {
  const names = ref.names().filter((n) => n.startsWith("grad.")).map((n) => n.slice(5));
  for (const n of names) {
    const want = await ref.readF32(`grad.${n}`);
    let scale = 0;
    for (const v of want) scale = Math.max(scale, Math.abs(v));
    assertClose(await gpu.readF32(grads.get(n)!), want, {
      atol: 1e-4 * scale + 1e-7,
      rtol: 2e-3,
    }, `d${n}`);
  }
  return names;
}

Deno.test("VqganTokenizer fixtures()", async (t) => {
  const decoded = await ref.readF32("decoded");
  const ids: string[] = [];
  for (const sub of ["bin", "openmuse", "diffusers"]) {
    await t.step(`${sub}: ids of the fixed images and decoded pixels match PyTorch`, async () => {
      // A diffusers config does not record the input resolution.
      const tok = await loadTokenizer(
        join(FIX, sub),
        sub === "diffusers" ? { resolution: 16 } : {},
      );
      assertEquals(tok.tokensPerImage, T);
      assertEquals(tok.grid, 8);
      assertEquals(tok.codebookSize, 64);
      const got = await tok.encode(asImages());
      assertClose(
        Float32Array.from([...got[0], ...got[1]]),
        refIds,
        { atol: 0, rtol: 0 },
        `${sub} ids`,
      );
      const imgs = await tok.decode([refIds.slice(0, T), refIds.slice(T)]);
      const flat = new Float32Array(2 * P);
      imgs.forEach((m, i) => flat.set(m.data, i * P));
      assertClose(flat, decoded, { atol: 2e-5, rtol: 1e-4 }, `${sub} decoded`);
      ids.push(tok.id);
      // A loaded tokenizer keeps its staged weights (the decodes above used them); the gpu
      // kind's implicit-GEMM convs read the weights as they are and stage none.
      assertEquals(tok.model.cachedWeightBytes > 0, tok.model.gpu.kind === "cpu");
      tok.release();
    });
  }
  await t.step(
    "diffusers/config.json is a diffusers VQModel config of the same model",
    async () => {
      const json = JSON.parse(await Deno.readTextFile(join(FIX, "diffusers", "config.json")));
      assertEquals(json._class_name, "VQModel");
      assertEquals("block_out_channels" in json && !("hidden_channels" in json), true);
      const om = parseConfig(JSON.parse(await Deno.readTextFile(join(FIX, "bin", "config.json"))));
      assertEquals(parseConfig(json, "diffusers", 16), om);
      // Without the resolution, 2^(levels-1) x 16 (what the LVM tokenizer's 5 levels give: 256).
      assertEquals(parseConfig(json), { ...om, resolution: 32 });
    },
  );
  await t.step(
    "one identity for the three files; the fixed image also loads from PNG",
    async () => {
      assertEquals(new Set(ids).size, 1);
      const png = await loadImage(join(FIX, "image.png"));
      assertClose(png.data, images.slice(0, P), { atol: 0, rtol: 0 }, "image.png");
    },
  );
  await t.step("quant_conv latents match", async () => {
    const { config, weights } = await readTokenizerDir(join(FIX, "bin"));
    const gpu = await getGpu();
    const model = Vqgan.fromWeights(gpu, config, weights);
    const x = gpu.upload(images, [2, 3, 16, 16]);
    const z = model.encode(x);
    const zh = await gpu.readF32(z);
    assertClose(zh, await ref.readF32("z"), { atol: 1e-5, rtol: 1e-4 }, "z");
    // A margin this wide cannot be crossed by f32 rounding of the distances.
    assertEquals((await ref.readF32("margin"))[0] > 1e-3, true);
    // With the staged weights kept: filled by the first call, the same latents on every call.
    model.cacheWeights();
    for (let i = 0; i < 2; i++) {
      const zc = model.encode(x);
      assertEquals(Array.from(await gpu.readF32(zc)), Array.from(zh), `cached encode ${i}`);
      zc.release();
    }
    assertEquals(model.cachedWeightBytes > 0, gpu.kind === "cpu"); // gpu kind: nothing staged
    model.cacheWeights(false);
    assertEquals(model.cachedWeightBytes, 0);
    x.release();
    z.release();
    model.release();
  });
  await t.step("wrong token count names the grid; out-of-range ids rejected", async () => {
    const tok = await loadTokenizer(join(FIX, "openmuse"));
    await assertRejects(
      () => tok.decode([new Int32Array(63)]),
      TokenCountError,
      "got 63 ids, expected 64 (a 8x8 grid",
    );
    await assertRejects(
      () => tok.decode([new Int32Array(64).fill(64)]),
      Error,
      "tokens[0] is 64, expected a code id in [0, 64)",
    );
    tok.release();
  });
  await t.step("images of other sizes are squash-resized to the resolution", async () => {
    const tok = await loadTokenizer(join(FIX, "openmuse"));
    const [a] = await tok.encode([{ width: 37, height: 23, data: randu(3 * 37 * 23, 3, 0, 1) }]);
    assertEquals(a.length, T);
    tok.release();
  });
});

Deno.test("vqganLossAndGrads() fixture", async (t) => {
  const { config, weights } = await readTokenizerDir(join(FIX, "openmuse"));
  const gpu = await getGpu();
  const model = Vqgan.fromWeights(gpu, config, weights);
  const x = gpu.upload(images, [2, 3, 16, 16]);
  const r = vqganLossAndGrads(model, x);
  const [rec, vq] = await gpu.readMany(r.stats.slice(0, 2));
  const loss = await ref.readF32("loss"); // total, rec, codebook, commitment
  await t.step("loss terms match PyTorch", () => {
    assertClose([rec[0], vq[0], vq[0]], loss.slice(1), { atol: 1e-6, rtol: 1e-4 }, "loss terms");
    assertClose([rec[0] + 1.25 * vq[0]], [loss[0]], { atol: 1e-6, rtol: 1e-4 }, "loss");
  });
  await t.step("ids match PyTorch", async () => {
    assertClose(await gpu.read(r.ids), refIds, { atol: 0, rtol: 0 }, "ids");
  });
  await t.step("gradients match PyTorch's (straight-through, codebook, commitment)", async () => {
    const names = await assertGradsMatch(gpu, ref, r.grads);
    assertEquals(names.length > 20, true);
    assertEquals(r.grads.size, weights.size);
  });
  releaseLoss(r);
  x.release();
  model.release();
});

Deno.test("levels3 fixture: 3 levels, channels changing in the encoder and the decoder", async (t) => {
  const L3 = join(FIX, "levels3");
  const r3 = await SafetensorsFile.open(join(L3, "reference.safetensors"));
  const x3 = await r3.readF32("images"); // (2,3,32,32)
  const raw = await r3.readRaw("ids");
  const ids3 = new Int32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const P3 = 3 * 32 * 32, T3 = 64;
  const gpu = await getGpu();
  const { config } = await readTokenizerDir(join(L3, "bin"));
  await t.step("the config has nin_shortcut blocks in the encoder and the decoder", async () => {
    const nin = vqganParamSpecs(config).filter((s) => s.name.endsWith("nin_shortcut.weight"));
    assertEquals(nin.map((s) => [s.name, s.shape.join("x")]), [
      ["encoder.down.1.block.0.nin_shortcut.weight", "64x32x1x1"],
      ["encoder.down.2.block.0.nin_shortcut.weight", "32x64x1x1"],
      ["decoder.up.0.block.0.nin_shortcut.weight", "32x64x1x1"],
      ["decoder.up.1.block.0.nin_shortcut.weight", "64x32x1x1"],
    ]);
    assertEquals((await r3.readF32("margin"))[0] > 1e-3, true, "id margin wide enough for f32");
  });
  const ids: string[] = [];
  for (const sub of ["bin", "diffusers"]) {
    await t.step(`${sub}: latents, ids and decoded pixels match PyTorch`, async () => {
      const tok = await loadTokenizer(join(L3, sub), sub === "diffusers" ? { resolution: 32 } : {});
      assertEquals([tok.grid, tok.tokensPerImage, tok.codebookSize], [8, T3, 32]);
      const images = [0, 1].map((i) => ({
        width: 32,
        height: 32,
        data: x3.slice(i * P3, (i + 1) * P3),
      }));
      const got = await tok.encode(images);
      assertClose(Float32Array.from([...got[0], ...got[1]]), ids3, { atol: 0, rtol: 0 }, "ids");
      const xt = gpu.upload(x3, [2, 3, 32, 32]);
      const z = tok.model.encode(xt);
      assertClose(await gpu.readF32(z), await r3.readF32("z"), { atol: 1e-5, rtol: 1e-4 }, "z");
      xt.release();
      z.release();
      const imgs = await tok.decode([ids3.slice(0, T3), ids3.slice(T3)]);
      const flat = new Float32Array(2 * P3);
      imgs.forEach((m, i) => flat.set(m.data, i * P3));
      assertClose(flat, await r3.readF32("decoded"), { atol: 2e-5, rtol: 1e-4 }, "decoded");
      ids.push(tok.id);
      // A loaded tokenizer keeps its staged weights (the decodes above used them); the gpu
      // kind's implicit-GEMM convs read the weights as they are and stage none.
      assertEquals(tok.model.cachedWeightBytes > 0, tok.model.gpu.kind === "cpu");
      tok.release();
    });
  }
  await t.step("one identity for the .bin and the diffusers safetensors", () => {
    assertEquals(ids.length, 2);
    assertEquals(ids[0], ids[1]);
  });
  await t.step("training loss and gradients match PyTorch", async () => {
    const { weights } = await readTokenizerDir(join(L3, "bin"));
    const model = Vqgan.fromWeights(gpu, config, weights);
    const xt = gpu.upload(x3, [2, 3, 32, 32]);
    const r = vqganLossAndGrads(model, xt);
    const [rec, vq] = await gpu.readMany(r.stats.slice(0, 2));
    const loss = await r3.readF32("loss");
    assertClose([rec[0], vq[0], vq[0]], loss.slice(1), { atol: 1e-6, rtol: 1e-4 }, "loss terms");
    assertClose(await gpu.read(r.ids), ids3, { atol: 0, rtol: 0 }, "ids");
    const names = await assertGradsMatch(gpu, r3, r.grads);
    assertEquals(names.filter((n) => n.includes("nin_shortcut")).length, 6);
    releaseLoss(r);
    xt.release();
    model.release();
  });
  r3.close();
});

/** A config whose blocks change channels (nin_shortcut in the encoder and the decoder). */
const NIN: VqganConfig = parseConfig({
  resolution: 8,
  hidden_channels: 32,
  channel_mult: [1, 2],
  num_res_blocks: 1,
  attn_resolutions: [],
  no_attn_mid_block: true,
  z_channels: 8,
  num_embeddings: 16,
  quantized_embed_dim: 4,
});

Deno.test("Vqgan nin_shortcut config vs CPU reference()", async (t) => {
  const gpu = await getGpu();
  const w = initVqganWeights(NIN, 7);
  // Non-trivial norms and a codebook spread like the latents.
  for (const [n, v] of w) {
    if (/norm|nin/.test(n)) {
      v.set(randu(v.length, n.length, n.endsWith("weight") && !/nin/.test(n) ? 0.5 : -0.3, 1.2));
    }
  }
  const cpu = new VqganCpu(NIN, w);
  const B = 2, x = randu(B * 3 * 64, 11, 0, 1);
  const z = cpu.encode(x, B);
  w.set(
    "quantize.embedding.weight",
    Float32Array.from(
      { length: 64 },
      (_, i) => z.data[(i * 7) % z.data.length] + 0.05 * Math.sin(i),
    ),
  );
  const model = Vqgan.fromWeights(gpu, NIN, w);
  const xt = gpu.upload(x, [B, 3, 8, 8]);
  await t.step("encode and decode match", async () => {
    const zg = model.encode(xt);
    assertClose(await gpu.readF32(zg), z.data, { atol: 1e-5, rtol: 1e-4 }, "z");
    const q = cpu.lookup(cpu.codes(z), B);
    const qg = gpu.upload(q.data, q.shape);
    const rg = model.decode(qg);
    assertClose(await gpu.readF32(rg), cpu.decode(q).data, { atol: 1e-5, rtol: 1e-4 }, "decoded");
    for (const t of [zg, qg, rg]) t.release();
  });
  // Encoder and decoder backward on their own: d<out, R>/d param for a fixed random R, against
  // central differences of the CPU reference. (The training loss itself is a surrogate: its
  // straight-through gradient is not the derivative of its value; the PyTorch fixture checks that.)
  const probe = async (
    label: string,
    run: (tape: Tape) => Tensor,
    cpuOut: (w: VqganWeights) => Float32Array,
    names: string[],
  ) => {
    const tape = new Tape();
    const out = run(tape);
    const R = randu(out.size, 99);
    tape.backward(gpu.upload(R, out.shape));
    out.release();
    for (const n of names) {
      const p = w.get(n)!;
      const idx = [1, p.length - 1];
      const fd = finiteDiff(
        (v) => {
          const wc = new Map(w);
          wc.set(n, Float32Array.from(v));
          const o = cpuOut(wc);
          let s = 0;
          for (let i = 0; i < o.length; i++) s += o[i] * R[i];
          return s;
        },
        p,
        1e-3,
        idx,
      );
      const g = await gpu.readF32(tape.grads.get(n)!);
      assertClose(idx.map((i) => g[i]), fd, { atol: 2e-3, rtol: 2e-3 }, `${label} d${n}`);
    }
    for (const g of tape.grads.values()) g.release();
  };
  await t.step(
    "encoder gradients (nin_shortcut, norms, downsample) match finite differences",
    async () => {
      await probe(
        "encoder",
        (tape) => model.encode(xt, tape),
        (wc) => new VqganCpu(NIN, wc).encode(x, B).data,
        [
          "encoder.down.1.block.0.nin_shortcut.weight",
          "encoder.down.1.block.0.nin_shortcut.bias",
          "encoder.down.1.block.0.norm1.weight",
          "encoder.down.0.downsample.conv.weight",
          "encoder.mid.block_2.norm2.bias",
        ],
      );
    },
  );
  await t.step("decoder gradients (nin_shortcut, upsample) match finite differences", async () => {
    const q = cpu.lookup(cpu.codes(z), B);
    const qt = gpu.upload(q.data, q.shape);
    await probe(
      "decoder",
      (tape) => model.decode(qt, tape),
      (wc) => new VqganCpu(NIN, wc).decode(q).data,
      [
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.0.nin_shortcut.weight",
        "decoder.up.0.block.0.nin_shortcut.bias",
        "decoder.up.0.block.1.norm1.bias",
      ],
    );
    qt.release();
  });
  xt.release();
  model.release();
});

Deno.test("saveTokenizer() round trip", async (t) => {
  const dir = await Deno.makeTempDir();
  await t.step("saved tokenizer loads with the same id, ids and images", async () => {
    const { config, weights } = await readTokenizerDir(join(FIX, "bin"));
    await saveTokenizer(dir, config, weights);
    const a = await createTokenizer(config, weights);
    const b = await loadTokenizer(dir);
    assertEquals(b.id, a.id);
    const [ia, ib] = [await a.encode(asImages()), await b.encode(asImages())];
    assertClose(
      Float32Array.from(ib.flat()),
      Float32Array.from(ia.flat()),
      { atol: 0, rtol: 0 },
      "ids",
    );
    a.release();
    b.release();
  });
  await t.step("missing or mis-shaped weights are named", async () => {
    const { config, weights } = await readTokenizerDir(join(FIX, "bin"));
    const bad: VqganConfig = { ...config, numEmbeddings: 32 };
    // Weights of 64 codes do not save, nor load, under a config of 32.
    await assertRejects(
      () => saveTokenizer(join(dir, "bad"), bad, weights),
      Error,
      "quantize.embedding.weight needs 256 values for shape [32,8], found 512",
    );
    await Deno.writeTextFile(join(dir, "config.json"), JSON.stringify(configToJson(bad)));
    await assertRejects(
      () => loadTokenizer(dir),
      Error,
      "quantize.embedding.weight has shape [64,8], expected [32,8]",
    );
    await Deno.remove(join(dir, "model.safetensors"));
    await assertRejects(() => loadTokenizer(dir), Error, "no weight file found");
  });
  await Deno.remove(dir, { recursive: true });
});

Deno.test("inference from gathered GroupNorm statistics matches reading the activations", async () => {
  // Winograd forced on every stride-1 3x3 conv of the tiny preset (its channels are below the
  // default rule's), so the convs gather their outputs' statistics and the norms take them.
  const gpu = await getGpu();
  const config = presetConfig("tiny");
  const model = Vqgan.fromWeights(gpu, config, initVqganWeights(config, 7));
  const x = gpu.upload(randu(2 * 3 * 32 * 32, 8, 0, 1), [2, 3, 32, 32]);
  const pipeline = gpu.pipeline;
  let fromStats = 0;
  gpu.pipeline = (key, code, entry) => {
    if (key.startsWith("gn_partial_affine")) fromStats++;
    return pipeline.call(gpu, key, code, entry);
  };
  conv2dTuning.w43 = true;
  try {
    const run = async (gather: boolean) => {
      model.gatherStats = gather;
      const before = fromStats;
      const z = model.encode(x);
      const y = model.decode(z);
      const [zh, yh] = await gpu.readMany([z, y]);
      z.release();
      y.release();
      return { zh, yh, norms: fromStats - before };
    };
    const off = await run(false), on = await run(true);
    assertEquals(off.norms, 0, "norms from statistics when off");
    // Every res block's norm2, and norm1 after a Winograd conv: most of the 21 norms.
    if (on.norms < 10) throw new Error(`only ${on.norms} norms took gathered statistics`);
    assertClose(on.zh, off.zh, { atol: 1e-4, rtol: 1e-4 }, "latents");
    assertClose(on.yh, off.yh, { atol: 1e-4, rtol: 1e-4 }, "decoded");
  } finally {
    conv2dTuning.w43 = null;
    gpu.pipeline = pipeline;
    x.release();
    model.release();
  }
});

Deno.test("training from gathered GroupNorm statistics matches reading the activations", async () => {
  // The training forward applies each norm inside the next conv (its prologue) and takes the norm's
  // statistics from the conv that made its input where that conv gathered them: the loss and every
  // gradient are those of norms that read their inputs, to rounding. The texture paths (the gpu
  // kind's implicit GEMMs gather nothing).
  const gpu = await getGpu();
  conv2dTuning.gemm = false;
  conv2dTuning.gemmBackward = false;
  const config = presetConfig("tiny");
  const model = Vqgan.fromWeights(gpu, config, initVqganWeights(config, 9));
  const x = gpu.upload(randu(2 * 3 * 32 * 32, 10, 0, 1), [2, 3, 32, 32]);
  const pipeline = gpu.pipeline;
  let fromStats = 0;
  gpu.pipeline = (key, code, entry) => {
    if (key === "gn_partial_affine|true") fromStats++;
    return pipeline.call(gpu, key, code, entry);
  };
  try {
    const run = async (gather: boolean) => {
      model.gatherStats = gather;
      const before = fromStats;
      const r = vqganLossAndGrads(model, x);
      const names = [...r.grads.keys()].sort();
      const host = await gpu.readMany([r.stats[0], ...names.map((n) => r.grads.get(n)!)]);
      releaseLoss(r);
      return {
        loss: host[0] as Float32Array,
        grads: host.slice(1) as Float32Array[],
        names,
        norms: fromStats - before,
      };
    };
    const off = await run(false), on = await run(true);
    assertEquals(off.norms, 0, "norms from statistics when off");
    // Every norm of the tiny preset but those after the upsampled convs' direct phases (28 norms).
    if (on.norms < 20) throw new Error(`only ${on.norms} norms took gathered statistics`);
    assertEquals(on.names, off.names);
    assertClose(on.loss, off.loss, { atol: 1e-6, rtol: 1e-5 }, "loss");
    on.grads.forEach((g, i) =>
      assertClose(g, off.grads[i], { atol: 1e-5, rtol: 2e-3 }, on.names[i])
    );
  } finally {
    conv2dTuning.gemm = null;
    conv2dTuning.gemmBackward = null;
    model.gatherStats = true;
    gpu.pipeline = pipeline;
    x.release();
    model.release();
  }
});
