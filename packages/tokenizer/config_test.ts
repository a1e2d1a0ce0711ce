import { assertEquals, assertThrows } from "@lvm/util/testing";
import {
  configToJson,
  geometry,
  parseConfig,
  presetConfig,
  VQGAN_PRESETS,
  VqganConfigError,
  vqganParamCount,
  vqganParamSpecs,
} from "./config.ts";
import { detectNaming, toDiffusersName } from "./weights.ts";

/** The released LVM tokenizer's config.json (open-muse fields). */
const LVM_JSON = {
  _class_name: "VQGANModel",
  attn_resolutions: [],
  channel_mult: [1, 2, 2, 4, 6],
  commitment_cost: 0.25,
  dropout: 0.0,
  hidden_channels: 128,
  no_attn_mid_block: true,
  num_channels: 3,
  num_embeddings: 8192,
  num_res_blocks: 2,
  quantized_embed_dim: 64,
  resample_with_conv: true,
  resolution: 256,
  z_channels: 64,
};

Deno.test("paramCount()", async (t) => {
  await t.step("lvm preset has the released 146,244,675 parameters", () => {
    assertEquals(vqganParamCount(presetConfig("lvm")), 146_244_675);
  });
  await t.step("encoder 58.7M / decoder 87.0M split of the reference", () => {
    const specs = vqganParamSpecs(presetConfig("lvm"));
    const n = (p: string) =>
      specs.filter((s) => s.name.startsWith(p)).reduce(
        (a, s) => a + s.shape.reduce((x, y) => x * y, 1),
        0,
      );
    assertEquals(Math.round(n("encoder.") / 1e5) / 10, 58.7);
    assertEquals(Math.round(n("decoder.") / 1e5) / 10, 87.0);
  });
  await t.step("every preset validates; grids as documented", () => {
    assertEquals(
      Object.fromEntries(
        Object.keys(VQGAN_PRESETS).map((k) => [k, geometry(presetConfig(k)).tokensPerImage]),
      ),
      { lvm: 256, tiny: 64, small: 64 },
    );
  });
});

Deno.test("paramSpecs()", async (t) => {
  await t.step("open-muse names, decoder up.4 runs first and has no upsample at up.0", () => {
    const names = new Set(vqganParamSpecs(presetConfig("lvm")).map((s) => s.name));
    for (
      const n of [
        "encoder.down.4.block.1.conv2.weight",
        "encoder.down.1.block.0.nin_shortcut.weight",
        "encoder.down.3.downsample.conv.bias",
        "decoder.up.4.block.2.norm1.weight",
        "decoder.up.1.upsample.conv.weight",
        "decoder.up.0.block.0.nin_shortcut.weight",
        "quantize.embedding.weight",
      ]
    ) assertEquals(names.has(n), true, n);
    assertEquals(names.has("encoder.down.4.downsample.conv.weight"), false);
    assertEquals(names.has("decoder.up.0.upsample.conv.weight"), false);
    assertEquals(names.has("encoder.down.0.block.0.nin_shortcut.weight"), false);
  });
  await t.step("shapes: conv [out,in,k,k], decoder level channels", () => {
    const s = new Map(vqganParamSpecs(presetConfig("lvm")).map((p) => [p.name, p.shape]));
    assertEquals(s.get("decoder.up.4.block.0.conv1.weight"), [768, 768, 3, 3]);
    assertEquals(s.get("decoder.up.3.block.0.conv1.weight"), [512, 768, 3, 3]);
    assertEquals(s.get("decoder.up.1.upsample.conv.weight"), [256, 256, 3, 3]);
    assertEquals(s.get("quant_conv.weight"), [64, 64, 1, 1]);
    assertEquals(s.get("decoder.conv_out.weight"), [3, 128, 3, 3]);
  });
});

