#!/usr/bin/env bash
# The GPU-shaped paths on a real GPU, in one go, offline: on a machine with a GPU driver and no
# network, run from the repository root
#
#   bash tools/gpu_check.sh [OUT_DIR]        # default out/gpu_check
#
# It runs the kernel tests (every op and variant against its CPU reference) with the "gpu" kernel
# kind (LVM_KERNEL_KIND=gpu: shared-memory tiles) and then the "cpu" kind, then the bench
# (`deno task bench --json`), and writes OUT_DIR/gpu_check.json: the adapter, each kind's test
# counts and failures, and every bench line. Logs beside it.
#
# GPU_CHECK_TESTS (test paths) and GPU_CHECK_BENCH_FILTER (a bench --filter) narrow it; the bench
# lists each case's slowest kernels (`--profile`, GPU_CHECK_PROFILE kernels, default 10; 0: off);
# GPU_CHECK_TEST_TIMEOUT and GPU_CHECK_BENCH_TIMEOUT (seconds; default 1800 each) bound each test
# run and the bench, so a lease that is running out still brings back what finished: a stopped
# phase counts as failed with exit 124, and the bench lines written before it stopped are kept.
#
# What it expects to find (nothing is downloaded):
# - a Vulkan driver for the GPU (NVIDIA's, or Mesa's radv/anv; `vulkaninfo` lists it), or Metal /
#   DX12 where Deno uses those; DENO_WEBGPU_BACKEND may pick one (default: Deno's choice). NVIDIA's
#   Vulkan driver (libGLX_nvidia) also needs the Vulkan loader (libvulkan1) and libglvnd
#   (libGLdispatch): a bare CUDA container may lack both (Debian's libvulkan1 and libglvnd0 .debs,
#   unpacked with `dpkg -x`, serve; without them the adapter is null and every test fails at once);
# - Deno 2.9: `deno` on PATH, or DENO=/path/to/deno;
# - the npm packages the code imports, cached: prepare with `DENO_DIR=.deno-cache deno cache
#   packages/*/mod.ts tools/bench.ts packages/kernels/ops/*_test.ts` on a connected machine and
#   bring `.deno-cache` along (this script sets DENO_DIR=.deno-cache when that folder exists).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/gpu_check}"
mkdir -p "$OUT"
DENO="${DENO:-$(command -v deno || true)}"
[ -x "$DENO" ] || { echo "gpu_check: no deno (put Deno 2.9 on PATH or set DENO=...)" >&2; exit 1; }
[ -d .deno-cache ] && export DENO_DIR="${DENO_DIR:-$PWD/.deno-cache}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cached=()
[ -n "${DENO_DIR:-}" ] && cached=(--cached-only)
TESTS="${GPU_CHECK_TESTS:-packages/kernels/ packages/gpu/}"      # narrower: a few test files
T_TESTS="${GPU_CHECK_TEST_TIMEOUT:-1800}"
T_BENCH="${GPU_CHECK_BENCH_TIMEOUT:-1800}"
bench_args=()
[ -n "${GPU_CHECK_BENCH_FILTER:-}" ] && bench_args=(--filter "$GPU_CHECK_BENCH_FILTER")
# Each case's 10 slowest kernels (a profiled run after the timed ones); GPU_CHECK_PROFILE=0: none.
[ "${GPU_CHECK_PROFILE:-10}" != 0 ] && bench_args+=(--profile "${GPU_CHECK_PROFILE:-10}")

adapter=$("$DENO" eval --unstable-webgpu "${cached[@]}" '
  const a = await navigator.gpu?.requestAdapter({ powerPreference: "high-performance" });
  console.log(JSON.stringify(a ? { vendor: a.info.vendor, architecture: a.info.architecture,
    device: a.info.device, description: a.info.description, features: [...a.features].sort(),
    maxStorageBufferBindingSize: a.limits.maxStorageBufferBindingSize,
    maxComputeInvocationsPerWorkgroup: a.limits.maxComputeInvocationsPerWorkgroup } : null));' \
  2>"$OUT/adapter.log")
echo "gpu_check: adapter ${adapter:-none}" >&2

tests() { # KIND: the kernel tests in that kind; prints {"kind", "exit", "passed", "failed", "failures"}
  local kind="$1" log="$OUT/tests-$1.log"
  # shellcheck disable=SC2086
  LVM_KERNEL_KIND="$kind" timeout "$T_TESTS" "$DENO" test -A --unstable-webgpu "${cached[@]}" $TESTS >"$log" 2>&1
  local code=$?
  local summary passed failed
  summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E '^(ok|FAILED) \|' | tail -1)
  passed=$(echo "$summary" | grep -oE '[0-9]+ passed' | grep -oE '[0-9]+' || echo 0)
  failed=$(echo "$summary" | grep -oE '[0-9]+ failed' | grep -oE '[0-9]+' || echo 0)
  local failures
  failures=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -E ' \.\.\. FAILED' | sed 's/ \.\.\. FAILED.*//' |
    "$DENO" eval 'const t = await new Response(Deno.stdin.readable).text();
      console.log(JSON.stringify(t.split("\n").filter((l) => l.trim())));')
  echo "{\"kind\":\"$kind\",\"exit\":$code,\"passed\":${passed:-0},\"failed\":${failed:-0},\"failures\":${failures:-[]}}"
}
echo "gpu_check: kernel tests, gpu kind" >&2
t_gpu=$(tests gpu)
echo "gpu_check: kernel tests, cpu kind" >&2
t_cpu=$(tests cpu)
echo "gpu_check: bench" >&2
timeout "$T_BENCH" "$DENO" run -A --unstable-webgpu "${cached[@]}" tools/bench.ts --json "${bench_args[@]}" >"$OUT/bench.jsonl" \
  2>"$OUT/bench.log"
bench_exit=$?

"$DENO" eval "
  const lines = (await Deno.readTextFile('$OUT/bench.jsonl')).split('\n').filter((l) => l.startsWith('{'));
  const out = { created: new Date().toISOString(), adapter: ${adapter:-null},
    tests: [$t_gpu, $t_cpu], bench_exit: $bench_exit, bench: lines.map((l) => JSON.parse(l)) };
  await Deno.writeTextFile('$OUT/gpu_check.json', JSON.stringify(out, null, 1) + '\n');
  console.log('gpu_check: wrote $OUT/gpu_check.json (' + out.bench.length + ' bench lines)');
"
