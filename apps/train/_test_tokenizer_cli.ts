/**
 * TEST HARNESS, not a tool to build training data with: runs `train dataset` with the
 * deterministic block-mean test tokenizer of @lvm/sentence/testing instead of the VQGAN, for the
 * CLI tests and for smoke runs where the VQGAN is not available. `--tokenizer test:R` picks the
 * test tokenizer's resolution R (a multiple of 16; R/16 x R/16 tokens per image).
 *
 *   deno run -A apps/train/_test_tokenizer_cli.ts dataset --tokenizer test:256 --kind ... --out ...
 * @module
 */

import { BlockMeanTestTokenizer } from "@lvm/sentence/testing";
import { COMMANDS, main } from "./main.ts";
import { UsageError } from "@lvm/cli";
import { makeDatasetCommand } from "./dataset.ts";

COMMANDS.dataset = makeDatasetCommand({
  openTokenizer(spec: string) {
    const m = spec.match(/^test:(\d+)$/);
    if (!m) throw new UsageError(`--tokenizer ${spec}: this test harness takes test:RESOLUTION`);
    return new BlockMeanTestTokenizer(Number(m[1]));
  },
});

if (import.meta.main) Deno.exit(await main(Deno.args));
