/**
 * Test helpers of @lvm/image's own tests: the image fixtures (tests/fixtures/image) and the check
 * that an operation fails with an {@link ImageError} naming what went wrong.
 * @module
 */
import { ImageError } from "./image.ts";

const FIX = new URL("../../tests/fixtures/image/", import.meta.url);

/** The path of the fixture file `name` of tests/fixtures/image. */
export const fix = (name: string): string => new URL(name, FIX).pathname;

/** `assertClose` tolerances that demand equality. */
export const exact = { atol: 0, rtol: 0 };

/** Runs `fn`, expects an ImageError whose message contains every needle. */
export async function expectImageError(
  fn: () => Promise<unknown>,
  needles: string[],
  label: string,
): Promise<void> {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof ImageError)) throw new Error(`${label}: threw ${e}, want ImageError`);
    for (const n of needles) {
      if (!e.message.includes(n)) throw new Error(`${label}: "${e.message}" lacks "${n}"`);
    }
    return;
  }
  throw new Error(`${label}: did not throw`);
}
