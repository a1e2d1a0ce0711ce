/**
 * The real GPU sampler on real models (@lvm/transformer's DecodeSession; a test-only import, the
 * package itself stays free of it): generateTokens and generateImages give the same ids and leave the
 * Sampler in the same state on the GPU path as on the CPU path, greedy and seeded top-k, on the
 * PyTorch fixture model and on a random model with LVM's 8292-id vocabulary, including the case where
 * the image window slides; and the GPU path reads back far less often.
 */
import { assertEquals as deepStrictEqual } from "@lvm/util/testing";
import { getGpu } from "@lvm/gpu";
import { DecodeSession, type Llama, Llama as LlamaModel, makeConfig } from "@lvm/transformer";
import { loadLlama } from "@lvm/transformer/fs";
import { generateTokens } from "./generate.ts";
import type { GpuTokenDecoder } from "./gpu.ts";
import { generateImages, type ResettableDecoder } from "./images.ts";
import { Sampler, type SamplingOptions } from "./logits.ts";

const FIXTURE = new URL("../../tests/fixtures/transformer/mha", import.meta.url).pathname;

async function models(): Promise<[string, Llama][]> {
  const gpu = await getGpu();
  const random = LlamaModel.init(gpu, makeConfig({ hidden: 32, layers: 2, heads: 2, ffn: 64 }), {
    seed: 3,
  });
  return [["fixture mha (V 100)", await loadLlama(gpu, FIXTURE)], ["random (V 8292)", random]];
}

Deno.test("GPU sampling == CPU sampling on real models", async (t) => {
  const gpu = await getGpu();
  for (const [name, model] of await models()) {
    const codes = model.config.imageCodes;
    const options: SamplingOptions[] = [
      { greedy: true, suppressFrom: codes },
      { topK: 50, suppressFrom: codes },
      { topK: 7, temperature: 0.6, suppressFrom: codes },
    ];
    const session = (maxTokens: number): GpuTokenDecoder & ResettableDecoder =>
      new DecodeSession(model, { maxTokens });
    for (const o of options) {
      await t.step(`${name}, generateTokens ${JSON.stringify(o)}`, async () => {
        const N = 40; // crosses a 32-id read-back chunk
        const run = async (cpuSampling: boolean) => {
          const s = new Sampler(o, 7), d = session(5 + N), seen: number[] = [];
          const r0 = gpu.readCount;
          const ids = await generateTokens(d, [3, 1, 4, 1, 5], N, s, (_, i) => seen.push(i), {
            cpuSampling,
          });
          const reads = gpu.readCount - r0;
          (d as DecodeSession).release();
          return { ids, seen, state: s.rng.state, reads };
        };
        const g = await run(false), c = await run(true);
        deepStrictEqual(g.ids, c.ids);
        deepStrictEqual(g.seen, c.seen);
        deepStrictEqual(g.state, c.state);
        deepStrictEqual([g.reads, c.reads], [2, N], "reads: GPU path per 32 ids, CPU path per id");
        if (!o.greedy && new Set(g.ids).size < 5) throw new Error(`too few distinct ids: ${g.ids}`);
      });
    }
    for (const o of options.slice(0, 2)) {
      for (const window of [3, 15]) {
        await t.step(`${name}, generateImages window ${window} ${JSON.stringify(o)}`, async () => {
          const T = 6, prompt = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]];
          const run = async (cpuSampling: boolean) => {
            const s = new Sampler(o, 9), d = session(Math.min(window, 6) * T + T);
            const r0 = gpu.readCount;
            const imgs = await generateImages(d, prompt, 4, s, {
              tokensPerImage: T,
              maxContextImages: window,
              cpuSampling,
            });
            (d as DecodeSession).release();
            return { imgs: imgs.map((x) => [...x]), state: s.rng.state, reads: gpu.readCount - r0 };
          };
          const g = await run(false), c = await run(true);
          deepStrictEqual([g.imgs, g.state], [c.imgs, c.state]);
          deepStrictEqual(g.reads, 4, "GPU path: one read of ids per image");
          if (!(c.reads >= 4 * T)) throw new Error(`CPU path read ${c.reads} times`);
        });
      }
    }
    model.release();
  }
});
