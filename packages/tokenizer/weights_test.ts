import { createHash } from "node:crypto";
import { assertEquals } from "@lvm/util/testing";
import { Sha256 } from "./_sha256.ts";
import { presetConfig } from "./config.ts";
import { initVqganWeights } from "./model.ts";
import { tokenizerId } from "./weights.ts";

Deno.test("Sha256 == node:crypto's sha256, across block boundaries and in pieces", () => {
  for (const n of [0, 1, 55, 56, 63, 64, 65, 119, 120, 1000]) {
    const d = Uint8Array.from({ length: n }, (_, i) => (i * 31 + 7) & 255);
    const ours = new Sha256().update("ab").update(d).update(d.subarray(0, n >> 1)).digestHex();
    const ref = createHash("sha256").update("ab").update(d).update(d.subarray(0, n >> 1))
      .digest("hex");
    assertEquals(ours, ref, `n=${n}`);
  }
});

Deno.test("tokenizerId(): the same id with the built-in and a native SHA-256", () => {
  const config = presetConfig("tiny");
  const weights = initVqganWeights(config, 3);
  const h = createHash("sha256");
  const native = tokenizerId(config, weights, {
    update: (d) => h.update(d),
    digestHex: () => h.digest("hex"),
  });
  assertEquals(tokenizerId(config, weights), native);
  assertEquals(/^vqgan-[0-9a-f]{32}$/.test(native), true);
});
