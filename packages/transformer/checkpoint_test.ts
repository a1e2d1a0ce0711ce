import {
  getGpu,
  roundF16,
  SafetensorsError,
  SafetensorsFile,
  writeSafetensors,
} from "@lvm/kernels";
import { assertClose } from "@lvm/kernels/testing";
import { assertEquals, assertRejects } from "./_assert.ts";
import { CheckpointError, loadLlama, readConfig, saveLlama } from "./checkpoint.ts";
import { ConfigError, makeConfig, paramSpecs } from "./config.ts";
import { Llama } from "./model.ts";

const FIXTURE = new URL("../../tests/fixtures/transformer/mha", import.meta.url).pathname;

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
      CheckpointError,
      `${dir}/model.safetensors: missing tensor "model.layers.2.input_layernorm.weight"`,
    );
  });
  await t.step("misshaped tensor", async () => {
    const dir = await copyFixture();
    await edit(dir, (c) => (c.intermediate_size = 41));
    await assertRejects(
      () => loadLlama(gpu, dir),
      CheckpointError,
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
      CheckpointError,
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
