/**
 * PyTorch's side of `deno task bench --torch`: tools/bench_torch.py run as a server (`--serve`)
 * that takes one case key ("name shape") per line on stdin and answers with that case's result
 * line, then `{"done": key}`. tools/bench.ts asks for each case right after timing ours, so the two
 * halves of a ratio run seconds apart: a slow phase of a shared machine (this VM's last for seconds
 * to minutes and hit lavapipe's threads harder than PyTorch's) then falls on both sides alike,
 * where running all of ours and then all of PyTorch's put them minutes apart.
 * @module
 */
import type { BenchResult } from "./_harness.ts";

/**
 * The PyTorch case our case is compared with: its own key, except that our GPU-sampled greedy
 * decode ("transformer decode gpu-sampled S greedy") is compared with PyTorch's greedy decode loop
 * of the same prompt and length ("transformer decode S").
 */
export function torchKey(name: string, shape: string): string {
  if (name === "transformer decode gpu-sampled" && shape.endsWith(" greedy")) {
    return `transformer decode ${shape.slice(0, -" greedy".length)}`;
  }
  return `${name} ${shape}`;
}

/** One bench_torch.py --serve process. */
export class TorchServer {
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #lines: AsyncIterator<string>;
  #ended = false;

  private constructor(child: Deno.ChildProcess) {
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#lines = readLines(child.stdout)[Symbol.asyncIterator]();
  }

  /**
   * Starts the server: interpreter $PYTHON (default python3), the script beside tools/bench.ts,
   * `--reps` passed on. Throws where the interpreter cannot be started.
   */
  static start(reps: number | undefined): TorchServer {
    const script = new URL("../bench_torch.py", import.meta.url).pathname;
    const python = Deno.env.get("PYTHON") || "python3";
    // glibc keeps freed memory for reuse (unless the caller set these): by default every large
    // tensor PyTorch frees goes back to the OS and the next one faults its pages in again, which
    // on a VM costs more than the arithmetic (a 128-channel 3x3 conv at 256x256: 309 ms, 206 of
    // them in the kernel, 24.6k page faults; 68 ms with these). Our side reuses its buffers.
    const env: Record<string, string> = {};
    for (const k of ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]) {
      if (Deno.env.get(k) === undefined) env[k] = String(2 ** 34);
    }
    if (Deno.env.get("MALLOC_TOP_PAD_") === undefined) env.MALLOC_TOP_PAD_ = String(2 ** 30);
    const args = [script, "--serve", ...(reps !== undefined ? ["--reps", String(reps)] : [])];
    const child = new Deno.Command(python, {
      args,
      env,
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    return new TorchServer(child);
  }

  /**
   * Runs PyTorch's case of this key: its result, or null where PyTorch has no such case (or it
   * failed; bench_torch.py says why on stderr). Throws where the server has ended.
   */
  async run(key: string): Promise<BenchResult | null> {
    if (this.#ended) throw new Error("bench_torch.py has ended");
    const ended = async () => {
      this.#ended = true;
      const status = await this.#child.status;
      return new Error(`bench_torch.py ended (exit code ${status.code}) before "${key}" was run`);
    };
    try {
      await this.#writer.write(new TextEncoder().encode(`${key}\n`));
    } catch {
      throw await ended(); // the server is gone (a broken pipe)
    }
    let found: BenchResult | null = null;
    for (;;) {
      const next = await this.#lines.next();
      if (next.done) throw await ended();
      if (!next.value.startsWith("{")) continue;
      const msg = JSON.parse(next.value);
      if (msg.done === key) return found;
      if (`${msg.name} ${msg.shape}` === key) found = msg as BenchResult;
    }
  }

  /** Closes stdin (the server then exits) and waits for it. */
  async close(): Promise<void> {
    try {
      await this.#writer.close();
    } catch { /* already gone */ }
    if (!this.#ended) {
      for (;;) if ((await this.#lines.next()).done) break;
      this.#ended = true;
    }
    await this.#child.status;
  }
}

/** The lines of a byte stream, as they arrive. */
async function* readLines(stream: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const bytes of stream) {
    buf += dec.decode(bytes, { stream: true });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      yield buf.slice(0, i);
      buf = buf.slice(i + 1);
    }
  }
  if (buf) yield buf;
}
