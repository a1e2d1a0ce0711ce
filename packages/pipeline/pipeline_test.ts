/**
 * The pipeline against what `infer complete` produced before it existed (commit c83d8c3, the
 * codes in testdata/complete_golden.json: same random model, fixture tokenizer, prompt, seeds),
 * the official score's definition, non-finite weights, and the errors.
 */
import { join } from "node:path";
import { getGpu } from "@lvm/gpu";
import { loadImage } from "@lvm/image/fs";
import { perplexity } from "@lvm/sampler";
import { createTokenizer, initVqganWeights, presetConfig } from "@lvm/tokenizer";
import { Llama, makeConfig } from "@lvm/transformer";
import { saveLlama } from "@lvm/transformer/fs";
import {
  assert,
  assertClose,
  assertEquals,
  assertRejects,
  assertStrictEquals,
  assertThrows,
} from "@lvm/util/testing";
import { LvmPipeline, NonFiniteWeightsError } from "./mod.ts";
import { loadPipeline } from "./fs.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
const TOK = `${ROOT}tests/fixtures/tokenizer/openmuse`;
const IMAGE = `${ROOT}tests/fixtures/tokenizer/image.png`;
const GOLDEN: { runs: { options: Record<string, number | boolean>; tokens: number[][] }[] } = JSON
  .parse(await Deno.readTextFile(new URL("./testdata/complete_golden.json", import.meta.url)));

/** The model of apps/infer/complete_test.ts: 96 image codes, more than the tokenizer's 64. */
const CONFIG = makeConfig({
  hidden: 32,
  layers: 2,
  heads: 2,
  ffn: 64,
  vocab: 100,
  imageCodes: 96,
  maxPositions: 256,
});

Deno.test("LvmPipeline.complete()", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvm-pipeline-" });
  const gpu = await getGpu();
  const llama = Llama.init(gpu, CONFIG, { seed: 3 });
  await saveLlama(llama, join(dir, "model"));
  llama.release();
  const lvm = await loadPipeline({ model: join(dir, "model"), tokenizer: TOK });
  const image = await loadImage(IMAGE);
  try {
    for (const run of GOLDEN.runs) {
      await t.step(`equals infer complete before: ${JSON.stringify(run.options)}`, async () => {
        const seen: number[] = [];
        const r = await lvm.complete([image, image], {
          count: 2,
          ...run.options,
          onToken: (p) => seen.push(p.done),
        });
        assertEquals(r.codes.map((c) => [...c]), run.tokens);
        assertEquals(seen, Array.from({ length: 128 }, (_, i) => i + 1));
        assertEquals(r.images.map((im) => [im.width, im.height]), [[16, 16], [16, 16]]);
        assertStrictEquals(r.prompt.length, 2);
        // The CPU sampling path draws the same codes, and onImage sees each image's codes as
        // soon as they are complete (before the next image's first code).
        const events: string[] = [];
        const cpu = await lvm.completeCodes(r.prompt, {
          count: 2,
          ...run.options,
          cpuSampling: true,
          onToken: (p) => p.token === 0 && events.push(`token ${p.image}.0`),
          onImage: async (k, codes) => {
            await Promise.resolve();
            events.push(`image ${k} ${codes.join(",") === run.tokens[k].join(",")}`);
          },
        });
        assertEquals(cpu.map((c) => [...c]), run.tokens);
        assertEquals(events, ["token 0.0", "image 0 true", "token 1.0", "image 1 true"]);
      });
    }
    await t.step("score(): mean over examples of exp(mean NLL of the last image)", async () => {
      const [a] = await lvm.encode([image]);
      const b = Int32Array.from(GOLDEN.runs[0].tokens[0]);
      const s = await lvm.scoreCodes([[a, b], [b, a, a]]);
      const want = [[a, b], [b, a, a]].map(async (ex) => {
        const { logprobs } = await lvm.scoreTokens(ex.flatMap((x) => [...x]));
        return perplexity(logprobs.slice(-64));
      });
      const w = await Promise.all(want);
      assertClose(s.examples.map((e) => e.perplexity), w.map((x) => x.perplexity), {
        atol: 0,
        rtol: 0,
      });
      assertClose([s.perplexity, s.nll], [
        (w[0].perplexity + w[1].perplexity) / 2,
        (w[0].nll + w[1].nll) / 2,
      ], { atol: 1e-12, rtol: 1e-12 });
      const viaImages = await lvm.score([[image, image]]);
      assertClose([viaImages.perplexity], [(await lvm.scoreCodes([[a, a]])).perplexity], {
        atol: 0,
        rtol: 0,
      });
      await assertRejects(
        () => lvm.scoreCodes([[a]]),
        Error,
        /example 0 has 1 image, expected 2 or more/,
      );
    });
  } finally {
    lvm.release();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("LvmPipeline: NaN weights are an error naming the model and the tensor", async () => {
  const gpu = await getGpu();
  const model = Llama.init(
    gpu,
    makeConfig({ hidden: 16, layers: 1, heads: 2, ffn: 32, vocab: 40 }),
  );
  model.setParam("model.layers.0.mlp.up_proj.weight", new Float32Array(32 * 16).fill(NaN));
  const lvm = new LvmPipeline({ model, modelName: "runs/x/checkpoint-9" });
  try {
    await assertRejects(
      () => lvm.scoreTokens([1, 2, 3]),
      NonFiniteWeightsError,
      /^runs\/x\/checkpoint-9: the weights are not finite \(tensor "model\.layers\.0\.mlp\.up_proj\.weight" holds NaN/,
    );
  } finally {
    lvm.release();
  }
});

Deno.test("LvmPipeline: errors say what is missing or does not fit", async () => {
  const gpu = await getGpu();
  const vq = { ...presetConfig("tiny"), numEmbeddings: 64 };
  const tokenizer = await createTokenizer(vq, initVqganWeights(vq, 1));
  const small = Llama.init(
    gpu,
    makeConfig({ hidden: 16, layers: 1, heads: 2, ffn: 32, vocab: 40, maxPositions: 256 }),
  );
  assertThrows(
    () => new LvmPipeline({ tokenizer, model: small, modelName: "m", tokenizerName: "t" }),
    Error,
    /tokenizer t has 64 codes but model m generates only 40 image codes/,
  );
  const noTok = new LvmPipeline({ model: small });
  await assertRejects(() => noTok.complete([]), Error, /at least one image/);
  assertThrows(() => noTok.tokenizer, Error, /no tokenizer/);
  await assertRejects(
    () => noTok.scoreTokens([1, 99]),
    Error,
    /token id 99 \(position 1\) is outside/,
  );
  await assertRejects(() => noTok.generate([1, 2], 300), Error, /exceed the model's 256 positions/);
  const noModel = new LvmPipeline({ tokenizer });
  assertThrows(() => noModel.model, Error, /no model/);
  assert(
    (await noModel.encode([(await noModel.decode([new Int32Array(64)]))[0]]))[0].length === 64,
  );
  noTok.release();
  noModel.release();
});
