/**
 * `train eval` on a checkpoint whose weights are NaN: an error naming the checkpoint (exit 1), not
 * a JSON object of nulls. (The happy path is tested with `train model` in model_test.ts.)
 */
import { assert, assertEquals } from "@lvm/util/testing";
import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import { writeTestDataset } from "@lvm/sentence/testing";
import { Llama, makeConfig } from "@lvm/transformer";
import { saveLlama } from "@lvm/transformer/fs";
import { main } from "./main.ts";

Deno.test("train eval: NaN weights fail naming the checkpoint", async () => {
  const root = await Deno.makeTempDir({ prefix: "lvm-eval-nan-" });
  const { log, error } = console;
  const out: string[] = [], err: string[] = [];
  try {
    const data = join(root, "data"), model = join(root, "model");
    const sentences = Array.from({ length: 6 }, (_, i) => [1, 2, 3, 4 + i, 5, 6]);
    await writeTestDataset(data, sentences, 3, 40, 40);
    const gpu = await getGpu();
    const llama = Llama.init(
      gpu,
      makeConfig({ hidden: 16, layers: 1, heads: 2, ffn: 32, vocab: 40, maxPositions: 64 }),
    );
    llama.setParam("model.embed_tokens.weight", new Float32Array(40 * 16).fill(NaN));
    await saveLlama(llama, model);
    llama.release();
    console.log = (...a: unknown[]) => out.push(a.join(" "));
    console.error = (...a: unknown[]) => err.push(a.join(" "));
    const code = await main(["eval", "--model", model, "--data", data, "--split", "all", "--json"]);
    Object.assign(console, { log, error });
    assertEquals(code, 1, err.join("\n"));
    const msg = err.join("\n");
    assert(msg.includes(`${model}: the weights are not finite`), msg);
    assert(msg.includes("model.embed_tokens.weight"), msg);
    assertEquals(out, []);
  } finally {
    Object.assign(console, { log, error });
    await Deno.remove(root, { recursive: true });
  }
});
