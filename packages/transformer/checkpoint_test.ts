import { getGpu } from "@lvm/gpu";
import { SafetensorsError } from "@lvm/weights";
import { openCheckpoint, SafetensorsFile, writeSafetensors } from "@lvm/weights/fs";
import { roundF16 } from "@lvm/util";
import { assertClose } from "@lvm/util/testing";
import { assertEquals, assertRejects } from "./_assert.ts";
import { LlamaCheckpointError } from "./checkpoint.ts";
import { loadLlama, readConfig, saveLlama } from "./fs.ts";
import { ConfigError, makeConfig, paramSpecs } from "./config.ts";
import { Llama } from "./model.ts";

const FIXTURES = new URL("../../tests/fixtures/transformer/", import.meta.url).pathname;
const FIXTURE = `${FIXTURES}mha`;

/** bf16 rounding (nearest even) of f32 values, as a BF16 save stores them. */
function roundBf16(x: Float32Array): Float32Array {
  const u = new Uint32Array(Float32Array.from(x).buffer);
  for (let i = 0; i < u.length; i++) {
    const lsb = (u[i] >>> 16) & 1;
    u[i] = ((u[i] + 0x7fff + lsb) >>> 16) << 16;
  }
  return new Float32Array(u.buffer);
}

const temps: string[] = [];
async function copyFixture(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "lvm-ckpt-" });
  temps.push(dir);
  for (const f of ["config.json", "model.safetensors"]) {
    await Deno.copyFile(`${FIXTURE}/${f}`, `${dir}/${f}`);
  }
  return dir;
}

Deno.test("saveLlama() / loadLlama()", async (t) => {
  const gpu = await getGpu();
  const model = await loadLlama(gpu, FIXTURE);
  const weights = await model.readParams();

  await t.step("F32 round trip is exact; config.json round-trips", async () => {
    const dir = await Deno.makeTempDir();
    assertEquals(await saveLlama(model, dir), ["model.safetensors"]);
    assertEquals(await readConfig(dir), model.config);
    const loaded = await loadLlama(gpu, dir);
    const back = await loaded.readParams();
    loaded.release();
    for (const [name, w] of weights) assertClose(back.get(name)!, w, { atol: 0, rtol: 0 }, name);
    const f = await SafetensorsFile.open(`${dir}/model.safetensors`);
    assertEquals(f.metadata?.format, "pt");
    f.close();
    await Deno.remove(dir, { recursive: true });
  });

  await t.step("sharded F16 and BF16 saves load back rounded", async () => {
    const dir = await Deno.makeTempDir();
    for (const [dtype, round] of [["F16", roundF16], ["BF16", roundBf16]] as const) {
      const files = await saveLlama(model, dir, { dtype, maxShardBytes: 8000 });
      if (files.length < 3) throw new Error(`expected several shards, got ${files}`);
      const index = JSON.parse(await Deno.readTextFile(`${dir}/model.safetensors.index.json`));
      assertEquals(Object.keys(index.weight_map).length, paramSpecs(model.config).length);
      const loaded = await loadLlama(gpu, dir);
      const back = await loaded.readParams();
      loaded.release();
      for (const [name, w] of weights) {
        assertClose(back.get(name)!, round(w), { atol: 0, rtol: 0 }, name);
      }
    }
    // A later single-file save removes the shards and the index.
    await saveLlama(model, dir);
    const left = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(left, ["config.json", "model.safetensors"]);
    await Deno.remove(dir, { recursive: true });
  });

  await t.step("fresh init saves and loads (tied, GQA)", async () => {
    const c = makeConfig({
      hidden: 16,
      layers: 1,
      heads: 4,
      kvHeads: 2,
      ffn: 24,
      vocab: 30,
      tieEmbeddings: true,
    });
    const m = Llama.init(gpu, c, { seed: 3 });
    const dir = await Deno.makeTempDir();
    await saveLlama(m, dir);
    const back = await loadLlama(gpu, dir);
    assertEquals(back.config, c);
    assertEquals(back.params.has("lm_head.weight"), false);
    const w = await m.readParams(), b = await back.readParams();
    for (const [name, x] of w) assertClose(b.get(name)!, x, { atol: 0, rtol: 0 }, name);
    // init: N(0, 0.02) matrices, unit norms
    const e = w.get("model.embed_tokens.weight")!;
    const std = Math.sqrt(e.reduce((s, v) => s + v * v, 0) / e.length);
    if (Math.abs(std - 0.02) > 0.004) throw new Error(`init std ${std}`);
    assertEquals([...w.get("model.norm.weight")!], new Array(16).fill(1));
    for (const x of [m, back]) x.release();
    await Deno.remove(dir, { recursive: true });
  });
  model.release();
});

