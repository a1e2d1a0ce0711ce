/**
 * The structure rules of tools/check_structure.ts as a test: no name exported by two packages'
 * main modules with different meanings, GPU-free packages free of GPU packages, tokenizer and
 * transformer apart, no package importing an app.
 * @module
 */
import { readPackages, violations } from "../tools/check_structure.ts";

Deno.test("structure: exports have one home, dependency rules hold", async () => {
  const found = violations(await readPackages());
  if (found.length) throw new Error(`structure violations:\n  ${found.join("\n  ")}`);
});
