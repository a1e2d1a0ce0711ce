/**
 * End-to-end tests of the inference CLI: spawn `apps/infer/main.ts` on the PyTorch fixture model and
 * compare with the reference (tools/ref_llama.py) — scores, greedy tokens — plus sampling flags,
 * `--tokens @FILE`, and the errors (parseTokens and loadProgress are tested in @lvm/cli).
 */
import { getGpu } from "@lvm/gpu";
import { Llama, makeConfig } from "@lvm/transformer";
import { saveLlama } from "@lvm/transformer/fs";
import { SafetensorsFile } from "@lvm/weights/fs";
import { assert, assertClose, assertEquals } from "@lvm/util/testing";
import { runApp } from "@lvm/cli/testing";

const ROOT = new URL("../../", import.meta.url).pathname;
const MODEL = `${ROOT}tests/fixtures/transformer/mha`;

const cli = (...args: string[]) => runApp("infer", ...args);

async function ref(name: string): Promise<number[]> {
  const f = await SafetensorsFile.open(`${MODEL}/reference.safetensors`);
  const v = Array.from(await f.readF32(name));
  f.close();
  return v;
}

Deno.test("infer score", async (t) => {
  await t.step("--json matches PyTorch's log-probabilities", async () => {
    const inputs = await ref("inputs");
    const row0 = inputs.slice(0, inputs.length / 2);
    const r = await cli("score", "--model", MODEL, "--tokens", row0.join(","), "--json");
    assertEquals(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assertEquals(Object.keys(out), ["logprobs", "nll", "perplexity"]);
    assertClose(out.logprobs, await ref("score.logprobs"), { atol: 2e-5, rtol: 1e-5 }, "logprobs");
    const nll = -out.logprobs.reduce((a: number, b: number) => a + b, 0) / out.logprobs.length;
    assertClose([out.nll, out.perplexity], [nll, Math.exp(nll)], { atol: 1e-9, rtol: 1e-9 });
  });
  await t.step("an id outside the vocabulary is an error naming it", async () => {
    const r = await cli("score", "--model", MODEL, "--tokens", "1,2,100,3", "--json");
    assertEquals(r.code, 1);
    assert(/token id 100 \(position 2\) is outside the vocabulary/.test(r.stderr), r.stderr);
    assertEquals(r.stdout, "");
  });
});

Deno.test("infer generate", async (t) => {
  await t.step("--greedy --json equals PyTorch's greedy continuation", async () => {
    const prompt = await ref("generate.prompt"), want = await ref("generate.tokens");
    const r = await cli(
      "generate",
      "--model",
      MODEL,
      "--tokens",
      prompt.join(","),
      "--max-new-tokens",
      String(want.length),
      "--greedy",
      "--json",
    );
    assertEquals(r.code, 0, r.stderr);
    assertEquals(JSON.parse(r.stdout), { tokens: want });
  });
  await t.step("sampling: exactly N ids below the image codes, reproducible per seed", async () => {
    const dir = await Deno.makeTempDir();
    await Deno.writeTextFile(`${dir}/prompt.json`, "[5, 17, 3]");
    const args = ["--model", MODEL, "--tokens", `@${dir}/prompt.json`, "--max-new-tokens", "40"];
    const sampled = (...extra: string[]) =>
      cli("generate", ...args, "--seed", "7", "--top-k", "0", "--temperature", "2", ...extra);
    const a = await sampled("--json");
    // The same seed on the CPU path (--cpu-sampling) draws the same ids as the default GPU path.
    const b = await sampled("--cpu-sampling", "--json");
    assertEquals(a.code, 0, a.stderr);
    const ta: number[] = JSON.parse(a.stdout).tokens;
    assertEquals(ta.length, 40);
    assert(ta.every((id) => Number.isInteger(id) && id >= 0 && id < 96), `${ta}`);
    assertEquals(JSON.parse(b.stdout).tokens, ta);
    assert(new Set(ta).size > 5, `temperature 2 over 96 codes should vary: ${ta}`);
    await Deno.remove(dir, { recursive: true });
  });
  await t.step("usage errors exit 2 with the usage", async () => {
    const r = await cli("generate", "--model", MODEL, "--tokens", "1,2", "--top-p", "1.5");
    assertEquals(r.code, 2);
    assert(r.stderr.includes("--top-p 1.5") && r.stderr.includes("usage:"), r.stderr);
    // A negative number is the flag's value (not an "ambiguous" flag), checked against the range.
    for (const neg of [["--max-new-tokens", "-5"], ["--max-new-tokens=-5"]]) {
      const m = await cli("generate", "--model", MODEL, "--tokens", "1,2", ...neg);
      assertEquals(m.code, 2, m.stderr);
      assert(m.stderr.includes("--max-new-tokens -5: expected >= 0"), m.stderr);
      assert(!m.stderr.includes("ambiguous"), m.stderr);
    }
    const u = await cli("frobnicate");
    assertEquals(u.code, 2);
    assert(u.stderr.includes('unknown command "frobnicate"'), u.stderr);
  });
});

Deno.test("infer score on a checkpoint whose weights are NaN fails naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lvm-nan-" });
  try {
    const gpu = await getGpu();
    const model = Llama.init(
      gpu,
      makeConfig({ hidden: 16, layers: 1, heads: 2, ffn: 32, vocab: 40 }),
    );
    model.setParam("model.norm.weight", new Float32Array(16).fill(NaN));
    await saveLlama(model, dir);
    model.release();
    const r = await cli("score", "--model", dir, "--tokens", "1,2,3,4", "--json");
    assertEquals(r.code, 1, r.stderr);
    assert(r.stderr.includes(dir) && r.stderr.includes("weights are not finite"), r.stderr);
    assert(r.stderr.includes("model.norm.weight"), r.stderr);
    assertEquals(r.stdout, "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
