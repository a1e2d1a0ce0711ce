/**
 * Both kernel kinds on this adapter: the suite's other tests run the kind the adapter gets
 * (on lavapipe "cpu": texture-fed register tiles); this one runs the kernel, GPU-context,
 * transformer and tokenizer tests again with `LVM_KERNEL_KIND=gpu` (shared-memory tiles and the
 * implicit-GEMM convolution, what real GPUs get), so the GPU-shaped paths are checked against their
 * CPU references and the PyTorch fixtures on every CI run too.
 * @module
 */
import { assert } from "@lvm/util/testing";

const ROOT = new URL("..", import.meta.url).pathname;

Deno.test("the kernel, transformer and tokenizer tests pass with LVM_KERNEL_KIND=gpu", async () => {
  const kind = Deno.env.get("LVM_KERNEL_KIND");
  if (kind === "gpu") return; // already the whole suite's kind: nothing to add
  // The switch reaches the device context (else the run below would just repeat the default kind).
  const probe = await new Deno.Command(Deno.execPath(), {
    args: ["eval", 'import { getGpu } from "@lvm/gpu"; console.log((await getGpu()).kind);'],
    cwd: ROOT,
    env: { LVM_KERNEL_KIND: "gpu", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(
    new TextDecoder().decode(probe.stdout).trim() === "gpu",
    "LVM_KERNEL_KIND=gpu not honoured",
  );
  const r = await new Deno.Command(Deno.execPath(), {
    args: [
      "test",
      "-A",
      "--unstable-webgpu",
      "packages/kernels/",
      "packages/gpu/",
      "packages/transformer/",
      "packages/tokenizer/",
    ],
    cwd: ROOT,
    env: { LVM_KERNEL_KIND: "gpu", NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const out = new TextDecoder().decode(r.stdout) + new TextDecoder().decode(r.stderr);
  const summary = out.split("\n").filter((l) => /^(ok|FAILED) \|/.test(l)).pop() ?? "";
  console.log(`LVM_KERNEL_KIND=gpu: ${summary}`);
  assert(r.success && /\b0 failed\b/.test(summary), `gpu kind:\n${out.slice(-4000)}`);
});
