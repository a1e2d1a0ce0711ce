import { deepStrictEqual as assertEquals, rejects } from "node:assert/strict";
import { join } from "node:path";
import { AtomicWriter, tempPath, writeFileAtomic } from "./fs.ts";

const temps = async (dir: string) =>
  (await Array.fromAsync(Deno.readDir(dir))).filter((e) => e.name.endsWith(".tmp")).map((e) =>
    e.name
  );

Deno.test("writeFileAtomic and AtomicWriter", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "fs_atomic_" });
  try {
    await t.step("text and bytes land whole; an old file is replaced", async () => {
      const p = join(dir, "a.json");
      await writeFileAtomic(p, "old");
      await writeFileAtomic(p, '{"é": 1}');
      assertEquals(await Deno.readTextFile(p), '{"é": 1}');
      const bytes = new Uint8Array(300_000).map((_, i) => i * 7);
      await writeFileAtomic(p, bytes);
      assertEquals(await Deno.readFile(p), bytes);
      assertEquals(await temps(dir), []);
    });
    await t.step("a failed rename leaves the target untouched and no temp file", async () => {
      const p = join(dir, "b.txt");
      await writeFileAtomic(p, "kept");
      // A directory where the file should go makes the rename fail.
      const blocked = join(dir, "blocked");
      await Deno.mkdir(join(blocked, "inner"), { recursive: true });
      await rejects(() => writeFileAtomic(blocked, "x"));
      assertEquals(await temps(dir), []);
      assertEquals(await Deno.readTextFile(p), "kept");
    });
    await t.step("a missing folder is an error, nothing is written", async () => {
      await rejects(
        () => writeFileAtomic(join(dir, "nope", "c.txt"), "x"),
        Deno.errors.NotFound,
      );
    });
    await t.step("AtomicWriter: pieces then commit; abort leaves nothing", async () => {
      const p = join(dir, "d.bin");
      const w = await AtomicWriter.open(p);
      assertEquals(w.tempPath, tempPath(p));
      await w.write(new Uint8Array([1, 2]));
      await w.write(new Uint8Array([3]));
      assertEquals(w.bytes, 3);
      await rejects(() => Deno.stat(p), Deno.errors.NotFound);
      await w.commit();
      assertEquals(await Deno.readFile(p), new Uint8Array([1, 2, 3]));
      const q = join(dir, "e.bin");
      const v = await AtomicWriter.open(q);
      await v.write(new Uint8Array([9]));
      await v.abort();
      await rejects(() => Deno.stat(q), Deno.errors.NotFound);
      assertEquals(await temps(dir), []);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
