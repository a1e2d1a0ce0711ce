/**
 * What every `deno task train` subcommand shares now lives in `@lvm/cli`; this file re-exports it
 * for the commands that have not switched yet.
 * @deprecated import from `@lvm/cli` (`intFlag` replaces `intOption`).
 * @module
 */
export { type Command, intFlag as intOption, UsageError } from "@lvm/cli";
