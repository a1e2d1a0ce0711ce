/**
 * The inference CLI: `deno task infer <command> [options]`. Each command lives in its own module and
 * maps its flags to an `@lvm/pipeline` call; adding one is an import and an entry in {@link COMMANDS}.
 *
 *   deno task infer score --model DIR --tokens 5,17,3 --json
 *   deno task infer generate --model DIR --tokens 5,17,3 --max-new-tokens 256 --greedy --json
 *   deno task infer quantize --model DIR --out model-q8_0.gguf --type q8_0
 * @module
 */
import "@lvm/gpu/pin"; // lavapipe: its compute threads one per core
import { type Command, runCli } from "@lvm/cli";
import { generate } from "./generate.ts";
import { score } from "./score.ts";
import { encode } from "./encode.ts";
import { decode } from "./decode.ts";
import { complete } from "./complete.ts";
import { quantize } from "./quantize.ts";

/** Subcommands by name. */
export const COMMANDS: Record<string, Command> = {
  score,
  generate,
  encode,
  decode,
  complete,
  quantize,
};

/** Runs the CLI with `args`; resolves to the exit code (0 ok, 1 error, 2 usage). */
export function main(args: string[]): Promise<number> {
  return runCli({ program: "deno task infer", commands: COMMANDS }, args);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
