/**
 * The inference CLI: `deno task infer <command> [options]`. Each command lives in its own module;
 * adding one is an import and an entry in {@link COMMANDS}.
 *
 *   deno task infer score --model DIR --tokens 5,17,3 --json
 *   deno task infer generate --model DIR --tokens 5,17,3 --max-new-tokens 256 --greedy --json
 * @module
 */
import { type Command, UsageError } from "./_cli.ts";
import { generate } from "./generate.ts";
import { score } from "./score.ts";
import { encode } from "./encode.ts";
import { decode } from "./decode.ts";
import { complete } from "./complete.ts";

/** Subcommands by name. */
export const COMMANDS: Record<string, Command> = {
  score,
  generate,
  encode,
  decode,
  complete,
};

function help(): string {
  const names = Object.keys(COMMANDS);
  const w = Math.max(...names.map((n) => n.length));
  return [
    "usage: deno task infer <command> [options]   (deno task infer <command> --help for its options)",
    "",
    "commands:",
    ...names.map((n) => `  ${n.padEnd(w)}  ${COMMANDS[n].summary}`),
  ].join("\n");
}

/** Runs the CLI with `args`; resolves to the exit code (0 ok, 1 error, 2 usage). */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (!name || name === "--help" || name === "-h" || name === "help") {
    console.log(help());
    return name ? 0 : 2;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`error: unknown command "${name}"\n\n${help()}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(cmd.usage);
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    const err = e as Error;
    // parseArgs reports unknown/ill-typed flags as TypeErrors with an ERR_PARSE_ARGS_* code.
    const usage = e instanceof UsageError ||
      String((e as { code?: string }).code).startsWith("ERR_PARSE_ARGS");
    console.error(`error: ${err.message}`);
    if (usage) console.error(`\n${cmd.usage}`);
    return usage ? 2 : 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
