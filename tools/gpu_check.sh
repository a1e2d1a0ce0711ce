#!/usr/bin/env bash
# The GPU-shaped paths on a real GPU, in one go, offline: on a machine with a GPU driver and no
# network, run from the repository root
#
#   bash tools/gpu_check.sh [OUT_DIR]        # default out/gpu_check
#
# It runs the kernel tests (every op and variant against its CPU reference) with the "gpu" kernel
# kind (LVM_KERNEL_KIND=gpu: shared-memory tiles) and then the "cpu" kind, then the tiled matmul's
# tile sweep (tools/tune_tiled.ts) and the bench (`deno task bench --json`), and writes
# OUT_DIR/gpu_check.json: the adapter, the GPU_CHECK_* settings it ran with, each kind's test counts
# and failures, the sweep's and the bench's lines. Logs beside it.
#
# GPU_CHECK_TESTS (test paths) and GPU_CHECK_BENCH_FILTER (bench --filter texts, several separated
# by '|': one bench run each, within the one time limit) narrow it; the bench
# lists each case's slowest kernels (`--profile`, GPU_CHECK_PROFILE kernels, default 10; 0: off);
# GPU_CHECK_TEST_TIMEOUT and GPU_CHECK_BENCH_TIMEOUT (seconds; default 1800 each) bound each test
# run and the bench (and the sweep), so a lease that is running out still brings back what
# finished: a stopped phase counts as failed with exit 124, and the lines written before it stopped
# are kept. GPU_CHECK_JOBS=N runs N test files at once (`deno test --parallel`; default 1);
# GPU_CHECK_KINDS (default "gpu cpu") names the kinds tested; GPU_CHECK_TUNE=0 skips the sweep
# (quick: its smoke run); GPU_CHECK_REPS / GPU_CHECK_ROUNDS pass --reps / --rounds to the bench,
# GPU_CHECK_PROFILE_RUNS (default 3) its --profile-runs.
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
# GPU_CHECK_WARMUP seconds (default 3) of matmuls before the sweep and before each bench run: the
# H200 idled at 345 MHz and the first cases ran up to 2x slower than the same ones later.
bench_args=(--warmup "${GPU_CHECK_WARMUP:-3}")
# Each case's 10 slowest kernels (a profiled run after the timed ones); GPU_CHECK_PROFILE=0: none.
# GPU_CHECK_PROFILE_RUNS (default 3) profiled runs per case, the one of least GPU time kept: the
# H200's clock moved between single profiled runs (the same kernels 2x apart across cases).
[ "${GPU_CHECK_PROFILE:-10}" != 0 ] &&
  bench_args+=(--profile "${GPU_CHECK_PROFILE:-10}" --profile-runs "${GPU_CHECK_PROFILE_RUNS:-3}")
# GPU_CHECK_REPS / GPU_CHECK_ROUNDS: the bench's --reps and --rounds (an A/B of whole steps, whose
# wall time spread by 30% between single runs on the H200, wants several of each).
[ -n "${GPU_CHECK_REPS:-}" ] && bench_args+=(--reps "$GPU_CHECK_REPS")
[ -n "${GPU_CHECK_ROUNDS:-}" ] && bench_args+=(--rounds "$GPU_CHECK_ROUNDS")

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
  local par=()
  [ "${GPU_CHECK_JOBS:-1}" -gt 1 ] && par=(--parallel)
  LVM_KERNEL_KIND="$kind" DENO_JOBS="${GPU_CHECK_JOBS:-1}" timeout "$T_TESTS" "$DENO" test -A \
    --unstable-webgpu "${cached[@]}" "${par[@]}" $TESTS >"$log" 2>&1
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
t_all=""
for kind in ${GPU_CHECK_KINDS:-gpu cpu}; do
  echo "gpu_check: kernel tests, $kind kind" >&2
  t_all="$t_all${t_all:+,}$(tests "$kind")"
done
: >"$OUT/tune.jsonl"
GPU_CHECK_TUNE="${GPU_CHECK_TUNE:-1}"
if [ "$GPU_CHECK_TUNE" != 0 ]; then
  echo "gpu_check: tiled matmul sweep" >&2
  quick=()
  [ "$GPU_CHECK_TUNE" = quick ] && quick=(--quick)
  timeout "$T_BENCH" "$DENO" run -A --unstable-webgpu "${cached[@]}" tools/tune_tiled.ts --json \
    --warmup "${GPU_CHECK_WARMUP:-3}" "${quick[@]}" >"$OUT/tune.jsonl" 2>"$OUT/tune.log"
fi
echo "gpu_check: bench" >&2
bench_exit=0
: >"$OUT/bench.jsonl"
: >"$OUT/bench.log"
deadline=$((SECONDS + T_BENCH))
IFS='|' read -r -a filters <<<"${GPU_CHECK_BENCH_FILTER:-}"
[ ${#filters[@]} -eq 0 ] && filters=("")
for f in "${filters[@]}"; do
  left=$((deadline - SECONDS))
  [ "$left" -le 0 ] && { bench_exit=124; break; }
  fa=()
  [ -n "$f" ] && fa=(--filter "$f")
  timeout "$left" "$DENO" run -A --unstable-webgpu "${cached[@]}" tools/bench.ts --json "${fa[@]}" \
    "${bench_args[@]}" >>"$OUT/bench.jsonl" 2>>"$OUT/bench.log"
  code=$?
  [ "$code" -ne 0 ] && bench_exit=$code
done

"$DENO" eval "
  const read = async (f) => (await Deno.readTextFile(f)).split('\n').filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l));
  const env = (k) => Deno.env.get(k) ?? null;
  const settings = Object.fromEntries(['GPU_CHECK_TESTS', 'GPU_CHECK_KINDS', 'GPU_CHECK_JOBS',
    'GPU_CHECK_TUNE', 'GPU_CHECK_BENCH_FILTER', 'GPU_CHECK_PROFILE', 'GPU_CHECK_WARMUP',
    'GPU_CHECK_TEST_TIMEOUT', 'GPU_CHECK_BENCH_TIMEOUT', 'GPU_CHECK_REPS', 'GPU_CHECK_ROUNDS',
    'GPU_CHECK_PROFILE_RUNS']
    .map((k) => [k, env(k)]));
  const out = { created: new Date().toISOString(), adapter: ${adapter:-null}, settings,
    tests: [$t_all], tune: await read('$OUT/tune.jsonl'), bench_exit: $bench_exit,
    bench: await read('$OUT/bench.jsonl') };
  await Deno.writeTextFile('$OUT/gpu_check.json', JSON.stringify(out, null, 1) + '\n');
  console.log('gpu_check: wrote $OUT/gpu_check.json (' + out.bench.length + ' bench lines)');
"
