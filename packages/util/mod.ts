/**
 * @lvm/util: the small things every package shares and that need neither a GPU nor a file
 * system: the seeded RNG, CRC-32, half-float conversions. File helpers (atomic writes) are in `@lvm/util/fs`, test
 * assertions in `@lvm/util/testing`.
 *
 * @example
 * ```ts
 * import { roundF16 } from "@lvm/util";
 * console.log(roundF16([0.1])); // Float32Array [0.0999755859375]
 * ```
 * @module
 */
export * from "./half.ts";
export * from "./rng.ts";
export * from "./crc32.ts";
