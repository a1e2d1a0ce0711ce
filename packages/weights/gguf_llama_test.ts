/**
 * llama.cpp's LLaMA conventions: the name table both ways, the q/k row permutation (a hand
 * example, inverse on odd shapes, rows of quantized blocks, and that it turns HF's rotate-half
 * RoPE into llama.cpp's adjacent-pair RoPE with the same attention scores), the metadata both
 * ways, and a GGUF read back under HF names (exact for F32, block for block for Q8_0/Q4_0).
 */
import {
  assert,
  assertClose,
  assertEquals,
  assertRejects,
  assertStrictEquals,
  assertThrows,
  randNormal,
} from "@lvm/util/testing";
import { encodeGguf, GgufError, GgufReader, ggufValue } from "./gguf.ts";
import {
  encodeLlamaTensor,
  GgufLlamaSource,
  ggufToHfName,
  hfConfigFromGguf,
  hfToGgufName,
  invertOrder,
  llamaGgufMetadata,
  llamaQkRowOrder,
  type LlamaShape,
  llamaShapeFromHf,
  llamaTensorShapes,
  llamaVocabMetadata,
  permuteQK,
  planLlamaGguf,
  reorderRows,
  unpermuteQK,
} from "./gguf_llama.ts";
import { dequantize, quantize } from "./quant.ts";
import { fromF32 } from "./safetensors.ts";

/** A small GQA config.json: head_dim 16 (hidden 64 / 4 heads), 2 KV heads, vocab 8292. */
const CONFIG = {
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  hidden_size: 64,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 100,
  max_position_embeddings: 512,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: false,
  hidden_act: "silu",
  image_codes: 96,
};

Deno.test("hfToGgufName/ggufToHfName: llama.cpp's LLaMA names", () => {
  const pairs = [
    ["model.embed_tokens.weight", "token_embd.weight"],
    ["model.norm.weight", "output_norm.weight"],
    ["lm_head.weight", "output.weight"],
    ["model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"],
    ["model.layers.11.self_attn.k_proj.weight", "blk.11.attn_k.weight"],
    ["model.layers.2.self_attn.v_proj.weight", "blk.2.attn_v.weight"],
    ["model.layers.2.self_attn.o_proj.weight", "blk.2.attn_output.weight"],
    ["model.layers.3.mlp.gate_proj.weight", "blk.3.ffn_gate.weight"],
    ["model.layers.3.mlp.up_proj.weight", "blk.3.ffn_up.weight"],
    ["model.layers.3.mlp.down_proj.weight", "blk.3.ffn_down.weight"],
    ["model.layers.31.input_layernorm.weight", "blk.31.attn_norm.weight"],
    ["model.layers.31.post_attention_layernorm.weight", "blk.31.ffn_norm.weight"],
  ];
  for (const [hf, gg] of pairs) {
    assertEquals(hfToGgufName(hf), gg);
    assertEquals(ggufToHfName(gg), hf);
  }
  const shape = llamaShapeFromHf({ ...CONFIG, num_hidden_layers: 3 });
  for (const { name } of llamaTensorShapes(shape)) {
    assertEquals(ggufToHfName(hfToGgufName(name)!), name);
  }
  for (const n of ["model.layers.0.self_attn.rotary_emb.inv_freq", "model.embed", "x.weight"]) {
    assertStrictEquals(hfToGgufName(n), undefined);
  }
  for (const n of ["blk.0.attn_qkv.weight", "rope_freqs.weight", "blk.x.attn_q.weight"]) {
    assertStrictEquals(ggufToHfName(n), undefined);
  }
});

