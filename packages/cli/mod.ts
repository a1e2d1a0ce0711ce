/**
 * @lvm/cli: what every command-line app of the project shares, in one place: the {@link Command}
 * shape and {@link UsageError}, a subcommand dispatcher with `--help` ({@link runCli}), flag parsing
 * that reads negative numbers as values ({@link parseFlags}), number flags with ranges
 * ({@link intFlag}, {@link floatFlag} and their positive / non-negative forms), enum flags,
 * durations, token lists ({@link parseTokens}) and progress lines ({@link formatProgress}).
 *
 * It uses `node:util`'s `parseArgs` and `Deno.*`: it is for the command-line apps, not for the
 * browser core.
 *
 * @example
 * ```ts
 * import { type Command, parseFlags, positiveInt, runCli } from "@lvm/cli";
 *
 * const hello: Command = {
 *   summary: "say hello N times",
 *   usage: "usage: hello greet [--times N]",
 *   run(args) {
 *     const { values } = parseFlags({ args, options: { times: { type: "string" } } });
 *     const n = positiveInt("times", values.times, 1);
 *     for (let i = 0; i < n; i++) console.log("hello");
 *     return Promise.resolve(0);
 *   },
 * };
 * const code = await runCli({ program: "hello", commands: { greet: hello } }, ["greet", "--times", "2"]);
 * console.log(code); // 0
 * ```
 * @module
 */
export * from "./command.ts";
export * from "./flags.ts";
export * from "./tokens.ts";
export * from "./progress.ts";