Deno.test("loadLlama() errors name the tensor and the file", async (t) => {
  const gpu = await getGpu();
  const edit = async (dir: string, f: (c: Record<string, unknown>) => void) => {
    const c = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    f(c);
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(c));
  };

  await t.step("missing tensor (config says more layers)", async () => {
    const dir = await copyFixture();
    await edit(dir, (c) => (c.num_hidden_layers = 3));
    await assertRejects(
      () => loadLlama(gpu, dir),
      LlamaCheckpointError,
      `${dir}/model.safetensors: missing tensor "model.layers.2.input_layernorm.weight"`,
    );
  });
  await t.step("misshaped tensor", async () => {
    const dir = await copyFixture();
    await edit(dir, (c) => (c.intermediate_size = 41));
    await assertRejects(
      () => loadLlama(gpu, dir),
      LlamaCheckpointError,
      `tensor "model.layers.0.mlp.gate_proj.weight" has shape [40,24], expected [41,24]`,
    );
  });
  await t.step("unknown architecture, missing config", async () => {
    const dir = await copyFixture();
    await edit(dir, (c) => (c.architectures = ["GPT2LMHeadModel"]));
    await assertRejects(() => loadLlama(gpu, dir), ConfigError, "GPT2LMHeadModel");
    await Deno.remove(`${dir}/config.json`);
    await assertRejects(() => loadLlama(gpu, dir), ConfigError, "config.json");
  });
  await t.step("an unexpected tensor", async () => {
    const dir = await copyFixture();
    const src = await SafetensorsFile.open(`${dir}/model.safetensors`);
    const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
    for (const n of src.names()) {
      tensors[n] = { dtype: "F32", shape: src.info(n).shape, data: await src.readF32(n) };
    }
    src.close();
    tensors["model.layers.0.self_attn.q_proj.bias"] = {
      dtype: "F32",
      shape: [24],
      data: new Float32Array(24),
    };
    // HF's rotary buffers are tolerated.
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = {
      dtype: "F32",
      shape: [4],
      data: new Float32Array(4),
    };
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    await assertRejects(
      () => loadLlama(gpu, dir),
      LlamaCheckpointError,
      `unexpected tensor "model.layers.0.self_attn.q_proj.bias"`,
    );
  });
  await t.step("truncated weights file", async () => {
    const dir = await copyFixture();
    const bytes = await Deno.readFile(`${dir}/model.safetensors`);
    await Deno.writeFile(`${dir}/model.safetensors`, bytes.subarray(0, bytes.length - 100));
    await assertRejects(() => loadLlama(gpu, dir), SafetensorsError, "model.safetensors");
  });
  for (const d of temps.splice(0)) await Deno.remove(d, { recursive: true });
});

/** Every tensor of a reference.safetensors, as f32. */
async function reference(dir: string): Promise<Map<string, Float32Array>> {
  const f = await SafetensorsFile.open(`${dir}/reference.safetensors`);
  const out = new Map<string, Float32Array>();
  for (const n of f.names()) out.set(n, await f.readF32(n));
  f.close();
  return out;
}

const maxAbs = (x: ArrayLike<number>) =>
  Array.from(x).reduce((m, v) => Math.max(m, Math.abs(v)), 0);

/** Logits (B*T*V) of a forward over the reference batch. */
async function logitsOf(model: Llama, inputs: Float32Array): Promise<Float32Array> {
  const { logits } = model.forward({ B: 2, T: inputs.length / 2, inputs });
  const out = await model.gpu.readF32(logits![0]);
  logits!.forEach((x) => x.release());
  return out;
}

