import { join } from "node:path";
import { encodePng, ImageError, ImageTooLargeError, makeImage } from "@lvm/image";
import { countVideoFrames, ffmpegAvailable, lastLines } from "@lvm/image/fs";
import { crc32 } from "@lvm/util";
import {
  InputError,
  ItemLoader,
  ItemTable,
  RenderPool,
  scanImages,
  scanSequences,
} from "./sources.ts";
import { writeCorruptAvi } from "./testing.ts";

const hasFfmpeg = await ffmpegAvailable();
if (!hasFfmpeg) console.warn("sources_test: ffmpeg not found, the corrupt-video steps are skipped");

async function throws(fn: () => Promise<unknown>, check: (e: unknown) => string | null) {
  let err: unknown = null;
  try {
    await fn();
  } catch (e) {
    err = e;
  }
  if (err === null) throw new Error("did not throw");
  const why = check(err);
  if (why) throw new Error(`${why}: ${err}`);
}

const imageError = (...needles: (string | RegExp)[]) => (e: unknown) => {
  if (!(e instanceof ImageError)) return "expected an ImageError";
  for (const n of needles) {
    if (typeof n === "string" ? !e.message.includes(n) : !n.test(e.message)) {
      return `message lacks ${n}`;
    }
  }
  return null;
};
const abortError = (re: RegExp) => (e: unknown) =>
  e instanceof DOMException && e.name === "AbortError" && re.test(e.message)
    ? null
    : `expected an AbortError matching ${re}`;

/** A video source of `frames` frames (the table a sequence scan would make). */
function videoTable(path: string, frames: number): ItemTable {
  const t = new ItemTable();
  t.add({ path, type: "video", files: [], count: frames });
  return t;
}

