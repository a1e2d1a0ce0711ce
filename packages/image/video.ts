/**
 * Video frames through the system `ffmpeg` (never bundled): frames are piped out as rawvideo rgb24
 * and, by default, resized here with the PIL-exact bicubic of resize.ts, so video frames get the
 * same preprocessing as still images (official pipeline: decode, PIL bicubic squash-resize).
 * A missing binary or an unreadable file is an {@link ImageError} that says what to do.
 * @module
 */
import { checkSize } from "./_check.ts";
import { ImageError, type RgbImage } from "./image.ts";
import { resizeUint8 } from "./resize.ts";

const INSTALL = "install ffmpeg (apt-get install ffmpeg)";

/** Binaries to use; defaults "ffmpeg" and "ffprobe" from PATH. */
export interface FfmpegBinaries {
  ffmpeg?: string;
  ffprobe?: string;
}

/** What {@link probeVideo} learns about the first video stream. */
export interface VideoInfo {
  /** Displayed size (after the rotation ffmpeg applies by default). */
  width: number;
  height: number;
  /** Frame count when the container states it. */
  frames?: number;
  /** Average frame rate when known. */
  fps?: number;
}

/** Options of {@link decodeVideo}. */
export interface DecodeVideoOptions extends FfmpegBinaries {
  /** Output size (squash-resize, no crop). */
  width: number;
  height: number;
  /** Resample the stream to this frame rate (ffmpeg `fps` filter); default: every frame. */
  fps?: number;
  /** Start time in seconds (input seek); default 0. */
  start?: number;
  /** Stop after this many output frames; default: to the end. */
  maxFrames?: number;
  /**
   * "pil" (default): decode at native size, resize with the PIL-exact bicubic of resize.ts.
   * "ffmpeg": let ffmpeg scale (swscale bicubic; faster, not PIL-identical).
   */
  resample?: "pil" | "ffmpeg";
}

interface RunResult {
  code: number;
  stdout: Uint8Array;
  stderr: string;
}

function spawnError(path: string, bin: string, e: unknown): ImageError {
  if (e instanceof Deno.errors.NotFound) {
    return new ImageError(path, `the "${bin}" program was not found: ${INSTALL}`, { cause: e });
  }
  return new ImageError(path, `cannot run "${bin}" (${(e as Error)?.message ?? e})`, { cause: e });
}

async function run(path: string, bin: string, args: string[]): Promise<RunResult> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(bin, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .output();
  } catch (e) {
    throw spawnError(path, bin, e);
  }
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

async function checkFile(path: string): Promise<void> {
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new ImageError(path, "video file not found", { cause: e });
    }
    throw new ImageError(path, `cannot read file (${(e as Error)?.message ?? e})`, { cause: e });
  }
  if (!st.isFile) throw new ImageError(path, "not a regular file, expected a video file");
}

const tail = (s: string) => s.trim().split("\n").slice(-4).join(" | ").slice(-600);

function parseRate(r: unknown): number | undefined {
  if (typeof r !== "string") return undefined;
  const [n, d] = r.split("/").map(Number);
  const v = d === undefined ? n : n / d;
  return Number.isFinite(v) && v > 0 ? v : undefined;
}

