/**
 * The VQGAN's configuration: open-muse `VQGANModel`'s `config.json` fields, their checks, the
 * presets, and the parameter layout (names and shapes in open-muse's state-dict order).
 *
 * Supported subset of open-muse: no attention blocks (`attn_resolutions` empty,
 * `no_attn_mid_block` true), `resample_with_conv` true, no decoder-only overrides
 * (`decoder_res_blocks`, `extra_mid_res_blocks`, `decoder_hidden_channels`, `decoder_channel_mult`
 * null). That is the released LVM tokenizer. GroupNorm has 32 groups, so every channel count must be
 * a multiple of 32.
 * @module
 */

/** A VQGAN configuration (open-muse fields, camelCase). */
export interface VqganConfig {
  /** Input side in pixels (256 for LVM); images are squash-resized to it. */
  resolution: number;
  /** Image channels (3). */
  numChannels: number;
  /** Channels of the first level (128). */
  hiddenChannels: number;
  /** Channel multiplier per level ([1,2,2,4,6]); levels - 1 downsamples. */
  channelMult: number[];
  /** Res blocks per encoder level (2); decoder levels have one more. */
  numResBlocks: number;
  /** Resolutions with attention blocks: must be empty (attention is not supported). */
  attnResolutions: number[];
  /** Whether the mid blocks skip attention: must be true. */
  noAttnMidBlock: boolean;
  /** Encoder output / decoder input channels (64). */
  zChannels: number;
  /** Codebook size (8192). */
  numEmbeddings: number;
  /** Code vector length (64). */
  quantizedEmbedDim: number;
  /** Dropout in res blocks (0; ignored: inference has none and training does not use it). */
  dropout: number;
  /** Conv resampling: must be true. */
  resampleWithConv: boolean;
  /** Commitment cost beta of the training loss (0.25). */
  commitmentCost: number;
}

/** A config.json that is not a supported VQGAN configuration. */
export class VqganConfigError extends Error {
  override name = "VqganConfigError";
}

/** GroupNorm groups (fixed in open-muse). */
export const GROUPS = 32;
/** GroupNorm epsilon (fixed in open-muse). */
export const NORM_EPS = 1e-6;

/** The named presets: `lvm` is the released tokenizer; the others train on a CPU. */
export const VQGAN_PRESETS: Readonly<Record<string, Readonly<VqganConfig>>> = Object.freeze({
  /** The LVM / aMUSEd-256 VQGAN: 256x256 -> 16x16 = 256 tokens, 8192 codes, 146,244,675 params. */
  lvm: preset({
    resolution: 256,
    hiddenChannels: 128,
    channelMult: [1, 2, 2, 4, 6],
    numResBlocks: 2,
    zChannels: 64,
    numEmbeddings: 8192,
    quantizedEmbedDim: 64,
  }),
  /**
   * 32x32 -> 8x8 = 64 tokens, 512 codes, 2.85M params; trains on a CPU. The first level has 64
   * channels (2 per GroupNorm group): with 32 (1 per group) the decoder's last norm is an instance
   * norm that erases each image's mean colour, and training stalls at grey blobs (measured).
   */
  tiny: preset({
    resolution: 32,
    hiddenChannels: 64,
    channelMult: [1, 1, 2],
    numResBlocks: 1,
    zChannels: 32,
    numEmbeddings: 512,
    quantizedEmbedDim: 32,
  }),
  /** 64x64 -> 8x8 = 64 tokens, 1024 codes, 4.16M params. */
  small: preset({
    resolution: 64,
    hiddenChannels: 64,
    channelMult: [1, 1, 2, 2],
    numResBlocks: 1,
    zChannels: 64,
    numEmbeddings: 1024,
    quantizedEmbedDim: 64,
  }),
});

function preset(p: Partial<VqganConfig>): Readonly<VqganConfig> {
  return Object.freeze(
    validateVqganConfig({
      resolution: 256,
      numChannels: 3,
      hiddenChannels: 128,
      channelMult: [1, 2, 2, 4, 6],
      numResBlocks: 2,
      attnResolutions: [],
      noAttnMidBlock: true,
      zChannels: 64,
      numEmbeddings: 8192,
      quantizedEmbedDim: 64,
      dropout: 0,
      resampleWithConv: true,
      commitmentCost: 0.25,
      ...p,
    }),
  );
}

/** A preset by name; the error lists the names. */
export function presetConfig(name: string): VqganConfig {
  const p = VQGAN_PRESETS[name];
  if (!p) {
    throw new VqganConfigError(
      `unknown tokenizer preset "${name}": expected one of ${
        Object.keys(VQGAN_PRESETS).join(", ")
      }`,
    );
  }
  return structuredClone(p) as VqganConfig;
}

