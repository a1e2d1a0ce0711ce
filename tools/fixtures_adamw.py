"""Writes tests/fixtures/kernels/adamw.json: a few torch.optim.AdamW steps (PyTorch 1.13, CPU, f32),
optionally after torch.nn.utils.clip_grad_norm_, for packages/kernels/ops/adamw_test.ts.

Run with Debian's torch: /usr/bin/python3 tools/fixtures_adamw.py
Values are written as the shortest decimal that reads back as the same f32.
"""
import json
import os
import tempfile

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "kernels", "adamw.json")
SHAPES = [[5], [2, 3]]  # two parameters, 5 and 6 elements (6: no vec4 path; 5: odd)
STEPS = 4


def f32(t):
    """Shortest repr per f32 element, as JSON numbers."""
    return [float(repr(np.float32(x))) for x in t.detach().reshape(-1).numpy()]


def case(name, seed, lr, betas, eps, wd, max_norm=None, grad_gain=1.0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in SHAPES]
    init = [f32(p) for p in params]
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=wd)
    steps = []
    for _ in range(STEPS):
        grads = [torch.randn(*s, generator=g) * grad_gain for s in SHAPES]
        for p, gr in zip(params, grads):
            p.grad = gr.clone()
        step = {"grads": [f32(gr) for gr in grads]}
        if max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            step["norm"] = float(repr(np.float32(norm.item())))
        opt.step()
        step["params"] = [f32(p) for p in params]
        steps.append(step)
    state = [opt.state[p] for p in params]
    return {
        "name": name,
        "lr": lr,
        "beta1": betas[0],
        "beta2": betas[1],
        "eps": eps,
        "weightDecay": wd,
        "maxNorm": max_norm,
        "shapes": SHAPES,
        "init": init,
        "steps": steps,
        "m": [f32(s["exp_avg"]) for s in state],
        "v": [f32(s["exp_avg_sq"]) for s in state],
    }


def main():
    torch.set_default_dtype(torch.float32)
    cases = [
        case("lvm recipe (b2 0.95, wd 0.1)", 1, 3e-2, (0.9, 0.95), 1e-8, 0.1),
        case("torch defaults, no decay", 2, 1e-3, (0.9, 0.999), 1e-8, 0.0),
        case("clipped to norm 0.5", 3, 1e-2, (0.9, 0.95), 1e-6, 0.05, max_norm=0.5, grad_gain=3.0),
    ]
    data = {"torch": torch.__version__, "cases": cases}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(OUT), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, separators=(",", ":"))
    os.replace(tmp, OUT)
    print(f"wrote {os.path.normpath(OUT)} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