/** Size from `ffmpeg -i` diagnostics, for when ffprobe is missing. */
function parseFfmpegInfo(path: string, text: string): VideoInfo {
  const line = text.split("\n").find((l) => /Stream #\d+:\d+.*: Video: /.test(l));
  const m = line?.match(/, (\d+)x(\d+)[ ,]/);
  if (!line || !m) {
    throw new ImageError(path, `no video stream found by ffmpeg (${tail(text)})`);
  }
  let width = Number(m[1]), height = Number(m[2]);
  const rot = text.match(/rotation of (-?[\d.]+) degrees/);
  if (rot && Math.abs(Math.round(Number(rot[1]) / 90)) % 2 === 1) [width, height] = [height, width];
  const fps = line.match(/ ([\d.]+) fps/);
  return { width, height, fps: fps ? Number(fps[1]) : undefined };
}

/**
 * Size, frame count and frame rate of the first video stream, with `ffprobe` (falls back to
 * parsing `ffmpeg -i` when ffprobe is missing; then `frames` is unknown).
 */
export async function probeVideo(path: string, bins: FfmpegBinaries = {}): Promise<VideoInfo> {
  await checkFile(path);
  const ffprobe = bins.ffprobe ?? "ffprobe", ffmpeg = bins.ffmpeg ?? "ffmpeg";
  let res: RunResult | null = null;
  try {
    res = await run(path, ffprobe, [
      ...["-v", "error", "-select_streams", "v:0", "-of", "json"],
      ...["-show_entries", "stream=width,height,nb_frames,avg_frame_rate,r_frame_rate"],
      ...["-show_entries", "stream_side_data=rotation:stream_tags=rotate", path],
    ]);
  } catch (e) {
    if (!(e instanceof ImageError && e.cause instanceof Deno.errors.NotFound)) throw e;
  }
  if (res === null) {
    const r = await run(path, ffmpeg, ["-hide_banner", "-nostdin", "-i", path]);
    return parseFfmpegInfo(path, r.stderr); // exits 1 ("no output file"), the info is on stderr
  }
  if (res.code !== 0) {
    throw new ImageError(path, `unreadable video: ffprobe exit ${res.code} (${tail(res.stderr)})`);
  }
  const s = JSON.parse(new TextDecoder().decode(res.stdout))?.streams?.[0];
  if (!s || !(s.width > 0) || !(s.height > 0)) {
    throw new ImageError(path, "no video stream found by ffprobe");
  }
  let width = s.width as number, height = s.height as number;
  const rot = Number(
    s.side_data_list?.find((d: any) => d.rotation !== undefined)?.rotation ?? s.tags?.rotate ?? 0,
  );
  if (Math.abs(Math.round(rot / 90)) % 2 === 1) [width, height] = [height, width];
  const n = Number(s.nb_frames);
  return {
    width,
    height,
    frames: Number.isInteger(n) && n > 0 ? n : undefined,
    fps: parseRate(s.avg_frame_rate) ?? parseRate(s.r_frame_rate),
  };
}

/**
 * Decodes the frames of a video at `width` x `height` (squash-resize, PIL bicubic by default),
 * optionally resampled to `fps`, from `start` seconds, at most `maxFrames`.
 * Throws {@link ImageError} when ffmpeg is not installed ("install ffmpeg (apt-get install
 * ffmpeg)"), the file is missing or unreadable, or no frame could be decoded.
 */
export async function decodeVideo(path: string, opts: DecodeVideoOptions): Promise<RgbImage[]> {
  checkSize("decodeVideo", opts?.width, opts?.height);
  const { width, height, fps, start, maxFrames } = opts;
  if (fps !== undefined && !(Number.isFinite(fps) && fps > 0)) {
    throw new RangeError(`decodeVideo: fps must be a positive number, found ${fps}`);
  }
  if (start !== undefined && !(Number.isFinite(start) && start >= 0)) {
    throw new RangeError(`decodeVideo: start must be >= 0 seconds, found ${start}`);
  }
  if (maxFrames !== undefined && !(Number.isInteger(maxFrames) && maxFrames > 0)) {
    throw new RangeError(`decodeVideo: maxFrames must be a positive integer, found ${maxFrames}`);
  }
  const resample = opts.resample ?? "pil";
  if (resample !== "pil" && resample !== "ffmpeg") {
    throw new RangeError(`decodeVideo: resample must be "pil" or "ffmpeg", found ${resample}`);
  }
  const bin = opts.ffmpeg ?? "ffmpeg";
  await checkFile(path);
  // Frame size coming out of ffmpeg: native (PIL resize here) or already scaled.
  let fw = width, fh = height;
  const filters: string[] = [];
  if (fps !== undefined) filters.push(`fps=${fps}`);
  if (resample === "pil") {
    ({ width: fw, height: fh } = await probeVideo(path, opts));
    filters.push(`scale=${fw}:${fh}`); // a no-op at native size; guards against a misread size
  } else {
    filters.push(`scale=${width}:${height}:flags=bicubic`);
  }
  const args = ["-hide_banner", "-nostdin", "-v", "error"];
  if (start) args.push("-ss", String(start));
  args.push("-i", path, "-map", "0:v:0", "-vf", filters.join(","));
  if (maxFrames !== undefined) args.push("-frames:v", String(maxFrames));
  args.push("-f", "rawvideo", "-pix_fmt", "rgb24", "-");

  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(bin, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .spawn();
  } catch (e) {
    throw spawnError(path, bin, e);
  }
  const stderrP = new Response(child.stderr).text();
  const frameBytes = fw * fh * 3; // (fh,fw,3)
  const frames: RgbImage[] = [];
  let buf = new Uint8Array(frameBytes), fill = 0;
  const emit = () => {
    const rgb = resample === "pil" ? resizeUint8(buf, fw, fh, width, height, 3) : buf;
    const P = width * height, data = new Float32Array(3 * P); // (3,H,W)
    for (let c = 0; c < 3; c++) for (let i = 0; i < P; i++) data[c * P + i] = rgb[i * 3 + c] / 255;
    frames.push({ width, height, data });
    buf = new Uint8Array(frameBytes);
    fill = 0;
  };
  for await (const chunk of child.stdout) {
    let off = 0;
    while (off < chunk.length) {
      const n = Math.min(chunk.length - off, frameBytes - fill);
      buf.set(chunk.subarray(off, off + n), fill);
      fill += n;
      off += n;
      if (fill === frameBytes) emit();
    }
  }
  const [status, stderr] = await Promise.all([child.status, stderrP]);
  if (status.code !== 0) {
    throw new ImageError(path, `unreadable video: ffmpeg exit ${status.code} (${tail(stderr)})`);
  }
  if (fill !== 0) {
    throw new ImageError(
      path,
      `ffmpeg output ended inside a frame (${fill} of ${frameBytes} bytes)`,
    );
  }
  if (frames.length === 0) {
    throw new ImageError(
      path,
      `no video frames decoded${start ? ` (start ${start} s may be past the end)` : ""}`,
    );
  }
  return frames;
}
