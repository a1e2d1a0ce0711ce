/**
 * The trainer CLI: `deno task train <command> [options]`.
 *
 * Commands are registered in {@link COMMANDS}: adding one is an import and a map entry.
 * @module
 */
import "@lvm/gpu/pin"; // lavapipe: its compute threads one per core
import { type Command, runCli } from "@lvm/cli";
import { dataset } from "./dataset.ts";
import { model } from "./model.ts";
import { evalCommand } from "./eval.ts";
import { evaluateCommand } from "./evaluate.ts";
import { tokenizer } from "./tokenizer.ts";

/** The subcommands, by name. */
export const COMMANDS: Record<string, Command> = {
  dataset,
  model,
  eval: evalCommand,
  evaluate: evaluateCommand,
  tokenizer,
};

/** Runs the CLI on `argv` (without the program name); resolves to the exit code. */
export function main(argv: string[]): Promise<number> {
  return runCli({ program: "deno task train", commands: COMMANDS }, argv);
}

if (import.meta.main) Deno.exit(await main(Deno.args));
