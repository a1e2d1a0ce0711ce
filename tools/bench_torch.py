#!/usr/bin/python3
"""PyTorch side of `deno task bench --torch`: the same cases as tools/bench/*.ts, on the CPU.

Prints one JSON line per case: {"name", "shape", "ms", "per", "run_ms", "gflops"?, "gbps"?,
"per_s"?, "unit"?, "note"?, "torch_threads"}, with the SAME name/shape strings as the TypeScript case
it is compared with (tools/bench.ts pairs them). As in tools/bench/_harness.ts, a run may do `per`
ops (e.g. 16 small matmuls): `ms` is the best of --reps runs divided by `per` (time per op),
`run_ms` the best run's time, and the throughput is a run's flops/bytes/items over its time.

Usage: /usr/bin/python3 tools/bench_torch.py [--filter TEXT] [--reps N] [--list] [--serve]

`--serve` (how `deno task bench --torch` runs it): reads one case key ("name shape") per line on
stdin, runs the case of exactly that key (none where PyTorch has no such case), prints its result
line, then {"done": key}; until stdin closes. So each PyTorch case runs right after ours, and a slow
phase of a shared machine falls on both sides of a ratio alike.

Cases live in a registry, `CASES` (key "name shape" -> Case); other files can add theirs with
`register(name, shape, make, per=..., flops=..., bytes=..., items=..., unit=..., note=...)`, where
`make()` builds inputs and returns a zero-argument function doing one run (flops/bytes/items are of
one run, all `per` ops together).

Environment: torch.set_num_threads(os.cpu_count()), or $TORCH_THREADS when set; the count is
printed. Debian's torch uses OpenBLAS; an inherited OPENBLAS_CORETYPE (e.g. Haswell) changes its
speed a lot: the figures are reported as the environment gives them, and the environment is printed
to stderr. `deno task bench --torch` sets glibc's MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ and
MALLOC_TOP_PAD_ (unless set) so that freed tensors' memory is reused instead of faulted in again.
"""

import argparse
import json
import os
import sys
import time

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the `python3` on PATH may be a pyenv one without torch: use Debian's
    if os.path.realpath(sys.executable) != os.path.realpath("/usr/bin/python3") and os.path.exists(
        "/usr/bin/python3"
    ):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    raise


class Case:
    """One measured thing: `make()` returns the function timed (one run of `per` ops)."""

    def __init__(self, name, shape, make, per=1, flops=None, bytes=None, items=None, unit=None,
                 note=None, reps=None):
        if not isinstance(per, int) or per < 1:
            raise ValueError(f"case {name} {shape}: per must be a positive integer, found {per!r}")
        self.name, self.shape, self.make, self.per, self.reps = name, shape, make, per, reps
        self.flops, self.bytes, self.items, self.unit, self.note = flops, bytes, items, unit, note


CASES = {}


def register(name, shape, make, **kw):
    """Adds a case under "name shape" (the same strings as the TypeScript case)."""
    CASES[f"{name} {shape}"] = Case(name, shape, make, **kw)


def set_threads():
    """torch's intra-op threads: $TORCH_THREADS, else os.cpu_count(). Returns the count in use."""
    n = int(os.environ.get("TORCH_THREADS") or os.cpu_count() or 1)
    torch.set_num_threads(n)
    return torch.get_num_threads()


def result(name, shape, run_s, per=1, flops=None, bytes=None, items=None, unit=None, note=None):
    """The result dict of a case whose best run of `per` ops took `run_s` seconds."""
    r = {"name": name, "shape": shape, "ms": round(run_s * 1e3 / per, 3), "per": per,
         "run_ms": round(run_s * 1e3, 3)}
    if flops:
        r["gflops"] = round(flops / run_s / 1e9, 2)
    if bytes:
        r["gbps"] = round(bytes / run_s / 1e9, 3)
    if items:
        r["per_s"] = round(items / run_s, 2)
        r["unit"] = unit or "items"
    if note:
        r["note"] = note
    return r


def run_case(c, reps=None):
    """Warm-up, then best of `reps` runs (None: the case's own, else 5)."""
    reps = reps or c.reps or 5
    fn = c.make()
    # A case that uses autograd marks its function with `fn.needs_grad = True`.
    ctx = torch.enable_grad() if getattr(fn, "needs_grad", False) else torch.no_grad()
    with ctx:
        fn()
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return result(c.name, c.shape, best, c.per, c.flops, c.bytes, c.items, c.unit, c.note)


# ---------------------------------------------------------------------------------------------
# matmul (tools/bench/matmul.ts)