Deno.test("the q/k permutation of convert_hf_to_gguf.py", async (t) => {
  await t.step("a hand example: one head of 6 rows, two heads of 4", () => {
    // HF rows [r0 r1 r2 | r3 r4 r5] (halves) -> adjacent pairs (r0 r3) (r1 r4) (r2 r5)
    const x = new Float32Array([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5]); // 6 x 2: row r = [r, r+.5]
    assertEquals(Array.from(permuteQK(x, 6, 1)), [0, 0.5, 3, 3.5, 1, 1.5, 4, 4.5, 2, 2.5, 5, 5.5]);
    assertEquals(Array.from(llamaQkRowOrder(8, 2)), [0, 2, 1, 3, 4, 6, 5, 7]);
  });
  await t.step("the reshape/swapaxes formula, and unpermute is its inverse, on odd shapes", () => {
    for (const [heads, D, cols] of [[1, 2, 1], [3, 6, 5], [5, 10, 7], [4, 16, 3]]) {
      const rows = heads * D;
      const x = randNormal(rows * cols, heads * 100 + D);
      const p = permuteQK(x, rows, heads);
      // w.reshape(heads, 2, D/2, cols).swapaxes(1, 2): out[h][i][s] = in[h][s][i]
      for (let h = 0; h < heads; h++) {
        for (let i = 0; i < D / 2; i++) {
          for (let s = 0; s < 2; s++) {
            for (let c = 0; c < cols; c++) {
              const out = ((h * D) + 2 * i + s) * cols + c;
              const inp = ((h * D) + s * (D / 2) + i) * cols + c;
              assertStrictEquals(p[out], x[inp]);
            }
          }
        }
      }
      assertEquals(unpermuteQK(p, rows, heads), x);
      assertEquals(
        invertOrder(invertOrder(llamaQkRowOrder(rows, heads))),
        llamaQkRowOrder(rows, heads),
      );
    }
    assertThrows(() => llamaQkRowOrder(12, 4), RangeError, "12 rows are not 4 heads of an even");
    assertThrows(() => llamaQkRowOrder(10, 3), RangeError);
  });
  await t.step("quantized rows move whole: reorderRows(quantize(W)) = quantize(permute(W))", () => {
    const [rows, cols, heads] = [12, 64, 2];
    const w = randNormal(rows * cols, 9);
    for (const type of ["Q8_0", "Q4_0"] as const) {
      const moved = reorderRows(
        quantize(type, w),
        (cols / 32) * (type === "Q8_0" ? 34 : 18),
        llamaQkRowOrder(rows, heads),
      );
      assertEquals(moved, quantize(type, permuteQK(w, rows, heads)));
    }
    assertThrows(
      () => reorderRows(new Uint8Array(10), 3, new Uint32Array(3)),
      RangeError,
      "10 bytes",
    );
  });
  await t.step("HF rotate-half RoPE on W = llama.cpp adjacent-pair RoPE on permute(W)", () => {
    // q = W x for one head of D rows; attention scores q(p) . k(p') must agree.
    const D = 8, cols = 5, heads = 1, theta = 10000;
    const Wq = randNormal(D * cols, 1), Wk = randNormal(D * cols, 2), x = randNormal(cols, 3);
    const y = randNormal(cols, 4);
    const mv = (W: Float32Array, v: Float32Array) =>
      Array.from({ length: D }, (_, r) => v.reduce((s, vc, c) => s + W[r * cols + c] * vc, 0));
    const angle = (p: number, i: number) => p * theta ** (-2 * i / D);
    const ropeHalf = (q: number[], p: number) =>
      q.map((_, r) => {
        const i = r % (D / 2), a = angle(p, i);
        return r < D / 2
          ? q[r] * Math.cos(a) - q[r + D / 2] * Math.sin(a)
          : q[r] * Math.cos(a) + q[r - D / 2] * Math.sin(a);
      });
    const ropePairs = (q: number[], p: number) =>
      q.map((_, r) => {
        const i = r >> 1, a = angle(p, i);
        return r % 2 === 0
          ? q[r] * Math.cos(a) - q[r + 1] * Math.sin(a)
          : q[r] * Math.cos(a) + q[r - 1] * Math.sin(a);
      });
    const dot = (a: number[], b: number[]) => a.reduce((s, v, i) => s + v * b[i], 0);
    for (const [p, pk] of [[0, 0], [3, 1], [17, 11]]) {
      const hf = dot(ropeHalf(mv(Wq, x), p), ropeHalf(mv(Wk, y), pk));
      const gg = dot(
        ropePairs(mv(permuteQK(Wq, D, heads), x), p),
        ropePairs(mv(permuteQK(Wk, D, heads), y), pk),
      );
      assertClose([gg], [hf], { atol: 1e-4, rtol: 1e-4 }, `positions ${p}, ${pk}`);
    }
  });
});

