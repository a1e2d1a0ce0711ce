/**
 * How the trainer finds the image tokenizer for `dataset --tokenizer DIR`: the VQGAN of
 * @lvm/tokenizer through its `loadTokenizer(dir)`. Kept in one small function so the dataset
 * command does not depend on the tokenizer package's internals.
 * @module
 */

import type { ImageTokenizer } from "@lvm/sentence";

/** Loads the tokenizer saved in `dir`; a clear error when the tokenizer package cannot. */
export async function openTokenizer(dir: string): Promise<ImageTokenizer> {
  let mod: Record<string, unknown>;
  try {
    mod = (await import("@lvm/tokenizer/fs")) as Record<string, unknown>;
  } catch (e) {
    throw new Error(`the VQGAN tokenizer package is not available yet (${(e as Error).message})`);
  }
  const load = mod.loadTokenizer;
  if (typeof load !== "function") {
    throw new Error(
      "the VQGAN tokenizer package is not available yet: @lvm/tokenizer exports no loadTokenizer(dir)",
    );
  }
  const tok = (await load(dir)) as ImageTokenizer;
  for (const k of ["id", "resolution", "tokensPerImage", "codebookSize", "encode"] as const) {
    if (tok?.[k] === undefined) {
      throw new Error(
        `${dir}: the loaded tokenizer has no "${k}" (expected the ImageTokenizer interface)`,
      );
    }
  }
  return tok;
}
