/**
 * The shape of a subcommand and the dispatcher that runs one: `PROGRAM <command> [options]`, with
 * `--help` for the list and `<command> --help` for a command's usage. Exit codes: 0 ok, 1 error,
 * 2 usage (a bad command line).
 * @module
 */

/** One subcommand of a CLI. */
export interface Command {
  /** One line for the command list. */
  summary: string;
  /** Full usage text printed by `--help` and after a usage error. */
  usage: string;
  /** Runs with the arguments after the subcommand name; resolves to the exit code. */
  run(args: string[]): Promise<number>;
}

/** A bad command line: printed with the command's usage, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** A CLI: its name as the user types it and its subcommands by name. */
export interface Cli {
  /** How the user runs it, e.g. `deno task train`. */
  program: string;
  /** The subcommands, by name, in the order the list shows them. */
  commands: Record<string, Command>;
}

/** Whether `e` is a bad command line: a {@link UsageError} or a `parseArgs` error. */
export function isUsageError(e: unknown): boolean {
  // parseArgs reports unknown or ill-typed flags as TypeErrors with an ERR_PARSE_ARGS_* code.
  return e instanceof UsageError ||
    String((e as { code?: string } | undefined)?.code).startsWith("ERR_PARSE_ARGS");
}

/** The command list `PROGRAM --help` prints. */
export function cliUsage(cli: Cli): string {
  const names = Object.keys(cli.commands);
  const w = Math.max(...names.map((n) => n.length));
  return [
    `usage: ${cli.program} <command> [options]`,
    "",
    "commands:",
    ...names.map((n) => `  ${n.padEnd(w)}  ${cli.commands[n].summary}`),
    "",
    `\`${cli.program} <command> --help\` shows a command's options.`,
  ].join("\n");
}

/**
 * Runs `cli` on `argv` (without the program name) and resolves to the exit code: the command's
 * own, 2 for a usage error (printed with the command's usage) or an unknown command, 1 for any
 * other error (its message on stderr). `--help`/`-h`/`help` prints the command list, and
 * `<command> --help` the command's usage, on stdout with exit code 0; no command at all prints the
 * list on stderr with exit code 2.
 */
export async function runCli(cli: Cli, argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === "") {
    console.error(cliUsage(cli));
    return 2;
  }
  if (name === "--help" || name === "-h" || name === "help") {
    console.log(cliUsage(cli));
    return 0;
  }
  const cmd = Object.hasOwn(cli.commands, name) ? cli.commands[name] : undefined;
  if (!cmd) {
    console.error(`error: unknown command "${name}"\n\n${cliUsage(cli)}`);
    return 2;
  }
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(cmd.usage);
    return 0;
  }
  try {
    return await cmd.run(rest);
  } catch (e) {
    if (isUsageError(e)) {
      console.error(`error: ${(e as Error).message}\n\n${cmd.usage}`);
      return 2;
    }
    console.error(`error: ${e instanceof Error ? e.message : e}`);
    return 1;
  }
}
