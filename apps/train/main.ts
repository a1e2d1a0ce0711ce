/**
 * The trainer CLI: `deno task train <command> [options]`.
 *
 * Commands are registered in {@link COMMANDS}: adding one is an import and a map entry.
 * @module
 */

import { type Command, UsageError } from "./_cli.ts";
import { dataset } from "./dataset.ts";
import { model } from "./model.ts";
import { evalCommand } from "./eval.ts";
import { tokenizer } from "./tokenizer.ts";

/** The subcommands, by name. */
export const COMMANDS: Record<string, Command> = {
  dataset,
  model,
  eval: evalCommand,
  tokenizer,
};

function usage(): string {
  const names = Object.keys(COMMANDS);
  const w = Math.max(...names.map((n) => n.length));
  return [
    "usage: deno task train <command> [options]",
    "",
    "commands:",
    ...names.map((n) => `  ${n.padEnd(w)}  ${COMMANDS[n].summary}`),
    "",
    "`deno task train <command> --help` shows a command's options.",
  ].join("\n");
}

/** Runs the CLI on `argv` (without the program name); resolves to the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined) {
    console.error(usage());
    return 2;
  }
  if (name === "--help" || name === "-h" || name === "help") {
    console.log(usage());
    return 0;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`error: unknown command "${name}"\n\n${usage()}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(cmd.usage);
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n\n${cmd.usage}`);
      return 2;
    }
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
