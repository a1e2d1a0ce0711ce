/**
 * Video frames through the system `ffmpeg` (never bundled): frames are piped out as rawvideo rgb24
 * and, by default, resized here with the PIL-exact bicubic of resize.ts, so video frames get the
 * same preprocessing as still images (official pipeline: decode, PIL bicubic squash-resize).
 * A missing binary or an unreadable file is an {@link ImageError} that says what to do.
 * @module
 */
import { pathKind } from "@lvm/util/fs";
import { checkSize } from "./_check.ts";
import { ImageTooLargeError, maxImagePixels } from "./codec.ts";
import { ImageError, type RgbImage } from "./image.ts";
import { resizeUint8 } from "./resize.ts";

/** What every "ffmpeg is missing" message says to do. */
export const FFMPEG_INSTALL_HINT = "install ffmpeg (apt-get install ffmpeg)";
const INSTALL = FFMPEG_INSTALL_HINT;

/**
 * Whether `bin` (default "ffmpeg") runs: `bin -version` exits 0. Never throws: a missing program
 * (which `Deno.Command` reports by throwing synchronously), a permission problem or a failing
 * run are all `false`.
 */
export async function ffmpegAvailable(bin = "ffmpeg"): Promise<boolean> {
  try {
    const out = await new Deno.Command(bin, {
      args: ["-version"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}

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
  let kind;
  try {
    kind = await pathKind(path);
  } catch (e) {
    const msg = (e as Error)?.message?.replace(`${path}: `, "") ?? e;
    throw new ImageError(path, `cannot read file (${msg})`, { cause: e });
  }
  if (kind === null) throw new ImageError(path, "video file not found");
  if (kind !== "file") throw new ImageError(path, "not a regular file, expected a video file");
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
    const limit = maxImagePixels();
    if (fw * fh > limit) throw new ImageTooLargeError(path, fw, fh, limit);
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

// ---- Streaming frames at native size (the data pipeline's reader) and counting them.

/** The error of an interrupted phase (a DOMException named "AbortError", as fetch uses). */
function interrupted(phase: string): DOMException {
  return new DOMException(`interrupted while ${phase}`, "AbortError");
}
function throwIfAborted(signal: AbortSignal | undefined, phase: string): void {
  if (signal?.aborted) throw interrupted(phase);
}

/**
 * A child's stderr, drained as it comes (so ffmpeg never blocks on a full pipe), keeping only
 * the last `max` characters.
 */
function stderrTail(stream: ReadableStream<Uint8Array>, max = 4096): Promise<string> {
  return (async () => {
    const dec = new TextDecoder();
    let s = "";
    try {
      for await (const c of stream) {
        s += dec.decode(c, { stream: true });
        if (s.length > 2 * max) s = s.slice(-max);
      }
    } catch { /* the stream was cancelled */ }
    return s.slice(-max);
  })();
}

/** ffmpeg's last stderr lines, for an error message. */
export function lastLines(stderr: string, n = 4): string {
  const lines = stderr.trim().split("\n").map((l) => l.trim()).filter((l) => l);
  return lines.length ? lines.slice(-n).join(" | ").slice(-600) : "ffmpeg printed nothing";
}

/** ffmpeg exits 255 when it received SIGINT/SIGTERM (the terminal's Ctrl-C reaches it too). */
const ffmpegInterrupted = (st: Deno.CommandStatus) => st.signal !== null || st.code === 255;

function rawArgs(path: string, scale: string): string[] {
  return [
    "-hide_banner",
    "-nostdin",
    "-v",
    "error",
    "-i",
    path,
    "-map",
    "0:v:0",
    "-vf",
    `scale=${scale}`,
    "-f",
    "rawvideo",
    "-pix_fmt",
    "rgb24",
    "-",
  ]; // deno-fmt-ignore
}

function spawnRaw(path: string, bin: string, args: string[]): Deno.ChildProcess {
  try {
    return new Deno.Command(bin, { args, stdin: "null", stdout: "piped", stderr: "piped" })
      .spawn();
  } catch (e) {
    throw new ImageError(path, `cannot run ${bin} (${(e as Error).message}): ${INSTALL}`, {
      cause: e,
    });
  }
}

/** Options of {@link countVideoFrames} and {@link VideoFrameReader}. */
export interface VideoReadOptions extends FfmpegBinaries {
  /** Stops the work between frames; an aborted ffmpeg is killed (an AbortError). */
  signal?: AbortSignal;
}

/**
 * Frames of a video: the container's count, else counted by decoding at 2x2. A video ffmpeg
 * cannot decode (non-zero exit, or no frame) is an {@link ImageError} naming the file with
 * ffmpeg's last stderr lines. An aborted `signal` kills ffmpeg and throws an AbortError.
 */
export async function countVideoFrames(
  path: string,
  opts: VideoReadOptions = {},
): Promise<number> {
  const { signal } = opts;
  const phase = `counting the frames of ${path}`;
  throwIfAborted(signal, phase);
  const info = await probeVideo(path, opts);
  if (info.frames) return info.frames;
  throwIfAborted(signal, phase);
  const child = spawnRaw(path, opts.ffmpeg ?? "ffmpeg", rawArgs(path, "2:2"));
  const err = stderrTail(child.stderr);
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch { /* already exited */ }
  };
  signal?.addEventListener("abort", kill, { once: true });
  try {
    let bytes = 0;
    for await (const c of child.stdout) bytes += c.length;
    const [status, stderr] = await Promise.all([child.status, err]);
    if (signal?.aborted || ffmpegInterrupted(status)) throw interrupted(phase);
    if (status.code !== 0) {
      throw new ImageError(
        path,
        `undecodable video: ffmpeg exit ${status.code} while counting frames (${
          lastLines(stderr)
        })`,
      );
    }
    const n = Math.floor(bytes / 12);
    if (n === 0) {
      throw new ImageError(
        path,
        `undecodable video: ffmpeg decoded no frame (${lastLines(stderr)})`,
      );
    }
    return n;
  } finally {
    signal?.removeEventListener("abort", kill);
  }
}

/**
 * Reads a video forward, frame by frame at native size (so a long video never sits in memory),
 * restarting ffmpeg to go back. A frame size over the decoding pixel limit (see
 * {@link maxImagePixels}) is refused before ffmpeg starts. When the stream ends early, the error
 * names the file, the frame, ffmpeg's exit code and its last stderr lines.
 */
export class VideoFrameReader {
  #child: Deno.ChildProcess | null = null;
  #stderr: Promise<string> = Promise.resolve("");
  #reader: ReadableStreamDefaultReader<Uint8Array> | null = null;
  #pending: Uint8Array = new Uint8Array(0);
  #next = 0;
  #w = 0;
  #h = 0;
  #frames: number | undefined;
  /** Kills the decoder when the signal aborts (a blocked read then ends). */
  #kill = () => {
    try {
      this.#child?.kill("SIGKILL");
    } catch { /* already exited */ }
  };
  constructor(
    readonly path: string,
    readonly opts: VideoReadOptions & { maxPixels?: number } = {},
  ) {}

  get #signal(): AbortSignal | undefined {
    return this.opts.signal;
  }

  async #start(): Promise<void> {
    await this.close();
    const info = await probeVideo(this.path, this.opts);
    const limit = maxImagePixels(this.opts.maxPixels);
    if (info.width * info.height > limit) {
      throw new ImageTooLargeError(this.path, info.width, info.height, limit);
    }
    this.#w = info.width;
    this.#h = info.height;
    this.#frames = info.frames;
    throwIfAborted(this.#signal, `decoding ${this.path}`);
    this.#child = spawnRaw(
      this.path,
      this.opts.ffmpeg ?? "ffmpeg",
      rawArgs(this.path, `${this.#w}:${this.#h}`),
    );
    this.#stderr = stderrTail(this.#child.stderr);
    this.#signal?.addEventListener("abort", this.#kill, { once: true });
    this.#reader = this.#child.stdout.getReader();
    this.#pending = new Uint8Array(0);
    this.#next = 0;
  }

  /** The error for a stream that ended before frame `#next`. */
  async #ended(): Promise<Error> {
    const child = this.#child!;
    const [status, stderr] = await Promise.all([child.status, this.#stderr]);
    this.#signal?.removeEventListener("abort", this.#kill);
    this.#child = null;
    this.#reader = null;
    if (this.#signal?.aborted || ffmpegInterrupted(status)) {
      return interrupted(`decoding ${this.path}`);
    }
    const of = this.#frames ? ` of ${this.#frames} probed` : "";
    return new ImageError(
      this.path,
      status.code !== 0
        ? `undecodable video: ffmpeg exit ${status.code} before frame ${this.#next}${of} ` +
          `(${lastLines(stderr)})`
        : `video ended at frame ${this.#next} (fewer frames than probed${of}; ${
          lastLines(stderr)
        })`,
    );
  }

  /** Consumes the next frame's bytes; copies them out only when `keep` (skipping is cheap). */
  async #readFrame(keep: boolean): Promise<Uint8Array | null> {
    throwIfAborted(this.#signal, `decoding ${this.path}`);
    const need = this.#w * this.#h * 3;
    const out = keep ? new Uint8Array(need) : null;
    let have = 0;
    while (have < need) {
      if (!this.#pending.length) {
        const { value, done } = await this.#reader!.read();
        if (done) throw await this.#ended();
        this.#pending = value;
      }
      const k = Math.min(need - have, this.#pending.length);
      out?.set(this.#pending.subarray(0, k), have);
      this.#pending = this.#pending.subarray(k);
      have += k;
    }
    this.#next++;
    return out;
  }

  /** Frame `i` at native size (going back restarts the decoder). */
  async frame(i: number): Promise<RgbImage> {
    if (!this.#child || i < this.#next) await this.#start();
    while (this.#next < i) await this.#readFrame(false);
    const rgb = (await this.#readFrame(true))!; // (H,W,3)
    const P = this.#w * this.#h, data = new Float32Array(3 * P); // (3,H,W)
    for (let c = 0; c < 3; c++) for (let k = 0; k < P; k++) data[c * P + k] = rgb[k * 3 + c] / 255;
    return { width: this.#w, height: this.#h, data };
  }

  /** Stops the decoder. */
  async close(): Promise<void> {
    this.#signal?.removeEventListener("abort", this.#kill);
    if (this.#child) {
      try {
        await this.#reader?.cancel();
      } catch { /* ignore */ }
      try {
        this.#child.kill();
      } catch { /* already exited */ }
      await this.#child.status.catch(() => {});
      await this.#stderr;
    }
    this.#child = null;
    this.#reader = null;
  }
}
