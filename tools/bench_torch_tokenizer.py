#!/usr/bin/python3
"""PyTorch side of tools/bench/tokenizer.ts: the VQGAN's encode and decode of one 256x256 image with
the `lvm` config (random weights, f32) and a training step of the `tiny` preset, printed as JSON
lines whose `name` and `shape` match the WebGPU cases so `deno task bench --torch` can pair them.

    /usr/bin/python3 tools/bench_torch_tokenizer.py [--filter TEXT] [--reps N]

tools/bench_torch.py can import it: `from bench_torch_tokenizer import results` and print each dict
of `results(filter, reps)` (reps None: 2 runs of encode/decode, 3 of the training step, as
tools/bench/tokenizer.ts). Threads: $TORCH_THREADS, else os.cpu_count(). The model math is tools/ref_vqgan.py's (open-muse VQGANModel), here in f32
under torch.no_grad() for encode/decode; the training step is forward + backward of the same loss as
@lvm/tokenizer (L2 + codebook + 0.25 commitment, straight-through) and torch.optim.AdamW.
"""

import argparse
import json
import os
import sys
import time

try:
    import torch
except ImportError:  # the `python3` on PATH may be a pyenv one without torch: use Debian's
    if os.path.realpath(sys.executable) != "/usr/bin/python3" and os.path.exists("/usr/bin/python3"):
        os.execv("/usr/bin/python3", ["/usr/bin/python3", *sys.argv])
    raise

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_vqgan import LVM_CONFIG, decode_latent, distances, encode_features, lookup, param_specs  # noqa: E402

# Same as packages/tokenizer/config.ts PRESETS.tiny.
TINY_CONFIG = dict(LVM_CONFIG, resolution=32, hidden_channels=64, channel_mult=[1, 1, 2], num_res_blocks=1,
                   z_channels=32, num_embeddings=512, quantized_embed_dim=32)
TINY_B = 8
TINY_LOG = 10  # training steps per timed run (the trainer's default --log-every; tools/bench/tokenizer.ts)


def flops(c):
    """Conv FLOPs (2 x MACs) + code search of one image: (encode, decode), as tools/bench/tokenizer.ts."""
    hid, mult, nrb, n = c["hidden_channels"], c["channel_mult"], c["num_res_blocks"], len(c["channel_mult"])
    R = c["resolution"]
    G = R >> (n - 1)

    def conv(ci, co, k, s):
        return 2 * ci * co * k * k * s * s

    def res(ci, co, s):
        return conv(ci, co, 3, s) + conv(co, co, 3, s) + (conv(ci, co, 1, s) if ci != co else 0)

    mid = hid * mult[-1]
    enc, side, in_mult = conv(3, hid, 3, R), R, [1] + list(mult)
    for i in range(n):
        ci = hid * in_mult[i]
        for _ in range(nrb):
            enc += res(ci, hid * mult[i], side)
            ci = hid * mult[i]
        if i != n - 1:
            side //= 2
            enc += conv(ci, ci, 3, side)
    enc += 2 * res(mid, mid, G) + conv(mid, c["z_channels"], 3, G) + conv(c["z_channels"], c["quantized_embed_dim"], 1, G)
    enc += 2 * G * G * c["num_embeddings"] * c["quantized_embed_dim"]
    dec = conv(c["quantized_embed_dim"], c["z_channels"], 1, G) + conv(c["z_channels"], mid, 3, G) + 2 * res(mid, mid, G)
    side = G
    for i in reversed(range(n)):
        ci = mid if i == n - 1 else hid * mult[i + 1]
        for _ in range(nrb + 1):
            dec += res(ci, hid * mult[i], side)
            ci = hid * mult[i]
        if i != 0:
            side *= 2
            dec += conv(ci, ci, 3, side)
    dec += conv(hid * mult[0], 3, 3, R)
    return enc, dec