function int(where: string, field: string, v: unknown, min = 1): number {
  if (typeof v !== "number" || !Number.isInteger(v) || v < min) {
    throw new VqganConfigError(
      `${where}: "${field}" must be an integer >= ${min}, found ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/** Checks a config; returns it. Throws {@link VqganConfigError} naming the field. */
export function validateVqganConfig(c: VqganConfig, where = "config"): VqganConfig {
  int(where, "resolution", c.resolution);
  if (int(where, "num_channels", c.numChannels) !== 3) {
    throw new VqganConfigError(`${where}: "num_channels" must be 3 (RGB), found ${c.numChannels}`);
  }
  int(where, "hidden_channels", c.hiddenChannels);
  if (!Array.isArray(c.channelMult) || c.channelMult.length < 1) {
    throw new VqganConfigError(`${where}: "channel_mult" must be a non-empty list of integers`);
  }
  c.channelMult.forEach((m, i) => int(where, `channel_mult[${i}]`, m));
  int(where, "num_res_blocks", c.numResBlocks);
  for (
    const [f, v] of [
      ["hidden_channels", c.hiddenChannels],
      ...c.channelMult.map((m, i) => [`hidden_channels*channel_mult[${i}]`, c.hiddenChannels * m]),
    ] as [string, number][]
  ) {
    if (v % GROUPS) {
      throw new VqganConfigError(
        `${where}: ${f} = ${v} must be a multiple of ${GROUPS} (GroupNorm uses ${GROUPS} groups)`,
      );
    }
  }
  const down = 2 ** (c.channelMult.length - 1);
  if (c.resolution % down) {
    throw new VqganConfigError(
      `${where}: "resolution" ${c.resolution} must be a multiple of ${down} (${
        c.channelMult.length - 1
      } downsamples)`,
    );
  }
  if (!Array.isArray(c.attnResolutions) || c.attnResolutions.length) {
    throw new VqganConfigError(
      `${where}: "attn_resolutions" must be [] (attention blocks are not supported), found ${
        JSON.stringify(c.attnResolutions)
      }`,
    );
  }
  if (c.noAttnMidBlock !== true) {
    throw new VqganConfigError(
      `${where}: "no_attn_mid_block" must be true (mid-block attention is not supported)`,
    );
  }
  if (c.resampleWithConv !== true) {
    throw new VqganConfigError(
      `${where}: "resample_with_conv" must be true (pooling resamplers are not supported)`,
    );
  }
  int(where, "z_channels", c.zChannels);
  int(where, "num_embeddings", c.numEmbeddings);
  int(where, "quantized_embed_dim", c.quantizedEmbedDim);
  if (typeof c.dropout !== "number" || !(c.dropout >= 0 && c.dropout < 1)) {
    throw new VqganConfigError(`${where}: "dropout" must be a number in [0, 1)`);
  }
  if (typeof c.commitmentCost !== "number" || !(c.commitmentCost >= 0)) {
    throw new VqganConfigError(`${where}: "commitment_cost" must be a number >= 0`);
  }
  return c;
}

/** open-muse field -> our field. */
const FIELDS: [string, keyof VqganConfig][] = [
  ["resolution", "resolution"],
  ["num_channels", "numChannels"],
  ["hidden_channels", "hiddenChannels"],
  ["channel_mult", "channelMult"],
  ["num_res_blocks", "numResBlocks"],
  ["attn_resolutions", "attnResolutions"],
  ["no_attn_mid_block", "noAttnMidBlock"],
  ["z_channels", "zChannels"],
  ["num_embeddings", "numEmbeddings"],
  ["quantized_embed_dim", "quantizedEmbedDim"],
  ["dropout", "dropout"],
  ["resample_with_conv", "resampleWithConv"],
  ["commitment_cost", "commitmentCost"],
];

/** open-muse defaults (VQGANModel.__init__) for absent fields. */
const DEFAULTS: Record<string, unknown> = {
  resolution: 256,
  num_channels: 3,
  hidden_channels: 128,
  channel_mult: [1, 1, 2, 2, 4],
  num_res_blocks: 2,
  attn_resolutions: [16],
  no_attn_mid_block: false,
  z_channels: 256,
  num_embeddings: 1024,
  quantized_embed_dim: 256,
  dropout: 0,
  resample_with_conv: true,
  commitment_cost: 0.25,
};

const UNSUPPORTED = [
  "decoder_res_blocks",
  "extra_mid_res_blocks",
  "decoder_hidden_channels",
  "decoder_channel_mult",
];

/**
 * Parses a config.json object: open-muse `VQGANModel` fields (absent ones take open-muse's
 * defaults, as its `from_pretrained` does), or a diffusers `VQModel` config (`block_out_channels`,
 * `layers_per_block`, `latent_channels`, `num_vq_embeddings`, `vq_embed_dim`), whose input
 * resolution is not recorded: `resolution` (default 16 tokens per side, i.e. 2^(levels-1) * 16).
 */
export function parseConfig(
  json: unknown,
  where = "config.json",
  resolution?: number,
): VqganConfig {
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new VqganConfigError(`${where}: expected a JSON object`);
  }
  const o = json as Record<string, unknown>;
  if ("block_out_channels" in o || o._class_name === "VQModel") {
    return fromDiffusers(o, where, resolution);
  }
  for (const k of UNSUPPORTED) {
    if (o[k] !== undefined && o[k] !== null) {
      throw new VqganConfigError(
        `${where}: "${k}" is not supported (found ${JSON.stringify(o[k])})`,
      );
    }
  }
  const c = {} as Record<string, unknown>;
  for (const [k, f] of FIELDS) c[f] = o[k] === undefined ? structuredClone(DEFAULTS[k]) : o[k];
  if (resolution !== undefined) c.resolution = resolution;
  return validateVqganConfig(c as unknown as VqganConfig, where);
}

function fromDiffusers(
  o: Record<string, unknown>,
  where: string,
  resolution?: number,
): VqganConfig {
  const boc = o.block_out_channels;
  if (!Array.isArray(boc) || !boc.length || !boc.every((v) => Number.isInteger(v) && v > 0)) {
    throw new VqganConfigError(
      `${where}: "block_out_channels" must be a list of positive integers`,
    );
  }
  const hidden = boc[0] as number;
  const mult = (boc as number[]).map((v) => v / hidden);
  if (!mult.every(Number.isInteger)) {
    throw new VqganConfigError(
      `${where}: "block_out_channels" [${boc}] must be multiples of the first entry`,
    );
  }
  const check = (k: string, ok: (v: unknown) => boolean, want: string) => {
    if (o[k] !== undefined && o[k] !== null && !ok(o[k])) {
      throw new VqganConfigError(`${where}: "${k}" must be ${want}, found ${JSON.stringify(o[k])}`);
    }
  };
  check("norm_num_groups", (v) => v === GROUPS, `${GROUPS}`);
  check("act_fn", (v) => v === "silu", `"silu"`);
  check("mid_block_add_attention", (v) => v === false, "false (attention is not supported)");
  check("norm_type", (v) => v === "group", `"group"`);
  for (const k of ["down_block_types", "up_block_types"]) {
    const want = k === "down_block_types" ? "DownEncoderBlock2D" : "UpDecoderBlock2D";
    check(k, (v) => Array.isArray(v) && v.every((t) => t === want), `a list of "${want}"`);
  }
  if (o.mid_block_add_attention === undefined) {
    throw new VqganConfigError(
      `${where}: diffusers VQModel config without "mid_block_add_attention": false has attention in its mid block, which is not supported`,
    );
  }
  const z = (o.latent_channels ?? 3) as number;
  const c: VqganConfig = {
    resolution: resolution ?? 2 ** (mult.length - 1) * 16,
    numChannels: (o.in_channels ?? 3) as number,
    hiddenChannels: hidden,
    channelMult: mult,
    numResBlocks: (o.layers_per_block ?? 1) as number,
    attnResolutions: [],
    noAttnMidBlock: true,
    zChannels: z,
    numEmbeddings: (o.num_vq_embeddings ?? 256) as number,
    quantizedEmbedDim: (o.vq_embed_dim ?? z) as number,
    dropout: 0,
    resampleWithConv: true,
    commitmentCost: 0.25,
  };
  return validateVqganConfig(c, where);
}

/** The open-muse config.json object of a config (what our training writes). */
export function configToJson(c: VqganConfig): Record<string, unknown> {
  const o: Record<string, unknown> = { _class_name: "VQGANModel" };
  for (const [k, f] of FIELDS) o[k] = structuredClone(c[f]);
  return o;
}

/** Derived sizes of a config. */
export interface VqganGeometry {
  /** Levels (channel_mult length). */
  levels: number;
  /** Latent grid side: resolution / 2^(levels-1). */
  grid: number;
  /** Tokens per image (grid^2). */
  tokensPerImage: number;
  /** Channels at the bottleneck (hidden * channel_mult[-1]). */
  midChannels: number;
}

/** Levels, grid side, tokens per image and mid channels of a config. */
export function geometry(c: VqganConfig): VqganGeometry {
  const levels = c.channelMult.length;
  const grid = c.resolution / 2 ** (levels - 1);
  return {
    levels,
    grid,
    tokensPerImage: grid * grid,
    midChannels: c.hiddenChannels * c.channelMult[levels - 1],
  };
}

/** One parameter: open-muse name and shape. */
export interface VqganParamSpec {
  name: string;
  shape: number[];
}

/** A res block's channels, as the model walks it. */
export interface ResBlockSpec {
  /** open-muse prefix, e.g. `encoder.down.1.block.0`. */
  name: string;
  cin: number;
  cout: number;
}

/** The order of the modules the forward pass runs (encoder then decoder). */
export interface VqganLayout {
  /** Encoder levels: res blocks then (except the last) a downsample conv name. */
  down: { blocks: ResBlockSpec[]; downsample: string | null }[];
  encMid: ResBlockSpec[];
  decMid: ResBlockSpec[];
  /** Decoder levels in run order (up.{N-1} first): res blocks then an upsample conv name. */
  up: { blocks: ResBlockSpec[]; upsample: string | null }[];
}

/** The modules of a config in run order. */
export function layout(c: VqganConfig): VqganLayout {
  const n = c.channelMult.length, hid = c.hiddenChannels, mult = c.channelMult;
  const inMult = [1, ...mult];
  const down: VqganLayout["down"] = [];
  for (let i = 0; i < n; i++) {
    let cin = hid * inMult[i];
    const cout = hid * mult[i];
    const blocks: ResBlockSpec[] = [];
    for (let j = 0; j < c.numResBlocks; j++) {
      blocks.push({ name: `encoder.down.${i}.block.${j}`, cin, cout });
      cin = cout;
    }
    down.push({ blocks, downsample: i !== n - 1 ? `encoder.down.${i}.downsample.conv` : null });
  }
  const mid = hid * mult[n - 1];
  const midBlocks = (p: string) =>
    [1, 2].map((k) => ({ name: `${p}.mid.block_${k}`, cin: mid, cout: mid }));
  const up: VqganLayout["up"] = [];
  for (let i = n - 1; i >= 0; i--) {
    let cin = i === n - 1 ? hid * mult[n - 1] : hid * mult[i + 1];
    const cout = hid * mult[i];
    const blocks: ResBlockSpec[] = [];
    for (let j = 0; j < c.numResBlocks + 1; j++) {
      blocks.push({ name: `decoder.up.${i}.block.${j}`, cin, cout });
      cin = cout;
    }
    up.push({ blocks, upsample: i !== 0 ? `decoder.up.${i}.upsample.conv` : null });
  }
  return { down, encMid: midBlocks("encoder"), decMid: midBlocks("decoder"), up };
}

/** Every parameter (open-muse names, shapes), in the order of open-muse's `state_dict()`. */
export function vqganParamSpecs(c: VqganConfig): VqganParamSpec[] {
  const out: VqganParamSpec[] = [];
  const conv = (name: string, cout: number, cin: number, k: number) => {
    out.push({ name: `${name}.weight`, shape: [cout, cin, k, k] }, {
      name: `${name}.bias`,
      shape: [cout],
    });
  };
  const norm = (name: string, ch: number) => {
    out.push({ name: `${name}.weight`, shape: [ch] }, { name: `${name}.bias`, shape: [ch] });
  };
  const res = ({ name, cin, cout }: ResBlockSpec) => {
    norm(`${name}.norm1`, cin);
    conv(`${name}.conv1`, cout, cin, 3);
    norm(`${name}.norm2`, cout);
    conv(`${name}.conv2`, cout, cout, 3);
    if (cin !== cout) conv(`${name}.nin_shortcut`, cout, cin, 1);
  };
  const L = layout(c);
  const { midChannels: mid } = geometry(c);
  const hid0 = c.hiddenChannels * c.channelMult[0];
  conv("encoder.conv_in", c.hiddenChannels, c.numChannels, 3);
  for (const lv of L.down) {
    lv.blocks.forEach(res);
    if (lv.downsample) {
      conv(
        lv.downsample,
        lv.blocks[lv.blocks.length - 1].cout,
        lv.blocks[lv.blocks.length - 1].cout,
        3,
      );
    }
  }
  L.encMid.forEach(res);
  norm("encoder.norm_out", mid);
  conv("encoder.conv_out", c.zChannels, mid, 3);
  conv("decoder.conv_in", mid, c.zChannels, 3);
  L.decMid.forEach(res);
  for (const lv of [...L.up].reverse()) {
    lv.blocks.forEach(res);
    if (lv.upsample) conv(lv.upsample, lv.blocks[0].cout, lv.blocks[0].cout, 3);
  }
  norm("decoder.norm_out", hid0);
  conv("decoder.conv_out", c.numChannels, hid0, 3);
  out.push({ name: "quantize.embedding.weight", shape: [c.numEmbeddings, c.quantizedEmbedDim] });
  conv("quant_conv", c.quantizedEmbedDim, c.zChannels, 1);
  conv("post_quant_conv", c.zChannels, c.quantizedEmbedDim, 1);
  return out;
}

/** Number of parameters of a config (146,244,675 for `lvm`). */
export function vqganParamCount(c: VqganConfig): number {
  return vqganParamSpecs(c).reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
}