def mm_case(M, K, N, per, linear=False, f16=False, suffix="", name="matmul"):
    """C = A B (or x W^T for `linear`), `per` products per run, f32 compute.

    f16 weights: stored in half and converted per call (torch on CPU has no fast f16 matmul),
    which is what a half-precision weight costs there.
    """

    def make():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(M, K, generator=g) * 2 - 1
        w = (torch.rand(N, K, generator=g) - 0.5) * 0.1 if linear else torch.rand(K, N, generator=g)
        out = torch.empty(M, N)
        if f16:
            w = w.half()

        def run():
            for _ in range(per):
                ww = w.float() if f16 else w
                if linear:
                    torch.matmul(x, ww.t(), out=out)
                else:
                    torch.matmul(x, ww, out=out)

        return run

    w_bytes = K * N * (2 if f16 else 4)
    register(
        name,
        f"{M}x{K}x{N}{suffix}",
        make,
        per=per,
        flops=2 * M * K * N * per,
        bytes=w_bytes * per if M <= 4 else None,
    )


def backward_case(M, K, N, per):
    """dx = dy W and dW += dy^T x of a Linear (what autograd does for F.linear)."""

    def make():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(M, K, generator=g)
        w = torch.rand(N, K, generator=g)
        dy = torch.rand(M, N, generator=g)
        dW = torch.zeros(N, K)

        def run():
            for _ in range(per):
                torch.matmul(dy, w)  # dx (M, K)
                dW.addmm_(dy.t(), x)  # dW (N, K)

        return run

    register("linear_backward", f"{M}x{K}x{N}", make, per=per, flops=4 * M * K * N * per)


mm_case(256, 256, 256, 128)
mm_case(512, 512, 512, 32)
mm_case(1024, 1024, 1024, 8)
mm_case(2048, 2048, 2048, 2)
mm_case(512, 640, 1664, 16, linear=True, suffix=" linear")
mm_case(512, 640, 1664, 16, linear=True, suffix=" linear packed")  # torch has nothing to pack
mm_case(512, 1664, 640, 16, linear=True, suffix=" linear")
mm_case(1024, 4096, 1024, 4, linear=True, suffix=" linear")
mm_case(16, 640, 1664, 64, linear=True, suffix=" linear packed")  # a 16-token prefill
mm_case(16, 1664, 640, 64, linear=True, suffix=" linear packed")
backward_case(512, 640, 1664, 1)
mm_case(1, 4096, 4096, 8, linear=True, suffix=" linear")
mm_case(1, 4096, 4096, 8, linear=True, f16=True, suffix=" linear f16")
mm_case(1, 4096, 4096, 2, linear=True, suffix=" linear unpacked")
mm_case(1, 4096, 4096, 2, linear=True, f16=True, suffix=" linear f16 unpacked")


# ---------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--filter", default=None, help='only cases whose "name shape" contains TEXT')
    ap.add_argument("--reps", type=int, default=None,
                    help="timed runs per case, best kept (default: the case's own, else 5)")
    ap.add_argument("--list", action="store_true", help="print the case keys and exit")
    ap.add_argument("--serve", action="store_true",
                    help='run the cases whose keys come on stdin, one per line (see the module doc)')
    args = ap.parse_args()
    if args.reps is not None and args.reps < 1:
        ap.error(f"--reps must be a positive integer, found {args.reps}")
    threads = set_threads()
    keys = [k for k in CASES if not args.filter or args.filter in k]
    if args.list:
        print("\n".join(keys))
        return
    env = {k: os.environ.get(k)
           for k in ("TORCH_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                     "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")}
    print(
        f"torch {torch.__version__}, {threads} threads (os.cpu_count() {os.cpu_count()}), "
        f"env {json.dumps(env)}",
        file=sys.stderr,
    )
    emit = lambda r: print(json.dumps({**r, "torch_threads": threads}), flush=True)  # noqa: E731
    if args.serve:
        for line in sys.stdin:
            key = line.strip()
            if key:
                try:
                    for r in run_selected(lambda k, key=key: k == key, args.reps):
                        emit(r)
                except Exception as e:  # one case failing does not end the others
                    print(f"bench_torch.py: {key}: {type(e).__name__}: {e}", file=sys.stderr)
                print(json.dumps({"done": key}), flush=True)
        return
    for r in run_selected(args.filter, args.reps):
        emit(r)


def run_selected(filt, reps):
    """Yields the result of every case selected by `filt` (None, a substring, or a predicate)."""
    for k in CASES:
        if not filt or (filt(k) if callable(filt) else filt in k):
            yield run_case(CASES[k], reps)
    # The model-level cases live beside this file (same name/shape strings as tools/bench/*.ts).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_torch_tokenizer
    import bench_torch_transformer

    yield from bench_torch_transformer.results(filt, reps)
    yield from bench_torch_tokenizer.results(filt, reps)


if __name__ == "__main__":
    main()