Deno.test("llamaShapeFromHf: what llama.cpp's llama cannot express is refused, naming the file", () => {
  const bad = (patch: Record<string, unknown>, text: string) =>
    assertThrows(
      () => llamaShapeFromHf({ ...CONFIG, ...patch }, "m/config.json"),
      RangeError,
      text,
    );
  bad({ architectures: ["GPT2LMHeadModel"] }, "m/config.json: not a LLaMA config");
  bad({ rope_scaling: { type: "linear", factor: 2 } }, "rope_scaling");
  bad({ hidden_act: "gelu" }, 'hidden_act "gelu"');
  bad({ attention_bias: true }, "attention_bias=true");
  bad({ hidden_size: undefined }, '"hidden_size" must be a positive integer, found undefined');
  bad({ num_key_value_heads: 3 }, "not a multiple of num_key_value_heads 3");
  bad({ rms_norm_eps: -1 }, '"rms_norm_eps" must be a positive number');
  const s = llamaShapeFromHf({
    hidden_size: 8,
    num_attention_heads: 2,
    num_hidden_layers: 1,
    intermediate_size: 4,
    vocab_size: 9,
    model_type: "llama",
  });
  assertEquals(s, {
    hidden: 8,
    layers: 1,
    heads: 2,
    kvHeads: 2,
    headDim: 4,
    ffn: 4,
    vocab: 9,
    maxPositions: 4096,
    rmsEps: 1e-6,
    ropeTheta: 10000,
    tieEmbeddings: false,
  });
});

/** HF tensors of `shape`, random (norms around 1). */
function randomTensors(shape: LlamaShape): Map<string, { shape: number[]; data: Float32Array }> {
  return new Map(
    llamaTensorShapes(shape).map(({ name, shape: s }, i) => {
      const n = s.reduce((a, b) => a * b, 1);
      const data = randNormal(n, i + 1, s.length === 1 ? 1 : 0, s.length === 1 ? 0.1 : 0.5);
      return [name, { shape: s, data }];
    }),
  );
}

/** A GGUF of `tensors` as `type`, through planLlamaGguf + encodeLlamaTensor. */
function toGguf(
  shape: LlamaShape,
  tensors: Map<string, { shape: number[]; data: Float32Array }>,
  type: "F32" | "F16" | "Q8_0" | "Q4_0",
) {
  const plan = planLlamaGguf(
    shape,
    [...tensors].map(([name, t]) => ({ name, shape: t.shape })),
    type,
  );
  const bytes = encodeGguf(
    plan.metadata,
    plan.tensors.map((t) => ({ ...t, data: encodeLlamaTensor(t, tensors.get(t.hfName)!.data) })),
  );
  return { plan, bytes };
}

