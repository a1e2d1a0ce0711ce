#!/usr/bin/python3
"""PyTorch side of tools/bench/transformer.ts: the same presets, batches and measurements (training
forward, training step with clip + AdamW, KV-cache decode), printed as JSON lines whose `name` and
`shape` match the WebGPU cases so `deno task bench --torch` can pair them.

    /usr/bin/python3 tools/bench_torch_transformer.py [--filter TEXT] [--reps N]

tools/bench_torch.py can import it: `from bench_torch_transformer import results` and print each
dict of `results(filter, reps)`. The model math is tools/ref_llama.py's (HF LlamaForCausalLM), in f32
with nn.Linear weights. Threads: $TORCH_THREADS, else os.cpu_count() (printed to stderr).

Each case runs one op per timed run (`per` 1, so `ms` = `run_ms`). Memory, in MiB (2^20 bytes):
`mem_mb` is the bytes of the tensors the case must hold, computed from the tensors themselves:
parameters (forward), + gradients + AdamW state (train step), + KV cache (decode); activations and
allocator overhead are not in it (our `mem_mb` is the GPU pool's peak, activations included).
`rss_peak_delta_mb` is how much the process's peak RSS (resource.getrusage ru_maxrss) grew while the
case ran (its state, activations and allocator caches, after the model was built), a lower bound: 0
when an earlier case already peaked higher.
"""

import json
import math
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_llama import repeat_kv, rms_norm, rope_cos_sin, rotate_half  # noqa: E402

VOCAB, CODES = 8292, 8192
# name: layers, hidden, heads, ffn (same as packages/transformer/config.ts PRESETS)
PRESETS = {"tiny": (4, 128, 4, 344), "100m": (22, 640, 10, 1664)}
# Same as tools/bench/transformer.ts CONFIGS.
CONFIGS = [
    dict(name="tiny", B=4, T=256, prompt=16, decode=32, reps=3, decode_reps=3),
    dict(name="100m", B=1, T=256, prompt=16, decode=16, reps=1, decode_reps=3),
]


class Llama(torch.nn.Module):
    def __init__(self, name):
        super().__init__()
        L, D, H, F = PRESETS[name]
        self.L, self.D, self.H, self.hd = L, D, H, D // H
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.embed = torch.nn.Embedding(VOCAB, D)
        self.layers = torch.nn.ModuleList()
        for _ in range(L):
            m = torch.nn.Module()
            m.ln1 = torch.nn.Parameter(torch.ones(D))
            m.ln2 = torch.nn.Parameter(torch.ones(D))
            m.q, m.k, m.v, m.o = lin(D, D), lin(D, D), lin(D, D), lin(D, D)
            m.gate, m.up, m.down = lin(D, F), lin(D, F), lin(F, D)
            self.layers.append(m)
        self.norm = torch.nn.Parameter(torch.ones(D))
        self.head = lin(D, VOCAB)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, ids, cache=None, pos=0):
        """ids (B,T) -> logits (B,T,V). With `cache` (list of [k, v] per layer, (B,H,maxT,hd)), the
        new keys/values are written at pos.. and attention runs over the cache."""
        B, T = ids.shape
        H, hd = self.H, self.hd
        x = self.embed(ids)
        cos, sin = rope_cos_sin(torch.arange(pos, pos + T), hd, 10000.0, x.dtype)
        n_keys = pos + T
        mask = torch.full((T, n_keys), float("-inf")).triu(pos + 1)
        for i, m in enumerate(self.layers):
            h = rms_norm(x, m.ln1, 1e-6)
            q = m.q(h).view(B, T, H, hd).transpose(1, 2)
            k = m.k(h).view(B, T, H, hd).transpose(1, 2)
            v = m.v(h).view(B, T, H, hd).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            if cache is not None:
                cache[i][0][:, :, pos:n_keys] = k
                cache[i][1][:, :, pos:n_keys] = v
                k, v = cache[i][0][:, :, :n_keys], cache[i][1][:, :, :n_keys]
            k, v = repeat_kv(k, 1), repeat_kv(v, 1)
            att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(hd) + mask, dim=-1)
            x = x + m.o((att @ v).transpose(1, 2).reshape(B, T, self.D))
            h = rms_norm(x, m.ln2, 1e-6)
            x = x + m.down(torch.nn.functional.silu(m.gate(h)) * m.up(h))
        return self.head(rms_norm(x, self.norm, 1e-6))


