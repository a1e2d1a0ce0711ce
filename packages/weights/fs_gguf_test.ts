/**
 * GGUF files on disk (`@lvm/weights/fs`): the streaming writer (any order, atomic, nothing left
 * behind on failure, bytes equal to the in-memory encoder), `GgufFile`, `openWeights` on a
 * `.gguf`, and `convertLlamaToGguf` from a Hugging Face folder (and from a GGUF, block for block).
 */
import { join } from "node:path";
import { assert, assertEquals, assertRejects, randNormal } from "@lvm/util/testing";
import { encodeGguf, GgufError, type GgufTensorEntry, ggufValue } from "./gguf.ts";
import { GgufLlamaSource, llamaShapeFromHf, llamaTensorShapes } from "./gguf_llama.ts";
import { dequantize, quantize } from "./quant.ts";
import { fromF32, toF32 } from "./safetensors.ts";
import {
  convertLlamaToGguf,
  GgufFile,
  GgufWriter,
  openWeights,
  writeGguf,
  writeSafetensors,
} from "./fs.ts";

const ls = async (dir: string) => {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) names.push(e.name);
  return names.sort();
};

const ENTRIES: GgufTensorEntry[] = [
  { name: "a", type: "Q8_0", shape: [3, 64], data: randNormal(192, 1) },
  { name: "b", type: "F16", shape: [5], data: randNormal(5, 2) },
  { name: "c", type: "Q4_0", shape: [1, 32], data: randNormal(32, 3) },
];
const MD = new Map([["general.name", ggufValue.str("t")]]);

Deno.test("GgufWriter/writeGguf/GgufFile: streamed, atomic, the encoder's bytes", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvm-gguf-" });
  const path = join(dir, "m.gguf");
  await t.step("any write order gives encodeGguf's bytes", async () => {
    const w = await GgufWriter.create(path, MD, ENTRIES);
    assertEquals(w.order, ["a", "b", "c"]);
    for (const e of [ENTRIES[2], ENTRIES[0], ENTRIES[1]]) await w.write(e.name, e.data);
    await w.close();
    assertEquals(await Deno.readFile(path), encodeGguf(MD, ENTRIES));
    assertEquals(await ls(dir), ["m.gguf"]);
    assertEquals(w.size, (await Deno.stat(path)).size);
  });
  await t.step("a tensor never written: nothing saved, the old file kept", async () => {
    const before = await Deno.readFile(path);
    const w = await GgufWriter.create(path, MD, ENTRIES);
    await w.write("a", ENTRIES[0].data);
    await assertRejects(
      () => w.write("a", ENTRIES[0].data),
      RangeError,
      'tensor "a" written twice',
    );
    await assertRejects(() => w.write("z", ENTRIES[0].data), RangeError, "not in the list");
    await assertRejects(() => w.close(), RangeError, "2 tensor(s) never written (b, c)");
    assertEquals(await Deno.readFile(path), before);
    assertEquals(await ls(dir), ["m.gguf"]);
  });
  await t.step("writeGguf calls each data function in turn, one tensor at a time", async () => {
    const calls: string[] = [];
    const p2 = join(dir, "lazy.gguf");
    await writeGguf(
      p2,
      MD,
      ENTRIES.map((e) => ({
        ...e,
        data: () => {
          calls.push(e.name);
          return Promise.resolve(e.data);
        },
      })),
    );
    assertEquals(calls, ["a", "b", "c"]);
    assertEquals(await Deno.readFile(p2), encodeGguf(MD, ENTRIES));
    const failing = ENTRIES.map((e) => ({
      ...e,
      data: () =>
        e.name === "b" ? Promise.reject(new Error("source gone")) : Promise.resolve(e.data),
    }));
    await assertRejects(() => writeGguf(join(dir, "bad.gguf"), MD, failing), Error, "source gone");
    await assertRejects(
      () => writeGguf(join(dir, "bad.gguf"), MD, [{ ...ENTRIES[0], data: new Float32Array(3) }]),
      RangeError,
      '"a": 3 values given for [3,64]',
    );
    assertEquals(await ls(dir), ["lazy.gguf", "m.gguf"]);
  });
  await t.step("GgufFile.open reads it; a missing file is a GgufError naming it", async () => {
    const g = await GgufFile.open(path);
    assertEquals(g.get("general.name"), "t");
    assertEquals(
      await g.readF32("c"),
      dequantize("Q4_0", quantize("Q4_0", ENTRIES[2].data as Float32Array), 32),
    );
    g.close();
    await assertRejects(
      () => GgufFile.open(join(dir, "none.gguf")),
      GgufError,
      `${dir}/none.gguf: cannot open`,
    );
    await assertRejects(() => openWeights(path), GgufError, "general.architecture is undefined");
  });
  await Deno.remove(dir, { recursive: true });
});