// Checkpoints written by tools/ref_llama.py's own safetensors writer (not by saveLlama): the `mha`
// model as BF16 in 2 shards behind model.safetensors.index.json, `gqa_tied` as F16 in one file.
for (
  const [name, base, dtype, round] of [
    ["mha_bf16_sharded", "mha", "BF16", roundBf16],
    ["gqa_tied_f16", "gqa_tied", "F16", roundF16],
  ] as const
) {
  Deno.test(`loadLlama() reads a ${dtype} checkpoint written by PyTorch (${name})`, async (t) => {
    const gpu = await getGpu();
    const dir = `${FIXTURES}${name}`;
    const ref = await reference(dir);
    const inputs = ref.get("inputs")!, want = ref.get("logits")!;
    const model = await loadLlama(gpu, dir);

    await t.step("layout: every tensor stored as the fixture says", async () => {
      const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
      const weights = dtype === "BF16"
        ? [
          "model-00001-of-00002.safetensors",
          "model-00002-of-00002.safetensors",
          "model.safetensors.index.json",
        ]
        : ["model.safetensors"];
      assertEquals(files, ["config.json", ...weights, "reference.safetensors"].sort());
      const src = await openCheckpoint(dir);
      try {
        assertEquals(src.names().length, paramSpecs(model.config).length);
        for (const n of src.names()) assertEquals(src.info(n).dtype, dtype, n);
      } finally {
        src.close();
      }
    });

    await t.step("weights are torch's rounding of the f32 model, decoded exactly", async () => {
      const f32 = await loadLlama(gpu, `${FIXTURES}${base}`);
      const [a, b] = [await f32.readParams(), await model.readParams()];
      f32.release();
      assertEquals([...b.keys()].sort(), [...a.keys()].sort());
      for (const [n, w] of a) assertClose(b.get(n)!, round(w), { atol: 0, rtol: 0 }, n);
    });

    await t.step("logits match the reference of the stored weights", async () => {
      const got = await logitsOf(model, inputs);
      assertClose(got, want, { atol: 2e-5 * maxAbs(want), rtol: 1e-4 }, "logits");
    });

    await t.step(`logits are within ${dtype} rounding of the f32 model's`, async () => {
      // 16-bit weights move the logits by a few units of the format's epsilon times their scale:
      // bf16 (eps 2^-8) up to ~0.5% here, f16 (eps 2^-11) ~0.2%.
      const f32Logits = (await reference(`${FIXTURES}${base}`)).get("logits")!;
      const tol = (dtype === "BF16" ? 2 ** -6 : 2 ** -7) * maxAbs(f32Logits);
      assertClose(await logitsOf(model, inputs), f32Logits, { atol: tol, rtol: 0 }, "vs f32");
    });

    if (dtype === "F16") {
      await t.step("kept as f16 on the GPU: the same weights, the same logits", async () => {
        const m16 = await loadLlama(gpu, dir, { dtype: "f16" });
        const got = await logitsOf(m16, inputs);
        m16.release();
        assertClose(got, want, { atol: 2e-5 * maxAbs(want), rtol: 1e-4 }, "f16 logits");
      });
    }
    model.release();
  });
}

Deno.test("checkTensors(): F64 loads, other dtypes are named in the error", async (t) => {
  const gpu = await getGpu();
  const rewrite = async (dtype: (name: string) => "F64" | "I32" | "F32") => {
    const dir = await copyFixture();
    const src = await SafetensorsFile.open(`${dir}/model.safetensors`);
    const tensors: Record<
      string,
      { dtype: "F64" | "I32" | "F32"; shape: number[]; data: Float32Array }
    > = {};
    for (const n of src.names()) {
      const data = await src.readF32(n);
      tensors[n] = {
        dtype: dtype(n),
        shape: src.info(n).shape,
        data: dtype(n) === "I32" ? data.map(Math.round) : data,
      };
    }
    src.close();
    await writeSafetensors(`${dir}/model.safetensors`, tensors);
    return dir;
  };
  const base = await loadLlama(gpu, FIXTURE);
  const want = await base.readParams();
  base.release();

  await t.step("F64 tensors load as f32", async () => {
    const dir = await rewrite(() => "F64");
    const f = await SafetensorsFile.open(`${dir}/model.safetensors`);
    assertEquals(f.info("model.norm.weight").dtype, "F64");
    f.close();
    const m = await loadLlama(gpu, dir);
    const got = await m.readParams();
    m.release();
    for (const [n, w] of want) assertClose(got.get(n)!, w, { atol: 0, rtol: 0 }, n);
  });
  await t.step("an I32 tensor: the message lists exactly the accepted dtypes", async () => {
    const dir = await rewrite((n) => (n === "model.norm.weight" ? "I32" : "F32"));
    await assertRejects(
      () => loadLlama(gpu, dir),
      LlamaCheckpointError,
      `tensor "model.norm.weight" is I32, expected F32, F16, BF16 or F64`,
    );
  });
  for (const d of temps.splice(0)) await Deno.remove(d, { recursive: true });
});
