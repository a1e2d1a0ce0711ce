import { getGpu } from "@lvm/gpu";
import { Llama, makeConfig, saveLlama } from "@lvm/transformer";
const gpu = await getGpu();
const config = makeConfig({ hidden: 32, layers: 2, heads: 2, ffn: 64, vocab: 100, imageCodes: 96, maxPositions: 256 });
const llama = Llama.init(gpu, config, { seed: 3 });
await saveLlama(llama, "/tmp/golden/model");
llama.release();
