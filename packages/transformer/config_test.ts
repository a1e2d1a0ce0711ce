import { assertEquals, assertThrows } from "./_assert.ts";
import {
  ConfigError,
  configFromHf,
  configToHf,
  defaultImageCodes,
  makeConfig,
  paramCount,
  paramSpecs,
  preset,
  PRESETS,
} from "./config.ts";

Deno.test("paramCount()", async (t) => {
  await t.step("presets match LVM.md's table (millions, one decimal)", () => {
    const table: Record<string, [number, number, number, number, number, number]> = {
      // layers, hidden, heads, head dim, FFN, params (M)
      "100m": [22, 640, 10, 64, 1664, 117.0],
      "300m": [22, 1024, 8, 128, 2688, 291.0],
      "600m": [22, 1536, 16, 96, 4096, 648.4],
      "1b": [22, 2048, 16, 128, 5504, 1147.1],
      "3b": [26, 3200, 32, 100, 8640, 3274.7],
      "7b": [32, 4096, 32, 128, 11008, 6544.2],
    };
    for (const [name, [L, D, H, hd, F, M]] of Object.entries(table)) {
      const c = preset(name);
      assertEquals([c.layers, c.hidden, c.heads, c.headDim, c.ffn], [L, D, H, hd, F], name);
      assertEquals([c.vocab, c.imageCodes, c.kvHeads, c.tieEmbeddings], [8292, 8192, H, false]);
      assertEquals(Math.round(paramCount(c) / 1e5) / 10, M, name);
    }
  });
  await t.step("7b exactly, and the small presets", () => {
    assertEquals(paramCount(preset("7b")), 6_544_199_680);
    const tiny = paramCount(PRESETS.tiny), small = paramCount(PRESETS.small);
    if (!(tiny > 1e6 && tiny < 5e6 && small > tiny && small < 2e7)) {
      throw new Error(`tiny ${tiny} / small ${small} parameters out of the intended range`);
    }
  });
  await t.step("GQA and tied embeddings change the count", () => {
    const base = makeConfig({ hidden: 24, layers: 2, heads: 3, ffn: 40, vocab: 100 });
    const gqa = makeConfig({ hidden: 24, layers: 2, heads: 3, kvHeads: 1, ffn: 40, vocab: 100 });
    const tied = { ...base, tieEmbeddings: true };
    assertEquals(paramCount(base) - paramCount(gqa), 2 * 2 * (24 * 24 - 8 * 24));
    assertEquals(paramCount(base) - paramCount(tied), 100 * 24);
    assertEquals(paramSpecs(tied).some((p) => p.name === "lm_head.weight"), false);
  });
  await t.step("unknown preset names the choices", () => {
    assertThrows(() => preset("2b"), RangeError, "100m");
  });
});

Deno.test("configFromHf()", async (t) => {
  await t.step("round trip through config.json", () => {
    for (const c of Object.values(PRESETS)) assertEquals(configFromHf(configToHf(c)), c);
    const odd = makeConfig({ hidden: 32, layers: 1, heads: 4, kvHeads: 2, ffn: 8, vocab: 10 });
    assertEquals(configFromHf(configToHf({ ...odd, tieEmbeddings: true })).tieEmbeddings, true);
    assertEquals(configFromHf(configToHf(odd)).kvHeads, 2);
  });
  await t.step("defaults: LVM vocab reserves 100 ids, others none", () => {
    const base = {
      architectures: ["LlamaForCausalLM"],
      hidden_size: 64,
      num_hidden_layers: 1,
      num_attention_heads: 4,
      intermediate_size: 100,
    };
    assertEquals(configFromHf({ ...base, vocab_size: 8292 }).imageCodes, 8192);
    assertEquals(configFromHf({ ...base, vocab_size: 32000 }).imageCodes, 32000);
    assertEquals(configFromHf({ ...base, vocab_size: 32000 }).kvHeads, 4);
  });
  await t.step("0 attention heads is named as such (not as a head_dim of null)", () => {
    const zero = {
      architectures: ["LlamaForCausalLM"],
      hidden_size: 64,
      num_hidden_layers: 1,
      num_attention_heads: 0,
      intermediate_size: 100,
      vocab_size: 100,
    };
    assertThrows(
      () => configFromHf(zero),
      ConfigError,
      '"num_attention_heads" must be a positive integer, found 0',
    );
  });
  await t.step("makeConfig and configFromHf default imageCodes alike", () => {
    const base = {
      architectures: ["LlamaForCausalLM"],
      hidden_size: 16,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      intermediate_size: 24,
    };
    for (const [vocab, codes] of [[8292, 8192], [32000, 32000], [8300, 8300], [100, 100]]) {
      assertEquals(defaultImageCodes(vocab), codes, `vocab ${vocab}`);
      assertEquals(
        makeConfig({ hidden: 16, layers: 1, heads: 2, ffn: 24, vocab }).imageCodes,
        codes,
        `makeConfig vocab ${vocab}`,
      );
      assertEquals(configFromHf({ ...base, vocab_size: vocab }).imageCodes, codes, `hf ${vocab}`);
    }
    assertEquals(makeConfig({ hidden: 16, layers: 1, heads: 2, ffn: 24 }).imageCodes, 8192);
    // An explicit value wins on both paths.
    assertEquals(
      makeConfig({ hidden: 16, layers: 1, heads: 2, ffn: 24, imageCodes: 5 }).imageCodes,
      5,
    );
    assertEquals(configFromHf({ ...base, vocab_size: 32000, image_codes: 7 }).imageCodes, 7);
  });
  await t.step("clear errors", () => {
    const good = configToHf(PRESETS.tiny);
    assertThrows(
      () => configFromHf({ ...good, architectures: ["MistralForCausalLM"] }, "m/config.json"),
      ConfigError,
      "m/config.json: unsupported architecture",
    );
    assertThrows(() => configFromHf({ ...good, hidden_size: "big" }), ConfigError, "hidden_size");
    assertThrows(() => configFromHf({ ...good, num_key_value_heads: 3 }), ConfigError, "kvHeads");
    assertThrows(() => configFromHf({ ...good, hidden_act: "gelu" }), ConfigError, "gelu");
    assertThrows(
      () => configFromHf({ ...good, rope_scaling: { type: "linear", factor: 2 } }),
      ConfigError,
      "rope_scaling",
    );
  });
});