Deno.test({
  name: "undecodable videos are errors naming the file with ffmpeg's stderr",
  ignore: !hasFfmpeg,
  fn: async (t) => {
    const dir = await Deno.makeTempDir();
    const ffmpegSays = /No JPEG data found|Invalid data found/;
    await t.step("no frame count in the container: counting by decoding fails", async () => {
      const bad = await writeCorruptAvi(join(dir, "nocount.avi"), { frameCount: false });
      await throws(
        () => countVideoFrames(bad),
        imageError(bad, "undecodable video: ffmpeg exit 1 while counting frames", ffmpegSays),
      );
      // The scan of a folder holding it stops there too (no silent "0 frames, skipped").
      await throws(() => scanSequences([dir]), imageError(bad, "undecodable video"));
    });
    await t.step("frame count from the container: decoding a frame fails", async () => {
      const bad = await writeCorruptAvi(join(dir, "counted.avi"), { frames: 12 });
      if ((await countVideoFrames(bad)) !== 12) throw new Error("the header's count is used");
      const loader = new ItemLoader(videoTable(bad, 12));
      await throws(
        () => loader.load(3),
        imageError(bad, "undecodable video: ffmpeg exit 1 before frame 0 of 12 probed", ffmpegSays),
      );
      await loader.close();
    });
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("lastLines() keeps ffmpeg's last non-empty lines", () => {
  const got = lastLines("a\n\n b \nc\nd\ne\n\n", 3);
  if (got !== "c | d | e") throw new Error(got);
  if (lastLines("") !== "ffmpeg printed nothing") throw new Error("empty");
});

/**
 * Stand-ins for ffprobe (a video of 4x4 frames, no frame count) and an ffmpeg that never ends,
 * first on PATH while `fn` runs: an abort must kill ffmpeg, not wait for it.
 */
async function withHangingFfmpeg(fn: (video: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  const bin = join(dir, "bin");
  await Deno.mkdir(bin);
  await Deno.writeTextFile(
    join(bin, "ffprobe"),
    `#!/bin/sh\necho '{"streams":[{"width":4,"height":4}]}'\n`,
  );
  // Writes one 4x4 frame, then hangs.
  await Deno.writeTextFile(
    join(bin, "ffmpeg"),
    "#!/bin/sh\nhead -c 48 /dev/zero\nexec sleep 600\n",
  );
  for (const f of ["ffprobe", "ffmpeg"]) await Deno.chmod(join(bin, f), 0o755);
  const video = join(dir, "clip.mkv");
  await Deno.writeFile(video, new Uint8Array(16));
  const path = Deno.env.get("PATH") ?? "";
  Deno.env.set("PATH", `${bin}:${path}`);
  try {
    await fn(video);
  } finally {
    Deno.env.set("PATH", path);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("an aborted signal kills ffmpeg while counting or decoding frames", async (t) => {
  await t.step("already aborted: nothing is spawned", async () => {
    await throws(
      () => countVideoFrames("/nonexistent.mkv", { signal: AbortSignal.abort() }),
      abortError(/interrupted while counting the frames of \/nonexistent\.mkv/),
    );
  });
  await t.step("counting: ffmpeg is killed", async () => {
    await withHangingFfmpeg(async (video) => {
      const ac = new AbortController();
      setTimeout(() => ac.abort(), 100);
      await throws(
        () => countVideoFrames(video, { signal: ac.signal }),
        abortError(/interrupted while counting the frames of .*clip\.mkv/),
      );
    });
  });
  await t.step("decoding: a blocked read ends when ffmpeg is killed", async () => {
    await withHangingFfmpeg(async (video) => {
      const ac = new AbortController();
      const loader = new ItemLoader(videoTable(video, 5), ac.signal);
      const f0 = await loader.load(0); // the one frame the stand-in writes
      if (f0.width !== 4 || f0.data.some((v) => v !== 0)) throw new Error("frame 0");
      setTimeout(() => ac.abort(), 100);
      await throws(() => loader.load(1), abortError(/interrupted while decoding .*clip\.mkv/));
      await loader.close();
    });
  });
});

Deno.test("hostile inputs: image bombs, symlink loops, FIFOs", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "sources_hostile_" });
  try {
    await t.step(
      "a PNG declaring 16000x16000 is 'too large' on the loader and the workers",
      async () => {
        const png = await encodePng(makeImage(4, 4));
        const dv = new DataView(png.buffer);
        dv.setUint32(16, 16000);
        dv.setUint32(20, 16000);
        dv.setUint32(29, crc32(png.subarray(12, 29)));
        const bomb = join(dir, "bomb.png");
        await Deno.writeFile(bomb, png);
        const table = new ItemTable();
        table.add({ path: dir, type: "folder", files: [bomb], count: 1 });
        await throws(
          () => new ItemLoader(table).load(0),
          (e) => e instanceof ImageTooLargeError && e.message.includes(bomb) ? null : "loader",
        );
        const pool = new RenderPool(1);
        try {
          await throws(
            () => pool.render(bomb, 0, { resolution: 8, seed: 0 }),
            (e) =>
              e instanceof ImageTooLargeError && e.width === 16000 &&
                e.message.startsWith(`${bomb}: image too large: 16000x16000`)
                ? null
                : "pool",
          );
        } finally {
          pool.close();
        }
      },
    );
    await t.step("a symlink loop is an error naming it, not skipped or 'not found'", async () => {
      const d = join(dir, "loops");
      await Deno.mkdir(d);
      await Deno.writeFile(join(d, "ok.png"), await encodePng(makeImage(2, 2)));
      await Deno.symlink(join(d, "b.png"), join(d, "a.png"));
      await Deno.symlink(join(d, "a.png"), join(d, "b.png"));
      const named = (e: unknown) =>
        /a\.png|b\.png/.test(String((e as Error)?.message)) &&
          /symbolic links/.test(String((e as Error)?.message))
          ? null
          : "expected the loop named";
      await throws(() => scanImages([d]), named);
      await throws(() => scanSequences([d]), named);
      await throws(
        () => scanImages([join(d, "a.png")]),
        (e) =>
          e instanceof InputError && !/not found/.test(e.message) && named(e) === null
            ? null
            : "input",
      );
    });
    await t.step("an input that is a FIFO is refused", async () => {
      const fifo = join(dir, "pipe.png");
      if (!(await new Deno.Command("mkfifo", { args: [fifo] }).output()).success) {
        throw new Error(`mkfifo ${fifo} failed (coreutils)`);
      }
      await throws(
        () => scanImages([fifo]),
        (e) => e instanceof InputError && /not a regular file/.test(e.message) ? null : "fifo",
      );
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
