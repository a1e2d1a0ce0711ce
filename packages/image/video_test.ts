import { assertClose } from "@lvm/util/testing";
import { join } from "node:path";
import { toUint8 } from "./image.ts";
import { resize } from "./resize.ts";
import { decodeVideo, ffmpegAvailable, probeVideo, VideoFrameReader } from "./video.ts";
import { exact, expectImageError, fix } from "./testing.ts";

const hasFfmpeg = await ffmpegAvailable();

Deno.test("ffmpegAvailable(): false, never a throw, when ffmpeg is absent", async () => {
  // Deno.Command throws NotFound synchronously for a missing program: it must not escape.
  if (await ffmpegAvailable("lvm-no-such-ffmpeg")) throw new Error("a missing program runs?");
  const empty = await Deno.makeTempDir({ prefix: "lvm_nobin_" });
  const path = Deno.env.get("PATH") ?? "";
  Deno.env.set("PATH", empty); // a fresh machine without ffmpeg
  try {
    if (await ffmpegAvailable()) throw new Error("ffmpeg found on an empty PATH");
    const file = fix("src_37x23.png");
    await expectImageError(
      () => probeVideo(file),
      [file, '"ffmpeg" program was not found', "apt-get install ffmpeg"],
      "probe",
    );
    await expectImageError(
      () => new VideoFrameReader(file).frame(0),
      [file, "apt-get install ffmpeg"],
      "reader",
    );
  } finally {
    Deno.env.set("PATH", path);
    await Deno.remove(empty, { recursive: true });
  }
});

Deno.test("decodeVideo() / probeVideo() errors (no ffmpeg needed)", async (t) => {
  const file = fix("src_37x23.png"); // any existing file: the binary is missing before it is read
  const nobin = { ffmpeg: "lvm-no-such-ffmpeg", ffprobe: "lvm-no-such-ffprobe" };
  await t.step("missing ffmpeg binary says how to install it", async () => {
    const needles = ["lvm-no-such-ffmpeg", "install ffmpeg (apt-get install ffmpeg)", file];
    for (const resample of ["pil", "ffmpeg"] as const) {
      await expectImageError(
        () => decodeVideo(file, { width: 8, height: 8, resample, ...nobin }),
        needles,
        resample,
      );
    }
    await expectImageError(() => probeVideo(file, nobin), needles, "probe");
  });
  await t.step("missing file", async () => {
    const path = "/nonexistent/clip.mp4";
    await expectImageError(
      () => decodeVideo(path, { width: 8, height: 8 }),
      [path, "not found"],
      "decode",
    );
    await expectImageError(() => probeVideo(path), [path, "not found"], "probe");
  });
  await t.step("bad options are RangeErrors naming the option", async () => {
    for (
      const [o, needle] of [
        [{ width: 0, height: 8 }, "width"],
        [{ width: 8, height: 8, fps: -1 }, "fps"],
        [{ width: 8, height: 8, maxFrames: 1.5 }, "maxFrames"],
        [{ width: 8, height: 8, start: -2 }, "start"],
      ] as const
    ) {
      let msg = "";
      try {
        await decodeVideo(file, o);
      } catch (e) {
        if (e instanceof RangeError) msg = e.message;
      }
      if (!msg.includes(needle)) {
        throw new Error(`expected a RangeError on ${needle}, got "${msg}"`);
      }
    }
  });
});

Deno.test({
  name: "decodeVideo() / probeVideo() with ffmpeg (lavfi testsrc, lossless)",
  ignore: !hasFfmpeg, // skipped only when the system has no ffmpeg: apt-get install ffmpeg
  fn: async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "lvm_video_" });
    try {
      // 10 frames, 10 fps, 64x48, lossless FFV1 in AVI (the container records the frame count).
      const video = join(dir, "testsrc.avi");
      const gen = await new Deno.Command("ffmpeg", {
        args: [
          ...["-hide_banner", "-v", "error", "-y", "-f", "lavfi"],
          ...["-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "ffv1", "-pix_fmt", "bgr0"],
          video,
        ],
        stdout: "null",
        stderr: "piped",
      }).output();
      if (!gen.success) throw new Error(new TextDecoder().decode(gen.stderr));

      await t.step("probeVideo reads size, frame count, fps", async () => {
        const info = await probeVideo(video);
        if (info.width !== 64 || info.height !== 48) throw new Error(JSON.stringify(info));
        if (info.frames !== 10 || info.fps !== 10) throw new Error(JSON.stringify(info));
      });
      const native = await decodeVideo(video, { width: 64, height: 48 });
      await t.step("every frame at native size; frames differ", () => {
        if (native.length !== 10) throw new Error(`${native.length} frames`);
        const a = toUint8(native[0]), b = toUint8(native[1]);
        if (a.every((v, i) => v === b[i])) throw new Error("frames 0 and 1 are identical");
      });
      await t.step("resize is the PIL-exact resize of the native frames", async () => {
        const small = await decodeVideo(video, { width: 16, height: 16, maxFrames: 3 });
        if (small.length !== 3) throw new Error(`${small.length} frames`);
        for (let i = 0; i < 3; i++) {
          assertClose(small[i].data, resize(native[i], 16, 16).data, exact, `frame ${i}`);
        }
      });
      await t.step("start and fps select the right frames", async () => {
        const late = await decodeVideo(video, { width: 64, height: 48, start: 0.5 });
        if (late.length !== 5) throw new Error(`start 0.5: ${late.length} frames`);
        assertClose(late[0].data, native[5].data, exact, "frame at 0.5 s");
        const slow = await decodeVideo(video, { width: 64, height: 48, fps: 5 });
        if (slow.length !== 5) throw new Error(`fps 5: ${slow.length} frames`);
      });
      await t.step("without ffprobe the size comes from `ffmpeg -i`", async () => {
        const noProbe = { ffprobe: "lvm-no-such-ffprobe" };
        const info = await probeVideo(video, noProbe);
        if (info.width !== 64 || info.height !== 48 || info.fps !== 10) {
          throw new Error(JSON.stringify(info));
        }
        const f = await decodeVideo(video, { width: 16, height: 16, maxFrames: 2, ...noProbe });
        assertClose(f[1].data, resize(native[1], 16, 16).data, exact, "frame 1");
      });
      await t.step("ffmpeg's own scaler when asked", async () => {
        const f = await decodeVideo(video, { width: 20, height: 10, resample: "ffmpeg" });
        if (f.length !== 10 || f[0].width !== 20 || f[0].height !== 10) throw new Error("size");
      });
      await t.step("an unreadable video is an ImageError naming it", async () => {
        const bad = join(dir, "bad.mp4");
        await Deno.writeFile(bad, new TextEncoder().encode("this is not a video at all"));
        await expectImageError(() => probeVideo(bad), [bad, "unreadable video"], "probe");
        await expectImageError(
          () => decodeVideo(bad, { width: 8, height: 8, resample: "ffmpeg" }),
          [bad, "unreadable video"],
          "decode",
        );
        await expectImageError(
          () => decodeVideo(video, { width: 8, height: 8, start: 5 }),
          [video, "no video frames"],
          "past end",
        );
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
