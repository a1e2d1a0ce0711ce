/**
 * DecodeSession.memoryBytes: the KV cache of every layer (textures or pooled buffers), the packed
 * weight textures when the session packs, and the token-id tensor, against sizes computed here.
 */
import { attentionTuning } from "@lvm/kernels";
import { getGpu } from "@lvm/gpu";
import { assertEquals } from "./_assert.ts";
import { makeConfig } from "./config.ts";
import { DecodeSession } from "./decode.ts";
import { Llama } from "./model.ts";

Deno.test("DecodeSession.memoryBytes counts the cache, packed weights and the id", async (t) => {
  const gpu = await getGpu();
  // headDim 8: a multiple of 4, so a texture row holds the keys without padding.
  const c = makeConfig({ hidden: 16, layers: 3, heads: 2, kvHeads: 1, ffn: 24, vocab: 30 });
  const model = Llama.init(gpu, c, { seed: 1 });
  const maxTokens = 13;
  const kv = 2 * c.layers * maxTokens * c.kvHeads * c.headDim * 4; // K and V, f32
  const id = 4; // (1) i32

  await t.step("buffer-layout cache, no packing: all pooled", () => {
    const before = attentionTuning.variant;
    attentionTuning.variant = "buffer";
    try {
      const s = new DecodeSession(model, { maxTokens, packWeights: false });
      assertEquals(s.memoryBytes, { textures: 0, buffers: kv + id });
      s.release();
    } finally {
      attentionTuning.variant = before;
    }
  });

  if (gpu.kind === "cpu") {
    await t.step("texture cache and packed weights (CPU adapter)", () => {
      const before = attentionTuning.variant;
      attentionTuning.variant = "tex";
      try {
        const plain = new DecodeSession(model, { maxTokens, packWeights: false });
        assertEquals(plain.memoryBytes, { textures: kv, buffers: id });
        plain.release();
        const packed = new DecodeSession(model, { maxTokens, packWeights: true });
        const { textures, buffers } = packed.memoryBytes;
        // Every matrix is packed once, in 16-byte texels with padding: at least its f32 bytes.
        const matrices = [...model.params.values()].filter((p) => p.shape.length === 2)
          .reduce((n, p) => n + p.byteLength, 0);
        assertEquals(buffers, id);
        if (!(textures >= kv + matrices && textures <= kv + 4 * matrices)) {
          throw new Error(`packed textures ${textures} B, expected ${kv} + ~${matrices}`);
        }
        packed.release();
      } finally {
        attentionTuning.variant = before;
      }
    });
  }
  model.release();
});
