/**
 * The README's main command, `deno task demo`, end to end in its `--quick` form: every stage runs
 * (tokenizer, dataset, model, eval, image completion) and the result strip is a real PNG of the
 * prompt (4 frames) plus the generated frame.
 */
import { loadImage } from "@lvm/image";
import { join } from "node:path";

Deno.test("deno task demo --quick", async () => {
  const out = await Deno.makeTempDir({ prefix: "lvm-demo-" });
  try {
    const main = new URL("../apps/demo/main.ts", import.meta.url).pathname;
    const r = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", main, "--quick", "--out", out],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(r.stderr);
    if (!r.success) throw new Error(`demo exited ${r.code}:\n${stderr.slice(-3000)}`);
    for (const stage of ["train tokenizer", "train dataset", "train model", "train eval"]) {
      if (!stderr.includes(`== ${stage}: done`)) throw new Error(`stage "${stage}" did not finish`);
    }
    if (!/held-out PSNR [\d.]+ dB/.test(stderr)) throw new Error("no held-out PSNR reported");
    const stdout = new TextDecoder().decode(r.stdout);
    if (
      !/next frame: \d+\/64 generated codes equal the true frame's codes; PSNR [\d.]+ dB/.test(
        stdout,
      )
    ) {
      throw new Error(`no next-frame comparison reported:\n${stdout}`);
    }
    const strip = await loadImage(join(out, "result", "strip.png"));
    const next = await loadImage(join(out, "result", "next-1.png"));
    if (next.width !== 32 || next.height !== 32) {
      throw new Error(`next-1.png is ${next.width}x${next.height}, expected 32x32`);
    }
    // 4 prompt frames + 1 generated, 32 px each, 2 px gaps.
    if (strip.width !== 5 * 32 + 4 * 2 || strip.height !== 32) {
      throw new Error(`strip.png is ${strip.width}x${strip.height}, expected 168x32`);
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});
