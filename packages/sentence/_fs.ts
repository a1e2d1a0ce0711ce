/**
 * File helpers of the package (private): the CRC-32 of `@lvm/util` and a bounded-memory CRC of a
 * file range, and the atomic writes (temp file + fsync + rename) of `@lvm/util/fs`, re-exported.
 * @module
 */

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // Shards are little-endian on disk and read as typed-array views.
  throw new Error("@lvm/sentence: big-endian hosts are not supported (shards are little-endian)");
}

export { AtomicWriter, errorWithPath, tempPath, writeFileAtomic } from "@lvm/util/fs";
import { crc32 } from "@lvm/util";
export { crc32, hex32 } from "@lvm/util";

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

/** SHA-256 of a string, as hex. */
export async function sha256Hex(text: string): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
