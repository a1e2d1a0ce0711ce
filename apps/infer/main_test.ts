/**
 * End-to-end tests of the inference CLI: spawn `apps/infer/main.ts` on the PyTorch fixture model and
 * compare with the reference (tools/ref_llama.py) — scores, greedy tokens — plus sampling flags,
 * `--tokens @FILE`, and the errors.
 */
import { deepStrictEqual, ok } from "node:assert/strict";
import { SafetensorsFile } from "@lvm/weights";
import { assertClose } from "@lvm/util/testing";
import { loadProgress, parseTokens } from "./_cli.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const MODEL = `${ROOT}tests/fixtures/transformer/mha`;

async function cli(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${ROOT}apps/infer/main.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
    env: { DENO_WEBGPU_BACKEND: Deno.env.get("DENO_WEBGPU_BACKEND") ?? "vulkan" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

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
    deepStrictEqual(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    deepStrictEqual(Object.keys(out), ["logprobs", "nll", "perplexity"]);
    assertClose(out.logprobs, await ref("score.logprobs"), { atol: 2e-5, rtol: 1e-5 }, "logprobs");
    const nll = -out.logprobs.reduce((a: number, b: number) => a + b, 0) / out.logprobs.length;
    assertClose([out.nll, out.perplexity], [nll, Math.exp(nll)], { atol: 1e-9, rtol: 1e-9 });
  });
  await t.step("an id outside the vocabulary is an error naming it", async () => {
    const r = await cli("score", "--model", MODEL, "--tokens", "1,2,100,3", "--json");
    deepStrictEqual(r.code, 1);
    ok(/token id 100 \(position 2\) is outside the vocabulary/.test(r.stderr), r.stderr);
    deepStrictEqual(r.stdout, "");
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
    deepStrictEqual(r.code, 0, r.stderr);
    deepStrictEqual(JSON.parse(r.stdout), { tokens: want });
  });
  await t.step("sampling: exactly N ids below the image codes, reproducible per seed", async () => {
    const dir = await Deno.makeTempDir();
    await Deno.writeTextFile(`${dir}/prompt.json`, "[5, 17, 3]");
    const args = ["--model", MODEL, "--tokens", `@${dir}/prompt.json`, "--max-new-tokens", "40"];
    const a = await cli(
      "generate",
      ...args,
      "--seed",
      "7",
      "--top-k",
      "0",
      "--temperature",
      "2",
      "--json",
    );
    // The same seed on the CPU path (--cpu-sampling) draws the same ids as the default GPU path.
    const b = await cli(
      "generate",
      ...args,
      "--seed",
      "7",
      "--top-k",
      "0",
      "--temperature",
      "2",
      "--cpu-sampling",
      "--json",
    );
    deepStrictEqual(a.code, 0, a.stderr);
    const ta: number[] = JSON.parse(a.stdout).tokens;
    deepStrictEqual(ta.length, 40);
    ok(ta.every((id) => Number.isInteger(id) && id >= 0 && id < 96), `${ta}`);
    deepStrictEqual(JSON.parse(b.stdout).tokens, ta);
    ok(new Set(ta).size > 5, `temperature 2 over 96 codes should vary: ${ta}`);
    await Deno.remove(dir, { recursive: true });
  });
  await t.step("usage errors exit 2 with the usage", async () => {
    const r = await cli("generate", "--model", MODEL, "--tokens", "1,2", "--top-p", "1.5");
    deepStrictEqual(r.code, 2);
    ok(r.stderr.includes("--top-p 1.5") && r.stderr.includes("usage:"), r.stderr);
    const u = await cli("frobnicate");
    deepStrictEqual(u.code, 2);
    ok(u.stderr.includes('unknown command "frobnicate"'), u.stderr);
  });
});

Deno.test("parseTokens()", async (t) => {
  await t.step("commas, white space, JSON arrays, @FILE", async () => {
    deepStrictEqual(parseTokens("5,17,3"), [5, 17, 3]);
    deepStrictEqual(parseTokens(" 5  17\n3, 4 "), [5, 17, 3, 4]);
    deepStrictEqual(parseTokens("[5, 17, 3]"), [5, 17, 3]);
    const f = await Deno.makeTempFile();
    await Deno.writeTextFile(f, "8 9\n10\n");
    deepStrictEqual(parseTokens(`@${f}`), [8, 9, 10]);
    await Deno.remove(f);
  });
  await t.step("bad items are named", () => {
    for (
      const [spec, msg] of [
        ["1,x,3", /item 1 is "x"/],
        ["[1,-2]", /item 1 is -2/],
        [
          "1.5",
          /item 0/,
        ],
        ["", /no token ids/],
        ["@/nonexistent/ids", /cannot read/],
      ] as const
    ) {
      let err = "";
      try {
        parseTokens(spec);
      } catch (e) {
        err = (e as Error).message;
      }
      ok(msg.test(err), `${spec}: ${err}`);
    }
  });
});

Deno.test("loadProgress: a line per interval with the count and an eta; none for a fast load", () => {
  const lines: string[] = [];
  const every = loadProgress((l) => lines.push(l), 0);
  for (let i = 0; i < 3; i++) every(`t${i}`, i, 3);
  deepStrictEqual(lines.length, 3);
  ok(/loaded 2\/3 tensors in \d+ s, eta \d+ s/.test(lines[1]), lines[1]);
  const quiet: string[] = [];
  const slow = loadProgress((l) => quiet.push(l), 60_000);
  for (let i = 0; i < 3; i++) slow(`t${i}`, i, 3);
  deepStrictEqual(quiet, []);
});