MB = 1024 * 1024


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_rss():
    """Peak resident set size of this process in bytes (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def line(name, shape, ms, items, mem_bytes, rss0, note):
    return dict(name=name, shape=shape, ms=round(ms, 3), per=1, run_ms=round(ms, 3),
                per_s=round(items / ms * 1e3, 2), unit="tokens", mem_mb=round(mem_bytes / MB, 1),
                rss_peak_delta_mb=round(max(0, peak_rss() - rss0) / MB, 1), note=note)


def best_ms(fn, reps):
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def matches(filt, key):
    """Whether a case key ("name shape") is selected: filt None (all), a substring, or a predicate."""
    return not filt or (filt(key) if callable(filt) else filt in key)


def results(filter_text=None, reps_override=None):
    """Yields one result dict per case (fields as tools/bench/_harness.ts BenchResult).

    filter_text: None (all), a substring of "name shape", or a predicate on it.
    """
    torch.manual_seed(0)
    for cfg in CONFIGS:
        name, B, T = cfg["name"], cfg["B"], cfg["T"]
        reps = reps_override or cfg["reps"]
        shape = f"{name} B{B} T{T}"
        dshape = f"{name} prompt{cfg['prompt']} +{cfg['decode']}"
        wanted = lambda n, s: matches(filter_text, f"{n} {s}")  # noqa: E731
        if not any(wanted(n, s) for n, s in [("transformer forward", shape),
                                             ("transformer train step", shape),
                                             ("transformer decode", dshape)]):
            continue
        model = Llama(name)
        params = nbytes(model.parameters())
        ids = torch.randint(0, CODES, (B, T + 1))
        inputs, targets = ids[:, :-1], ids[:, 1:]
        ce = lambda: torch.nn.functional.cross_entropy(  # noqa: E731
            model(inputs).reshape(-1, VOCAB), targets.reshape(-1))
        N = B * T
        if wanted("transformer forward", shape):
            def fwd():
                with torch.no_grad():
                    ce().item()
            rss0 = peak_rss()
            ms = best_ms(fwd, reps)
            yield line("transformer forward", shape, ms, N, params, rss0,
                       "torch f32 CPU; mem_mb: parameters")
        if wanted("transformer train step", shape):
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)

            def step():
                opt.zero_grad(set_to_none=True)
                loss = ce()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                loss.item()
            rss0 = peak_rss()
            ms = best_ms(step, reps)
            state = [v for st in opt.state.values() for v in st.values() if torch.is_tensor(v)]
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            yield line("transformer train step", shape, ms, N, params + nbytes(grads) + nbytes(state),
                       rss0, "torch f32 CPU; mem_mb: parameters + grads + AdamW state")
            del opt, state, grads
            model.zero_grad(set_to_none=True)
        if wanted("transformer decode", dshape):
            P, n_new = cfg["prompt"], cfg["decode"]
            prompt = torch.randint(0, CODES, (1, P))
            maxT = P + n_new
            cache = [[torch.zeros(1, model.H, maxT, model.hd) for _ in range(2)]
                     for _ in range(model.L)]

            def decode():
                with torch.no_grad():
                    logits = model(prompt, cache, 0)[0, -1]
                    pos = P
                    for _ in range(n_new):
                        nxt = int(torch.argmax(logits[:CODES]))
                        logits = model(torch.tensor([[nxt]]), cache, pos)[0, -1]
                        pos += 1
            rss0 = peak_rss()
            ms = best_ms(decode, reps_override or cfg["decode_reps"])
            kv = nbytes(t for layer in cache for t in layer)
            yield line("transformer decode", dshape, ms, n_new, params + kv, rss0,
                       "torch f32 CPU; mem_mb: parameters + KV cache")


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--filter")
    ap.add_argument("--reps", type=int)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("TORCH_THREADS") or os.cpu_count() or 1))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    for r in results(a.filter, a.reps):
        r["torch_threads"] = torch.get_num_threads()
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
