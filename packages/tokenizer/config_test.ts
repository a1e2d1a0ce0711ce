import { deepStrictEqual, equal, throws } from "node:assert/strict";
import {
  configToJson,
  geometry,
  paramCount,
  paramSpecs,
  parseConfig,
  presetConfig,
  PRESETS,
  VqganConfigError,
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
    equal(paramCount(presetConfig("lvm")), 146_244_675);
  });
  await t.step("encoder 58.7M / decoder 87.0M split of the reference", () => {
    const specs = paramSpecs(presetConfig("lvm"));
    const n = (p: string) =>
      specs.filter((s) => s.name.startsWith(p)).reduce(
        (a, s) => a + s.shape.reduce((x, y) => x * y, 1),
        0,
      );
    equal(Math.round(n("encoder.") / 1e5) / 10, 58.7);
    equal(Math.round(n("decoder.") / 1e5) / 10, 87.0);
  });
  await t.step("every preset validates; grids as documented", () => {
    deepStrictEqual(
      Object.fromEntries(
        Object.keys(PRESETS).map((k) => [k, geometry(presetConfig(k)).tokensPerImage]),
      ),
      { lvm: 256, tiny: 64, small: 64 },
    );
  });
});

Deno.test("paramSpecs()", async (t) => {
  await t.step("open-muse names, decoder up.4 runs first and has no upsample at up.0", () => {
    const names = new Set(paramSpecs(presetConfig("lvm")).map((s) => s.name));
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
    ) equal(names.has(n), true, n);
    equal(names.has("encoder.down.4.downsample.conv.weight"), false);
    equal(names.has("decoder.up.0.upsample.conv.weight"), false);
    equal(names.has("encoder.down.0.block.0.nin_shortcut.weight"), false);
  });
  await t.step("shapes: conv [out,in,k,k], decoder level channels", () => {
    const s = new Map(paramSpecs(presetConfig("lvm")).map((p) => [p.name, p.shape]));
    deepStrictEqual(s.get("decoder.up.4.block.0.conv1.weight"), [768, 768, 3, 3]);
    deepStrictEqual(s.get("decoder.up.3.block.0.conv1.weight"), [512, 768, 3, 3]);
    deepStrictEqual(s.get("decoder.up.1.upsample.conv.weight"), [256, 256, 3, 3]);
    deepStrictEqual(s.get("quant_conv.weight"), [64, 64, 1, 1]);
    deepStrictEqual(s.get("decoder.conv_out.weight"), [3, 128, 3, 3]);
  });
});

Deno.test("parseConfig()", async (t) => {
  await t.step("the released config.json", () => {
    const c = parseConfig(LVM_JSON);
    deepStrictEqual(c, presetConfig("lvm"));
    deepStrictEqual(configToJson(c), LVM_JSON);
  });
  await t.step("rejects attention, pooling resamplers, decoder overrides, bad channels", () => {
    throws(
      () => parseConfig({ ...LVM_JSON, attn_resolutions: [16] }),
      /attn_resolutions.*not supported/,
    );
    throws(() => parseConfig({ ...LVM_JSON, no_attn_mid_block: false }), /no_attn_mid_block/);
    throws(() => parseConfig({ ...LVM_JSON, resample_with_conv: false }), /resample_with_conv/);
    throws(() => parseConfig({ ...LVM_JSON, decoder_res_blocks: 3 }), /decoder_res_blocks/);
    throws(() => parseConfig({ ...LVM_JSON, hidden_channels: 48 }), /multiple of 32/);
    throws(() => parseConfig({ ...LVM_JSON, resolution: 250 }), /multiple of 16/);
    throws(() => parseConfig({ ...LVM_JSON, num_res_blocks: 0 }), /num_res_blocks.*>= 1/);
    throws(() => parseConfig([1, 2]), VqganConfigError);
  });
  await t.step("absent fields take open-muse's defaults (attention on: rejected)", () => {
    const { attn_resolutions: _, ...rest } = LVM_JSON;
    throws(() => parseConfig(rest), /attn_resolutions/);
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
    deepStrictEqual(c, presetConfig("lvm"));
    throws(
      () =>
        parseConfig({
          block_out_channels: [128, 256],
          layers_per_block: 2,
          mid_block_add_attention: true,
        }),
      /mid_block_add_attention/,
    );
  });
  await t.step("unknown preset lists the names", () => {
    throws(() => presetConfig("huge"), /lvm, tiny, small/);
  });
});

Deno.test("toDiffusersName()", async (t) => {
  await t.step("maps as diffusers' convert_amused.py", () => {
    const m = (n: string) => toDiffusersName(n, 5);
    equal(
      m("encoder.down.1.block.0.nin_shortcut.weight"),
      "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
    );
    equal(
      m("encoder.down.3.downsample.conv.bias"),
      "encoder.down_blocks.3.downsamplers.0.conv.bias",
    );
    equal(m("encoder.mid.block_2.conv1.weight"), "encoder.mid_block.resnets.1.conv1.weight");
    equal(m("encoder.norm_out.weight"), "encoder.conv_norm_out.weight");
    equal(m("decoder.up.0.block.2.conv2.bias"), "decoder.up_blocks.4.resnets.2.conv2.bias");
    equal(m("decoder.up.4.upsample.conv.weight"), "decoder.up_blocks.0.upsamplers.0.conv.weight");
    equal(m("decoder.conv_in.weight"), "decoder.conv_in.weight");
    equal(m("quantize.embedding.weight"), "quantize.embedding.weight");
  });
  await t.step("one-to-one over the lvm parameters; naming detected", () => {
    const names = paramSpecs(presetConfig("lvm")).map((s) => s.name);
    const mapped = names.map((n) => toDiffusersName(n, 5));
    equal(new Set(mapped).size, names.length);
    equal(detectNaming(names), "open-muse");
    equal(detectNaming(mapped), "diffusers");
  });
});