Deno.test("parseConfig()", async (t) => {
  await t.step("the released config.json", () => {
    const c = parseConfig(LVM_JSON);
    assertEquals(c, presetConfig("lvm"));
    assertEquals(configToJson(c), LVM_JSON);
  });
  await t.step("rejects attention, pooling resamplers, decoder overrides, bad channels", () => {
    assertThrows(
      () => parseConfig({ ...LVM_JSON, attn_resolutions: [16] }),
      Error,
      "attn_resolutions",
    );
    assertThrows(
      () => parseConfig({ ...LVM_JSON, no_attn_mid_block: false }),
      Error,
      "no_attn_mid_block",
    );
    assertThrows(
      () => parseConfig({ ...LVM_JSON, resample_with_conv: false }),
      Error,
      "resample_with_conv",
    );
    assertThrows(
      () => parseConfig({ ...LVM_JSON, decoder_res_blocks: 3 }),
      Error,
      "decoder_res_blocks",
    );
    assertThrows(() => parseConfig({ ...LVM_JSON, hidden_channels: 48 }), Error, "multiple of 32");
    assertThrows(() => parseConfig({ ...LVM_JSON, resolution: 250 }), Error, "multiple of 16");
    assertThrows(() => parseConfig({ ...LVM_JSON, num_res_blocks: 0 }), Error, "num_res_blocks");
    assertThrows(() => parseConfig([1, 2]), VqganConfigError);
  });
  await t.step("absent fields take open-muse's defaults (attention on: rejected)", () => {
    const { attn_resolutions: _, ...rest } = LVM_JSON;
    assertThrows(() => parseConfig(rest), Error, "attn_resolutions");
  });
  await t.step("a diffusers VQModel config (aMUSEd-256's)", () => {
    const c = parseConfig({
      _class_name: "VQModel",
      act_fn: "silu",
      block_out_channels: [128, 256, 256, 512, 768],
      down_block_types: Array(5).fill("DownEncoderBlock2D"),
      up_block_types: Array(5).fill("UpDecoderBlock2D"),
      in_channels: 3,
      latent_channels: 64,
      layers_per_block: 2,
      lookup_from_codebook: true,
      mid_block_add_attention: false,
      norm_num_groups: 32,
      num_vq_embeddings: 8192,
      out_channels: 3,
      sample_size: 32,
      vq_embed_dim: null,
    });
    assertEquals(c, presetConfig("lvm"));
    assertThrows(
      () =>
        parseConfig({
          block_out_channels: [128, 256],
          layers_per_block: 2,
          mid_block_add_attention: true,
        }),
      Error,
      "mid_block_add_attention",
    );
  });
  await t.step("unknown preset lists the names", () => {
    assertThrows(() => presetConfig("huge"), Error, "lvm, tiny, small");
  });
});

Deno.test("toDiffusersName()", async (t) => {
  await t.step("maps as diffusers' convert_amused.py", () => {
    const m = (n: string) => toDiffusersName(n, 5);
    assertEquals(
      m("encoder.down.1.block.0.nin_shortcut.weight"),
      "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    );
    assertEquals(
      m("encoder.down.3.downsample.conv.bias"),
      "encoder.down_blocks.3.downsamplers.0.conv.bias",
    );
    assertEquals(m("encoder.mid.block_2.conv1.weight"), "encoder.mid_block.resnets.1.conv1.weight");
    assertEquals(m("encoder.norm_out.weight"), "encoder.conv_norm_out.weight");
    assertEquals(m("decoder.up.0.block.2.conv2.bias"), "decoder.up_blocks.4.resnets.2.conv2.bias");
    assertEquals(
      m("decoder.up.4.upsample.conv.weight"),
      "decoder.up_blocks.0.upsamplers.0.conv.weight",
    );
    assertEquals(m("decoder.conv_in.weight"), "decoder.conv_in.weight");
    assertEquals(m("quantize.embedding.weight"), "quantize.embedding.weight");
  });
  await t.step("one-to-one over the lvm parameters; naming detected", () => {
    const names = vqganParamSpecs(presetConfig("lvm")).map((s) => s.name);
    const mapped = names.map((n) => toDiffusersName(n, 5));
    assertEquals(new Set(mapped).size, names.length);
    assertEquals(detectNaming(names), "open-muse");
    assertEquals(detectNaming(mapped), "diffusers");
  });
});