def random_params(c, seed=1):
    g = torch.Generator().manual_seed(seed)
    p = {}
    for name, shape in param_specs(c):
        if name == "quantize.embedding.weight":
            k = shape[0]
            p[name] = (torch.rand(shape, generator=g) * 2 - 1) / k
        elif "norm" in name:
            p[name] = torch.ones(shape) if name.endswith(".weight") else torch.zeros(shape)
        else:
            w = next(s for nm, s in param_specs(c) if nm == name.rsplit(".", 1)[0] + ".weight")
            fan = w[1] * w[2] * w[3]
            p[name] = (torch.rand(shape, generator=g) * 2 - 1) / fan ** 0.5
    return p


def best_ms(fn, reps):
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1e3)
    return best


def line(name, shape, ms, fl, items, note):
    return {"name": name, "shape": shape, "ms": round(ms, 3), "per": 1, "run_ms": round(ms, 3),
            "gflops": round(fl / ms / 1e6, 2), "per_s": round(items / ms * 1e3, 2), "unit": "images",
            "note": note}


def results(filt=None, reps=None):
    out = []
    want = lambda k: not filt or (filt(k) if callable(filt) else filt in k)  # noqa: E731
    enc_f, dec_f = flops(LVM_CONFIG)
    if want("vqgan encode lvm 1x3x256x256") or want("vqgan decode lvm 1x256 ids"):
        p = random_params(LVM_CONFIG)
        x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
        ids = (torch.arange(256, dtype=torch.int64) * 2654435761) % 8192
        with torch.no_grad():
            if want("vqgan encode lvm 1x3x256x256"):
                ms = best_ms(lambda: distances(p, encode_features(p, LVM_CONFIG, x)).argmin(1), reps or 2)
                out.append(line("vqgan encode", "lvm 1x3x256x256", ms, enc_f, 1, "torch f32 CPU"))
            if want("vqgan decode lvm 1x256 ids"):
                ms = best_ms(lambda: decode_latent(p, LVM_CONFIG, lookup(p, ids[None], 16, 16)).clamp(0, 1), reps or 2)
                out.append(line("vqgan decode", "lvm 1x256 ids", ms, dec_f, 1, "torch f32 CPU"))
    key = f"vqgan train step tiny b{TINY_B} 32x32"
    if want(key):
        c = TINY_CONFIG
        p = {k: v.requires_grad_(True) for k, v in random_params(c).items()}
        opt = torch.optim.AdamW(list(p.values()), lr=1e-3, betas=(0.9, 0.99), weight_decay=0)
        x = torch.rand(TINY_B, 3, 32, 32, generator=torch.Generator().manual_seed(3))

        def step():
            opt.zero_grad()
            z = encode_features(p, c, x)
            ids = distances(p, z.detach()).argmin(1).reshape(TINY_B, -1)
            q = lookup(p, ids, 8, 8)
            rec = decode_latent(p, c, z + (q - z).detach())
            loss = ((rec - x) ** 2).mean() + ((q - z.detach()) ** 2).mean() + 0.25 * ((z - q.detach()) ** 2).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(p.values()), 1.0)
            opt.step()
            return loss.item()

        e, d = flops(c)
        # TINY_LOG steps per timed run, as ours runs them (tools/bench/tokenizer.ts): time per step.
        run_ms = best_ms(lambda: [step() for _ in range(TINY_LOG)], reps or 3)
        r = line("vqgan train step", f"tiny b{TINY_B} 32x32", run_ms / TINY_LOG, 3 * TINY_B * (e + d), TINY_B,
                 f"forward + backward + clip + AdamW, {TINY_LOG} steps per run, torch f32 CPU")
        r.update(per=TINY_LOG, run_ms=round(run_ms, 3))
        out.append(r)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--filter", default=None)
    ap.add_argument("--reps", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS") or os.cpu_count() or 1))
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, env {json.dumps(env)}", file=sys.stderr)
    for r in results(args.filter, args.reps):
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
