/**
 * CRC-32 (IEEE 802.3, as zlib, gzip, PNG and zip use it), slicing-by-8, resumable across pieces.
 * @module
 */

const CRC_TABLE = (() => {
  const t = new Uint32Array(256 * 8);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  // Slicing-by-8 tables: 8 bytes per step.
  for (let n = 0; n < 256; n++) {
    let c = t[n];
    for (let k = 1; k < 8; k++) {
      c = t[c & 0xff] ^ (c >>> 8);
      t[k * 256 + n] = c >>> 0;
    }
  }
  return t;
})();

/**
 * CRC-32 of `bytes`, continuing from `crc` (0 to start; pass the previous result to continue).
 *
 * @example
 * ```ts
 * import { crc32 } from "@lvm/util";
 * const b = new TextEncoder().encode("123456789");
 * console.log(crc32(b).toString(16)); // "cbf43926"
 * console.log(crc32(b.subarray(4), crc32(b.subarray(0, 4))) === crc32(b)); // true
 * ```
 */
export function crc32(bytes: Uint8Array, crc = 0): number {
  const t = CRC_TABLE;
  let c = ~crc >>> 0;
  let i = 0;
  const n8 = bytes.length - (bytes.length % 8);
  for (; i < n8; i += 8) {
    const a =
      (c ^ (bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24))) >>> 0;
    c = t[1792 + (a & 0xff)] ^ t[1536 + ((a >>> 8) & 0xff)] ^ t[1280 + ((a >>> 16) & 0xff)] ^
      t[1024 + (a >>> 24)] ^ t[768 + bytes[i + 4]] ^ t[512 + bytes[i + 5]] ^
      t[256 + bytes[i + 6]] ^ t[bytes[i + 7]];
  }
  for (; i < bytes.length; i++) c = t[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** A u32 as 8 lowercase hex digits. */
export function hex32(x: number): string {
  return (x >>> 0).toString(16).padStart(8, "0");
}