const CONFIG = {
  architectures: ["LlamaForCausalLM"],
  hidden_size: 64,
  intermediate_size: 40, // down_proj rows of 40: F16 in a quantized file
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 50,
  max_position_embeddings: 128,
  rms_norm_eps: 1e-5,
  tie_word_embeddings: true,
};

Deno.test("convertLlamaToGguf: an HF folder (BF16) to GGUF, read back by openWeights", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvm-gguf-" });
  const model = join(dir, "model");
  await Deno.mkdir(model);
  await Deno.writeTextFile(join(model, "config.json"), JSON.stringify(CONFIG));
  const shape = llamaShapeFromHf(CONFIG);
  const values = new Map<string, Float32Array>();
  const st: Record<string, { dtype: "BF16"; shape: number[]; data: Float32Array }> = {};
  for (const [i, { name, shape: s }] of llamaTensorShapes(shape).entries()) {
    const x = toF32("BF16", fromF32("BF16", randNormal(s.reduce((a, b) => a * b, 1), i + 1)));
    values.set(name, x);
    st[name] = { dtype: "BF16", shape: s, data: x };
  }
  st["model.layers.0.self_attn.rotary_emb.inv_freq"] = {
    dtype: "BF16",
    shape: [8],
    data: new Float32Array(8),
  };
  await writeSafetensors(join(model, "model.safetensors"), st);

  await t.step("F32: every tensor exact; progress; skipped buffers", async () => {
    const seen: string[] = [];
    const out = join(dir, "f32.gguf");
    const r = await convertLlamaToGguf(model, out, {
      type: "F32",
      onTensor: (t, i, n) => seen.push(`${i + 1}/${n} ${t.name}`),
    });
    assertEquals([r.file, r.type, r.tensors, r.bytes], [
      out,
      "F32",
      20,
      (await Deno.stat(out)).size,
    ]);
    assertEquals(r.skipped.map((s) => s.name), ["model.layers.0.self_attn.rotary_emb.inv_freq"]);
    assertEquals(seen[0], "1/20 token_embd.weight");
    const src = await openWeights(out);
    assert(src instanceof GgufLlamaSource);
    assertEquals(src.names(), [...values.keys()]);
    for (const [name, x] of values) assertEquals(await src.readF32(name), x, name);
    assertEquals(src.config().tie_word_embeddings, true);
    src.close();
  });
  await t.step("Q8_0: matrices quantized, rows of 40 as F16 with a note", async () => {
    const out = join(dir, "q8.gguf");
    const q = await convertLlamaToGguf(join(model, "model.safetensors"), out, {
      type: "Q8_0",
      name: "tiny",
    });
    assertEquals(
      q.notes,
      [0, 1].map((l) =>
        `model.layers.${l}.mlp.down_proj.weight: rows of 40 values are not a multiple of 32: stored as F16, not Q8_0`
      ),
    );
    const src = await openWeights(out) as GgufLlamaSource;
    assertEquals(src.metadata["general.name"], "tiny");
    const name = "model.layers.1.self_attn.k_proj.weight";
    assertEquals((await src.rawTensor(name)).bytes, quantize("Q8_0", values.get(name)!));
    assertEquals(src.ggmlType("model.layers.1.mlp.down_proj.weight"), "F16");
    assertEquals(src.ggmlType("model.norm.weight"), "F32");
    src.close();
  });
  await t.step("a GGUF in, the same type out: blocks copied bit for bit", async () => {
    const out = join(dir, "q8.gguf"), again = join(dir, "q8-again.gguf");
    await convertLlamaToGguf(out, again, { type: "Q8_0", name: "tiny" });
    assertEquals(await Deno.readFile(again), await Deno.readFile(out));
  });
  await t.step("no config.json, not a LLaMA: errors naming the file", async () => {
    await Deno.remove(join(model, "config.json"));
    await assertRejects(
      () => convertLlamaToGguf(model, join(dir, "x.gguf"), { type: "F16" }),
      Error,
      `${model}/config.json: cannot read`,
    );
    await Deno.writeTextFile(
      join(model, "config.json"),
      JSON.stringify({ ...CONFIG, architectures: ["BertModel"] }),
    );
    await assertRejects(
      () => convertLlamaToGguf(model, join(dir, "x.gguf"), { type: "F16" }),
      RangeError,
      "config.json: not a LLaMA config",
    );
    assertEquals((await ls(dir)).filter((n) => n.startsWith("x.gguf")), []);
  });
  await Deno.remove(dir, { recursive: true });
});
