/**
 * The VQGAN tokenizer end to end: encode and decode images/s of the `lvm` config (the released LVM
 * tokenizer's architecture, 146M parameters) at 256x256 with random weights, one image per run; and a
 * training step of the `tiny` preset. PyTorch's figures for the same cases: tools/bench_torch_tokenizer.py
 * (same name/shape strings).
 *
 * Napkin math: FLOPs count the convolutions (2 x MACs) and the code search (2 x N x K x E); GroupNorm,
 * SiLU and the lookups are memory-bound extras not counted: lvm encode 217 GFLOP, decode 477 GFLOP.
 * @module
 */
import type { Gpu, Tensor } from "@lvm/gpu";
import { randu } from "@lvm/util/testing";
import { initVqganWeights, layout, presetConfig, Vqgan, type VqganConfig } from "@lvm/tokenizer";
import { makeImage } from "@lvm/image";
import { conv2dTuning } from "@lvm/kernels";
import { makeVqganRunConfig, Trainer, VqganTrainable } from "@lvm/train";
import type { BenchCase } from "./_harness.ts";

/** FLOPs of one image's encode (encoder + quant_conv + code search) and decode (post_quant + decoder). */
export function vqganFlops(c: VqganConfig): { encode: number; decode: number } {
  const L = layout(c);
  const conv = (cin: number, cout: number, k: number, side: number) =>
    2 * cin * cout * k * k * side * side;
  const res = (cin: number, cout: number, side: number) =>
    conv(cin, cout, 3, side) + conv(cout, cout, 3, side) +
    (cin !== cout ? conv(cin, cout, 1, side) : 0);
  const R = c.resolution, G = R >> (c.channelMult.length - 1);
  const mid = c.hiddenChannels * c.channelMult[c.channelMult.length - 1];
  let enc = conv(3, c.hiddenChannels, 3, R), side = R;
  for (const lv of L.down) {
    for (const b of lv.blocks) enc += res(b.cin, b.cout, side);
    if (lv.downsample) {
      side /= 2;
      const ch = lv.blocks[lv.blocks.length - 1].cout;
      enc += conv(ch, ch, 3, side);
    }
  }
  enc += 2 * res(mid, mid, G) + conv(mid, c.zChannels, 3, G) +
    conv(c.zChannels, c.quantizedEmbedDim, 1, G);
  enc += 2 * G * G * c.numEmbeddings * c.quantizedEmbedDim;
  let dec = conv(c.quantizedEmbedDim, c.zChannels, 1, G) + conv(c.zChannels, mid, 3, G) +
    2 * res(mid, mid, G);
  side = G;
  for (const lv of L.up) {
    for (const b of lv.blocks) dec += res(b.cin, b.cout, side);
    if (lv.upsample) {
      side *= 2;
      const ch = lv.blocks[lv.blocks.length - 1].cout;
      dec += conv(ch, ch, 3, side);
    }
  }
  dec += conv(c.hiddenChannels * c.channelMult[0], 3, 3, R);
  return { encode: enc, decode: dec };
}

const LVM = presetConfig("lvm");
const F = vqganFlops(LVM);
let model: Vqgan | null = null;
const held: Tensor[] = [];

function lvmModel(gpu: Gpu): Vqgan {
  if (!model) {
    model = Vqgan.fromWeights(gpu, LVM, initVqganWeights(LVM, 1));
    model.cacheWeights(); // as a loaded tokenizer does (createTokenizer)
  }
  return model;
}

function teardown() {
  for (const t of held.splice(0)) t.release();
}

const TINY = presetConfig("tiny");
const TINY_B = 8;
/**
 * Steps per timed run of the training step, read back once at the end: the trainer's default
 * `--log-every` (the loss and the step's figures are read every logEvery steps, ~11 ms of waiting
 * each on Deno, where the CPU records the next step meanwhile otherwise).
 */
const TINY_LOG = 10;

