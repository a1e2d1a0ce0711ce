import { assertEquals } from "@lvm/util/testing";
/**
 * The GPU path's wiring, with a fake GPU decoder that samples with the same CPU code: generateTokens
 * and generateImages take it when they may (and only then), draw one uniform per sampled token from
 * the Sampler's Rng in the CPU path's order, report every id, and choose the same ids as the CPU path.
 * (tests/../generate_gpu_test.ts checks the real GPU sampler on real models.)
 */
import { generateTokens } from "./generate.ts";
import {
  asGpuDecoder,
  type GpuSampleOptions,
  type GpuSampling,
  type GpuTokenDecoder,
} from "./gpu.ts";
import { generateImages, type ResettableDecoder } from "./images.ts";
import { Sampler, sampleTokenAt } from "./logits.ts";
import { Rng } from "@lvm/util";

/** Logits that depend on the whole context (position-aware), random enough for sampling to matter. */
class FakeGpuDecoder implements GpuTokenDecoder, ResettableDecoder {
  ctx: number[] = [];
  calls = { prefill: 0, step: 0, append: 0, chains: [] as [number, boolean, number][] };
  constructor(readonly V: number) {}
  logits(): Float32Array {
    let h = 2166136261;
    this.ctx.forEach((id, pos) => (h = Math.imul(h ^ (id + 31 * pos), 16777619) >>> 0));
    const r = new Rng(h);
    return Float32Array.from({ length: this.V }, () => (r.next() - 0.5) * 6);
  }
  reset() {
    this.ctx = [];
  }
  prefill(ids: readonly number[]) {
    this.calls.prefill++;
    this.ctx.push(...ids);
    return Promise.resolve(this.logits());
  }
  step(id: number) {
    this.calls.step++;
    this.ctx.push(id);
    return Promise.resolve(this.logits());
  }
  append(ids: readonly number[]) {
    this.calls.append++;
    this.ctx.push(...ids);
  }
  sampleOnGpu(count: number, sampling: GpuSampling, o: GpuSampleOptions) {
    this.calls.chains.push([count, o.feedLast ?? false, o.uniforms?.length ?? 0]);
    const out = new Int32Array(count);
    for (let i = 0; i < count; i++) {
      out[i] = sampleTokenAt(this.logits(), sampling, sampling.greedy ? 0 : o.uniforms![i]);
      if (i + 1 < count || o.feedLast) this.ctx.push(out[i]);
    }
    for (let f = 0; f < count; f += 3) o.onIds?.(out.slice(f, f + 3), f);
    return Promise.resolve(out);
  }
}

const OPTIONS = [
  { greedy: true, suppressFrom: 20 },
  { topK: 5, temperature: 0.8, suppressFrom: 20 },
  { topK: 0, suppressFrom: 24 },
];

Deno.test("generateTokens(): the GPU path", async (t) => {
  for (const o of OPTIONS) {
    await t.step(
      `${JSON.stringify(o)}: same ids, reports and Rng state as the CPU path`,
      async () => {
        const run = async (cpuSampling: boolean) => {
          const d = new FakeGpuDecoder(24), s = new Sampler(o, 11), seen: number[][] = [];
          const ids = await generateTokens(d, [1, 2, 3], 10, s, (id, i) => seen.push([id, i]), {
            cpuSampling,
          });
          return { ids, seen, state: s.rng.state, calls: d.calls };
        };
        const gpu = await run(false), cpu = await run(true);
        assertEquals(gpu.ids, cpu.ids);
        assertEquals(gpu.seen, cpu.seen);
        assertEquals(gpu.state, cpu.state);
        assertEquals(gpu.calls, {
          prefill: 0,
          step: 0,
          append: 1,
          chains: [[10, false, o.greedy ? 0 : 10]],
        });
        assertEquals([cpu.calls.prefill, cpu.calls.step, cpu.calls.chains.length], [1, 9, 0]);
        if (new Set(gpu.ids).size < 3) throw new Error(`ids too uniform to test: ${gpu.ids}`);
      },
    );
  }
  await t.step("top-p < 1 samples on the CPU; a decoder without the methods too", async () => {
    const d = new FakeGpuDecoder(24);
    await generateTokens(d, [1], 4, new Sampler({ topP: 0.9 }, 1));
    assertEquals([d.calls.prefill, d.calls.step, d.calls.chains.length], [1, 3, 0]);
    assertEquals(asGpuDecoder({ prefill: d.prefill, step: d.step }), null);
    assertEquals(asGpuDecoder(d), d);
  });
});

Deno.test("generateImages(): the GPU path", async (t) => {
  const T = 4, prompt = [[1, 2, 3, 4], [5, 6, 7, 8]];
  for (const window of [1, 2, 3, 15]) {
    for (const o of OPTIONS.slice(0, 2)) {
      await t.step(`window ${window}, ${JSON.stringify(o)}: same as the CPU path`, async () => {
        const run = async (cpuSampling: boolean) => {
          const d = new FakeGpuDecoder(24), s = new Sampler(o, 5), seen: number[][] = [];
          const imgs = await generateImages(d, prompt, 4, s, {
            tokensPerImage: T,
            maxContextImages: window,
            onToken: (k, i) => seen.push([k, i]),
            cpuSampling,
          });
          return { imgs: imgs.map((x) => [...x]), seen, state: s.rng.state, calls: d.calls };
        };
        const gpu = await run(false), cpu = await run(true);
        assertEquals(gpu.imgs, cpu.imgs);
        assertEquals(gpu.seen, cpu.seen);
        assertEquals(gpu.state, cpu.state);
        // One chain per image; the cache grows into the next image while the window has room.
        const grow = (k: number) => k + 1 < 4 && prompt.length + k + 1 <= window;
        const u = o.greedy ? 0 : T;
        assertEquals(gpu.calls.chains, [0, 1, 2, 3].map((k) => [T, grow(k), u]));
        assertEquals(gpu.calls.append, cpu.calls.prefill);
        assertEquals([gpu.calls.prefill, gpu.calls.step], [0, 0]);
      });
    }
  }
});
