/**
 * File helpers: CRC-32 for shard checksums, and the atomic writes (temp file + fsync + rename)
 * shared by every package (`@lvm/kernels/fs`, re-exported here).
 * @module
 */

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // Shards are little-endian on disk and read as typed-array views.
  throw new Error("@lvm/sentence: big-endian hosts are not supported (shards are little-endian)");
}

export { AtomicWriter, tempPath, writeFileAtomic } from "@lvm/kernels/fs";

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

/** CRC-32 (IEEE, as zlib/gzip) of `bytes`, continuing from `crc` (0 to start). */
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

/** Bytes read at a time by {@link crc32Range} (memory stays bounded whatever the file size). */
export const CRC_READ_BYTES = 4 << 20;

/**
 * CRC-32 of the bytes [start, start + length) of an open file, read `chunkBytes` at a time (so a
 * file far larger than memory is checked in bounded memory). Returns null when the file ends
 * before `start + length`. `onChunk` runs after every piece (a place to check an abort signal).
 */
export async function crc32Range(
  file: Deno.FsFile,
  start: number,
  length: number,
  opts: { chunkBytes?: number; buffer?: Uint8Array; onChunk?: () => void } = {},
): Promise<number | null> {
  const buf = opts.buffer ?? new Uint8Array(Math.min(length, opts.chunkBytes ?? CRC_READ_BYTES));
  if (length > 0 && buf.length === 0) throw new RangeError("crc32Range: empty buffer");
  await file.seek(start, Deno.SeekMode.Start);
  let crc = 0, left = length;
  while (left > 0) {
    const want = buf.subarray(0, Math.min(buf.length, left));
    let have = 0;
    while (have < want.length) {
      const r = await file.read(want.subarray(have));
      if (r === null) return null;
      have += r;
    }
    crc = crc32(want, crc);
    left -= want.length;
    opts.onChunk?.();
  }
  return crc;
}

/** A u32 as 8 lowercase hex digits. */
export function hex32(x: number): string {
  return (x >>> 0).toString(16).padStart(8, "0");
}

/** SHA-256 of a string, as hex. */
export async function sha256Hex(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