/** Encode / decode at 256x256 (lvm), and a tiny training step. */
export const benches: BenchCase[] = [
  {
    name: "vqgan encode",
    shape: "lvm 1x3x256x256",
    items: 1,
    unit: "images",
    flops: F.encode,
    note: `${
      (F.encode / 1e9).toFixed(0)
    } GFLOP/image (convs + code search), random weights, f32, staged weights kept`,
    reps: 2,
    setup(gpu) {
      const m = lvmModel(gpu);
      const x = gpu.upload(randu(3 * 256 * 256, 2, 0, 1), [1, 3, 256, 256]);
      held.push(x);
      return () => m.encodeIds(x).release();
    },
    teardown,
  },
  {
    name: "vqgan decode",
    shape: "lvm 1x256 ids",
    items: 1,
    unit: "images",
    flops: F.decode,
    note: `${
      (F.decode / 1e9).toFixed(0)
    } GFLOP/image (convs), random weights, f32, staged weights kept, clamped output`,
    reps: 2,
    setup(gpu) {
      const m = lvmModel(gpu);
      const ids = gpu.upload(Int32Array.from({ length: 256 }, (_, i) => (i * 2654435761) % 8192), [
        256,
      ], "i32");
      held.push(ids);
      return () => m.decodeIds(ids, 1).release();
    },
    teardown() {
      teardown();
      model?.release();
      model = null;
    },
  },
  trainStepCase(),
  // The gpu kind's A/B of conv2dTuning.gemmBackward: the same step with the convolutions' backward
  // on the texture kernels (lavapipe's path) instead of its default implicit GEMMs.
  trainStepCase({ textureBackward: true }),
];

let teardownTrain: (() => void) | undefined;
let trainDispatches = 0;

/** The tiny training step; `textureBackward` sets conv2dTuning.gemmBackward false for its runs. */
function trainStepCase(o: { textureBackward?: boolean } = {}): BenchCase {
  return {
    name: o.textureBackward ? "vqgan train step[texture backward]" : "vqgan train step",
    shape: `tiny b${TINY_B} 32x32`,
    per: TINY_LOG,
    items: TINY_B * TINY_LOG,
    unit: "images",
    flops: TINY_LOG * 3 * TINY_B * (vqganFlops(TINY).encode + vqganFlops(TINY).decode),
    note: "forward + backward (~3x forward FLOPs) + clip + AdamW (@lvm/train's Trainer), " +
      `${TINY_LOG} steps per run, read back once (the trainer's default --log-every)` +
      (o.textureBackward ? "; conv backward on the texture kernels" : ""),
    reps: 3,
    ...(o.textureBackward ? { kinds: ["gpu" as const] } : {}),
    setup(gpu) {
      const m = Vqgan.fromWeights(gpu, TINY, initVqganWeights(TINY, 1));
      const cfg = makeVqganRunConfig({
        config: TINY,
        steps: 1_000_000,
        batch: TINY_B,
        logEvery: TINY_LOG,
      });
      const frames = Array.from(
        { length: TINY_B },
        (_, i) => makeImage(32, 32, randu(3 * 32 * 32, 3 + i, 0, 1)),
      );
      const run = new VqganTrainable(m, cfg, { train: [{ name: "noise", frames }], eval: [] });
      const trainer = new Trainer(gpu, run, cfg);
      teardownTrain = () => trainer.release(); // the model too
      return async () => {
        const d0 = gpu.dispatchCount;
        const before = conv2dTuning.gemmBackward;
        if (o.textureBackward) conv2dTuning.gemmBackward = false;
        try {
          for (let i = 0; i < TINY_LOG; i++) await trainer.trainStep();
          await trainer.flush();
        } finally {
          conv2dTuning.gemmBackward = before;
        }
        trainDispatches = (gpu.dispatchCount - d0) / TINY_LOG;
      };
    },
    teardown() {
      teardown();
      teardownTrain?.();
    },
    extra: () => ({ dispatches_per_step: trainDispatches }),
  };
}
