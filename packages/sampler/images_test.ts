import { generateImages, type ResettableDecoder } from "./images.ts";
import { Sampler } from "./logits.ts";

/**
 * A decoder whose next-token logits are a deterministic function of the whole visible context
 * (position-aware), so any difference between "continued cache" and "rebuilt cache" shows up.
 * It records every prefill so the window policy can be checked.
 */
class ContextDecoder implements ResettableDecoder {
  ctx: number[] = [];
  prefills: number[][] = [];
  constructor(readonly V: number) {}
  #logits(): Float32Array {
    let h = 2166136261;
    this.ctx.forEach((id, pos) => {
      h = Math.imul(h ^ (id + 31 * pos), 16777619) >>> 0;
    });
    const out = new Float32Array(this.V);
    out[h % this.V] = 10;
    return out;
  }
  reset() {
    this.ctx = [];
  }
  prefill(ids: readonly number[]) {
    this.prefills.push([...ids]);
    this.ctx.push(...ids);
    return Promise.resolve(this.#logits());
  }
  step(id: number) {
    this.ctx.push(id);
    return Promise.resolve(this.#logits());
  }
}

/** Reference: every token from a fresh prefill of the official window (no cache reuse at all). */
async function reference(prompt: number[][], count: number, T: number, window: number, V: number) {
  const images = prompt.map((p) => [...p]);
  const out: number[][] = [];
  const s = new Sampler({ greedy: true }, 0);
  for (let k = 0; k < count; k++) {
    const img: number[] = [];
    for (let i = 0; i < T; i++) {
      const d = new ContextDecoder(V);
      const logits = await d.prefill([...images.slice(-window).flat(), ...img]);
      img.push(s.sample(logits));
    }
    images.push(img);
    out.push(img);
  }
  return out;
}

Deno.test("generateImages()", async (t) => {
  const V = 37, T = 5;
  const prompt = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]];
  for (const window of [1, 2, 3, 4, 6, 15]) {
    await t.step(`window ${window} equals recomputing every token`, async () => {
      const d = new ContextDecoder(V);
      const got = await generateImages(d, prompt, 4, new Sampler({ greedy: true }, 0), {
        tokensPerImage: T,
        maxContextImages: window,
      });
      const want = await reference(prompt, 4, T, window, V);
      const a = JSON.stringify(got.map((x) => [...x])), b = JSON.stringify(want);
      if (a !== b) throw new Error(`window ${window}: got ${a}, expected ${b}`);
      // Rebuilds happen only when the window is full: at most 1 prefill per image, and exactly 1
      // when everything fits.
      const maxPrefills = prompt.length + 4 <= window ? 1 : 4;
      if (d.prefills.length > maxPrefills) {
        throw new Error(
          `window ${window}: ${d.prefills.length} prefills, expected <= ${maxPrefills}`,
        );
      }
      for (const p of d.prefills) {
        if (p.length > window * T) throw new Error(`prefill of ${p.length} ids exceeds the window`);
      }
    });
  }
  await t.step("bad inputs", async () => {
    const d = new ContextDecoder(V);
    const s = new Sampler({ greedy: true }, 0);
    for (
      const [p, n, o, re] of [
        [[[1, 2]], 1, { tokensPerImage: T }, /prompt image 0 has 2 codes, expected 5/],
        [[], 1, { tokensPerImage: T }, /at least one image/],
        [prompt, -1, { tokensPerImage: T }, /count/],
        [prompt, 1, { tokensPerImage: T, maxContextImages: 0 }, /maxContextImages/],
      ] as const
    ) {
      let msg = "";
      try {
        await generateImages(d, p as number[][], n, s, o);
      } catch (e) {
        msg = String(e);
      }
      if (!re.test(msg)) throw new Error(`expected ${re}, got "${msg}"`);
    }
  });
});