Deno.test("llamaGgufMetadata/hfConfigFromGguf: config.json -> GGUF metadata -> config.json", async (t) => {
  await t.step("the llama.* keys llama.cpp reads, and back", async () => {
    const shape = llamaShapeFromHf(CONFIG);
    const md = llamaGgufMetadata(shape, { type: "Q8_0", name: "tiny" });
    const v = (k: string) => md.get(k)?.value;
    assertEquals(
      [
        v("general.architecture"),
        v("general.name"),
        v("general.file_type"),
        v("general.quantization_version"),
      ],
      ["llama", "tiny", 7, 2],
    );
    assertEquals(
      [
        "llama.embedding_length",
        "llama.block_count",
        "llama.feed_forward_length",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.dimension_count",
        "llama.context_length",
        "llama.vocab_size",
      ].map(v),
      [64, 2, 96, 4, 2, 16, 512, 100],
    );
    assertEquals(md.get("llama.attention.layer_norm_rms_epsilon"), ggufValue.f32(1e-6));
    assertStrictEquals(md.has("llama.attention.key_length"), false);
    const { bytes } = toGguf(shape, randomTensors(shape), "Q8_0");
    const back = hfConfigFromGguf(await GgufReader.fromBytes(bytes));
    assertEquals(back, {
      ...CONFIG,
      rope_scaling: null,
      attention_bias: false,
      torch_dtype: "float32",
    });
    assertEquals(llamaShapeFromHf(back), shape);
  });
  await t.step("head_dim apart from hidden/heads, tied embeddings, no image_codes", async () => {
    const cfg = { ...CONFIG, head_dim: 32, tie_word_embeddings: true, image_codes: undefined };
    const shape = llamaShapeFromHf(cfg);
    const { bytes, plan } = toGguf(shape, randomTensors(shape), "F16");
    assertStrictEquals(plan.tensors.some((t) => t.name === "output.weight"), false);
    const md = plan.metadata;
    assertEquals(
      [md.get("llama.attention.key_length")?.value, md.get("general.file_type")?.value],
      [32, 1],
    );
    const back = hfConfigFromGguf(await GgufReader.fromBytes(bytes));
    assertEquals([back.head_dim, back.tie_word_embeddings, "image_codes" in back], [
      32,
      true,
      false,
    ]);
  });
  await t.step("the vocabulary: <img_N> image codes, <unused_K> reserved, special ids", () => {
    const vocab = new Map(llamaVocabMetadata(100, 96));
    const tokens = vocab.get("tokenizer.ggml.tokens")!.value as { items: string[] };
    assertEquals(tokens.items.length, 100);
    assertEquals([tokens.items[0], tokens.items[95], tokens.items[96], tokens.items[99]], [
      "<img_0>",
      "<img_95>",
      "<unused_0>",
      "<unused_3>",
    ]);
    const types = vocab.get("tokenizer.ggml.token_type")!.value as { items: Int32Array };
    assertEquals([types.items[0], types.items[96]], [4, 3]);
    assertEquals(vocab.get("tokenizer.ggml.model")?.value, "gpt2");
    assertEquals([
      vocab.get("tokenizer.ggml.eos_token_id")?.value,
      vocab.get("tokenizer.ggml.bos_token_id")?.value,
    ], [96, 96]);
    assertEquals(new Map(llamaVocabMetadata(50)).get("tokenizer.ggml.eos_token_id")?.value, 49);
    assertThrows(() => llamaVocabMetadata(50, 51), RangeError, "between 1 and the vocab 50");
  });
  await t.step("another architecture, a missing key", async () => {
    const other = await GgufReader.fromBytes(
      encodeGguf(new Map([["general.architecture", ggufValue.str("gpt2")]]), []),
      "g.gguf",
    );
    assertThrows(
      () => hfConfigFromGguf(other),
      GgufError,
      'g.gguf: general.architecture is "gpt2"',
    );
    const noHidden = await GgufReader.fromBytes(
      encodeGguf(new Map([["general.architecture", ggufValue.str("llama")]]), []),
      "g.gguf",
    );
    assertThrows(
      () => hfConfigFromGguf(noHidden),
      GgufError,
      "metadata llama.embedding_length is missing",
    );
  });
});

Deno.test("planLlamaGguf: types, order, what is skipped or refused", () => {
  const shape = llamaShapeFromHf({ ...CONFIG, intermediate_size: 40 }); // down_proj rows of 40
  const infos = llamaTensorShapes(shape);
  const plan = planLlamaGguf(shape, [
    ...infos.slice().reverse(),
    { name: "model.layers.0.self_attn.rotary_emb.inv_freq", shape: [8] },
  ], "Q4_0");
  assertEquals(plan.tensors.map((t) => t.name).slice(0, 3), [
    "token_embd.weight",
    "blk.0.attn_norm.weight",
    "blk.0.attn_q.weight",
  ]);
  assertEquals(plan.tensors.at(-1)!.name, "output.weight");
  const by = new Map(plan.tensors.map((t) => [t.name, t]));
  assertEquals(by.get("blk.1.ffn_norm.weight")!.type, "F32");
  assertEquals(by.get("blk.1.ffn_up.weight")!.type, "Q4_0");
  assertEquals(by.get("blk.1.ffn_down.weight")!.type, "F16");
  assert(
    by.get("blk.1.ffn_down.weight")!.note!.includes("rows of 40 values are not a multiple of 32"),
  );
  assertEquals([
    by.get("blk.0.attn_q.weight")!.heads,
    by.get("blk.0.attn_k.weight")!.heads,
    by.get("blk.0.attn_v.weight")!.heads,
  ], [4, 2, undefined]);
  assertEquals(plan.skipped.map((s) => s.name), ["model.layers.0.self_attn.rotary_emb.inv_freq"]);
  const tied = llamaShapeFromHf({ ...CONFIG, tie_word_embeddings: true });
  const p2 = planLlamaGguf(tied, [...llamaTensorShapes(tied), {
    name: "lm_head.weight",
    shape: [100, 64],
  }], "F32");
  assertEquals(p2.skipped[0].name, "lm_head.weight");
  const refuse = (list: { name: string; shape: number[] }[], text: string) =>
    assertThrows(() => planLlamaGguf(shape, list, "Q8_0", { source: "m" }), RangeError, text);
  refuse(infos.slice(1), 'm: missing tensor "model.embed_tokens.weight" (expected [100,64]');
  refuse(
    [...infos.slice(1), { name: "model.embed_tokens.weight", shape: [99, 64] }],
    "has shape [99,64], expected [100,64]",
  );
  refuse(
    [...infos, { name: "vision.proj", shape: [2] }],
    'm: tensor "vision.proj" is not part of a LLaMA',
  );
  assertThrows(
    () => planLlamaGguf(shape, infos, "Q5_K" as never),
    TypeError,
    'unknown GGUF type "Q5_K"',
  );
});

