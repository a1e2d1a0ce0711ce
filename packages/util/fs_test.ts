import { assertEquals, assertRejects } from "./testing.ts";
import { join } from "node:path";
import { AtomicWriter, isFile, pathKind, tempPath, writeFileAtomic } from "./fs.ts";

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
      await assertRejects(() => writeFileAtomic(blocked, "x"), Error);
      assertEquals(await temps(dir), []);
      assertEquals(await Deno.readTextFile(p), "kept");
    });
    await t.step("a missing folder is an error naming the target, nothing is written", async () => {
      const p = join(dir, "nope", "c.txt");
      await assertRejects(() => writeFileAtomic(p, "x"), Deno.errors.NotFound);
      await assertRejects(
        () => writeFileAtomic(p, "x"),
        Error,
        new RegExp(`^${p}: cannot write`),
      );
    });
    await t.step("a full disk (a file-size limit) is an error naming the target", async () => {
      // ulimit -f makes write() fail with EFBIG past 8 KiB, as ENOSPC would on a full disk.
      const p = join(dir, "full.bin");
      const code = `import { writeFileAtomic } from ${
        JSON.stringify(import.meta.resolve("./fs.ts"))
      };
        try { await writeFileAtomic(${JSON.stringify(p)}, new Uint8Array(1 << 20)); }
        catch (e) { console.log(e.message); }`;
      const out = await new Deno.Command("bash", {
        args: ["-c", `trap '' XFSZ; ulimit -f 8; exec "${Deno.execPath()}" eval "$0"`, code],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const msg = new TextDecoder().decode(out.stdout);
      if (!msg.startsWith(`${p}: cannot write (after `) || !/too large|space/i.test(msg)) {
        throw new Error(
          `expected the path and the OS error, got: ${msg} ${new TextDecoder().decode(out.stderr)}`,
        );
      }
      assertEquals(await temps(dir), []);
      await assertRejects(() => Deno.stat(p), Deno.errors.NotFound);
    });
    await t.step("AtomicWriter: pieces then commit; abort leaves nothing", async () => {
      const p = join(dir, "d.bin");
      const w = await AtomicWriter.open(p);
      assertEquals(w.tempPath, tempPath(p));
      await w.write(new Uint8Array([1, 2]));
      await w.write(new Uint8Array([3]));
      assertEquals(w.bytes, 3);
      await assertRejects(() => Deno.stat(p), Deno.errors.NotFound);
      await w.commit();
      assertEquals(await Deno.readFile(p), new Uint8Array([1, 2, 3]));
      const q = join(dir, "e.bin");
      const v = await AtomicWriter.open(q);
      await v.write(new Uint8Array([9]));
      await v.abort();
      await assertRejects(() => Deno.stat(q), Deno.errors.NotFound);
      assertEquals(await temps(dir), []);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("pathKind / isFile: FIFOs are 'other', symlink loops are errors, not missing", async () => {
  const dir = await Deno.makeTempDir({ prefix: "fs_kind_" });
  try {
    await Deno.writeTextFile(join(dir, "f"), "x");
    assertEquals(await pathKind(join(dir, "f")), "file");
    assertEquals(await pathKind(dir), "dir");
    assertEquals(await pathKind(join(dir, "none")), null);
    const fifo = join(dir, "fifo");
    const mk = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    if (mk.success) {
      assertEquals(await pathKind(fifo), "other");
      assertEquals(await isFile(fifo), false);
    }
    await Deno.symlink(join(dir, "b"), join(dir, "a"));
    await Deno.symlink(join(dir, "a"), join(dir, "b"));
    await assertRejects(
      () => pathKind(join(dir, "a")),
      Error,
      new RegExp(`^${join(dir, "a")}: .*symbolic links`),
    );
    await assertRejects(() => isFile(join(dir, "a")), Error);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