Deno.test("GgufLlamaSource: a LLaMA GGUF under HF names, in HF row order", async (t) => {
  const shape = llamaShapeFromHf(CONFIG);
  const tensors = randomTensors(shape);
  const Q = "model.layers.1.self_attn.q_proj.weight", K = "model.layers.0.self_attn.k_proj.weight";

  await t.step("F32: every tensor back exactly (q/k unpermuted)", async () => {
    const src = await GgufLlamaSource.fromBytes(toGguf(shape, tensors, "F32").bytes, "m.gguf");
    assertEquals(src.names(), [...tensors.keys()]);
    for (const [name, t] of tensors) {
      assertEquals(src.info(name), {
        name,
        dtype: "F32",
        shape: t.shape,
        byteLength: t.data.length * 4,
      });
      assertEquals(await src.readF32(name), t.data, name);
    }
    assertEquals(src.ggufName(Q), "blk.1.attn_q.weight");
    assertEquals(src.metadata["llama.block_count"], "2");
    assertEquals(llamaShapeFromHf(src.config()), shape);
    assertThrows(
      () => src.info("model.layers.9.mlp.up_proj.weight"),
      GgufError,
      "blk.9.ffn_up.weight",
    );
    src.close();
  });
  await t.step("F16: stored dtype F16, bytes in HF order", async () => {
    const src = await GgufLlamaSource.fromBytes(toGguf(shape, tensors, "F16").bytes);
    assertEquals(src.info(K).dtype, "F16");
    assertEquals(await src.readRaw(K), fromF32("F16", tensors.get(K)!.data));
    assertEquals(src.info("model.norm.weight").dtype, "F32");
  });
  for (const type of ["Q8_0", "Q4_0"] as const) {
    await t.step(
      `${type}: rawTensor = quantize(HF rows); readF32 = its dequantization`,
      async () => {
        const src = await GgufLlamaSource.fromBytes(toGguf(shape, tensors, type).bytes);
        for (const name of [Q, K, "model.layers.0.mlp.down_proj.weight", "lm_head.weight"]) {
          const x = tensors.get(name)!.data;
          const raw = await src.rawTensor(name);
          assertEquals([raw.type, raw.shape], [type, tensors.get(name)!.shape]);
          assertEquals(raw.bytes, quantize(type, x), name);
          const want = dequantize(type, raw.bytes, x.length);
          assertEquals(await src.readF32(name), want);
          assertEquals(new Float32Array((await src.readRaw(name)).buffer), want);
          const out = new Float32Array(x.length);
          assertStrictEquals(await src.readF32(name, out), out);
        }
        assertEquals([src.info(Q).dtype, src.ggmlType(Q)], ["F32", type]);
        await assertRejects(
          () => src.readF32(Q, new Float32Array(3)),
          RangeError,
          "output holds 3 floats",
        );
      },
    );
  }
  await t.step("a file of another architecture is refused", async () => {
    const bytes = encodeGguf(new Map([["general.architecture", ggufValue.str("bert")]]), []);
    await assertRejects(
      () => GgufLlamaSource.fromBytes(bytes, "b.gguf"),
      GgufError,
      'b.gguf: general.architecture is "bert"',
    );
  });
});
