#!/usr/bin/python3
"""A LLaMA trained by PyTorch, not by this project: a reference checkpoint for checks that must not
depend on our own trainer (issue 13's quantization quality: `tools/quant_check.ts` on weights whose
statistics our code did not shape).

The model is tools/ref_llama.py's forward (Hugging Face `LlamaForCausalLM` math written out), trained
in float32 with torch.optim.AdamW on token datasets this project built (`lvm train dataset` folders:
index.json + u16 shards), next-token loss over whole sentences. It writes a Hugging Face model folder
(config.json + model.safetensors, F32) that every inference command and tools/quant_check.ts load.

    /usr/bin/python3 tools/train_torch_ref.py --out out/torch_ref DATASET_DIR [DATASET_DIR ...]
        [--steps 400] [--batch 4] [--hidden 128] [--layers 4] [--heads 4] [--kv-heads 2]
        [--ffn 352] [--lr 3e-3] [--seed 7] [--threads 2]

The defaults are a GQA model (4 query heads over 2 key/value heads; the shipped models are MHA)
with projections whose widths are multiples of 32, so every matrix can be block-quantized. A few
hundred steps on the shipped models' data take minutes on two cores. Progress (step, loss,
tokens/s, ETA) goes to stdout; the folder is written atomically at the end.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_llama  # noqa: E402  (the model's math and the safetensors writer)


def read_dataset(path):
    """(sentences, tokens) u16 token shards of one `lvm-token-shards` folder -> int64 tensor."""
    index_path = os.path.join(path, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except FileNotFoundError:
        sys.exit(f"{path}: not a token dataset (no index.json)")
    if index.get("format") != "lvm-token-shards" or index.get("dtype") != "u16":
        sys.exit(f"{index_path}: expected format lvm-token-shards with dtype u16")
    rows = []
    folders = index.get("datasets")  # a combined index: each shard names its dataset's folder
    for shard in index["shards"]:
        folder = path if folders is None else os.path.join(path, folders[shard["dataset"]])
        with open(os.path.join(folder, shard["file"]), "rb") as f:
            raw = f.read()
        if len(raw) != shard["bytes"]:
            sys.exit(f"{folder}/{shard['file']}: {len(raw)} bytes, index says {shard['bytes']}")
        t = torch.frombuffer(bytearray(raw), dtype=torch.int16).to(torch.int64) & 0xFFFF
        rows.append(t.view(-1, shard["sentenceTokens"]))
    return torch.cat(rows), index["layout"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=352)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    data, layout = None, None
    for d in a.datasets:
        rows, lay = read_dataset(d)
        if layout is not None and lay != layout:
            sys.exit(f"{d}: layout {lay} differs from the first dataset's {layout}")
        layout = lay
        data = rows if data is None else torch.cat([data, rows])
    n, T = data.shape
    cfg = dict(hidden=a.hidden, layers=a.layers, heads=a.heads, kv_heads=a.kv_heads, ffn=a.ffn,
               vocab=layout["vocabSize"], image_codes=layout["codebookSize"], tied=False)
    print(f"{n} sentences of {T} tokens from {len(a.datasets)} dataset(s); model {cfg}", flush=True)

    gen = torch.Generator().manual_seed(a.seed)
    p = ref_llama.init_params(cfg, gen)
    for name, w in p.items():  # GPT-style small init for training (ref_llama's is for fixtures)
        if w.dim() == 2:
            p[name] = torch.randn(w.shape, generator=gen) * 0.02
    params = {k: torch.nn.Parameter(v) for k, v in p.items()}
    opt = torch.optim.AdamW(params.values(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, a.steps // 20)
    t0 = time.time()
    order = torch.randperm(n, generator=gen)
    pos = 0
    for step in range(1, a.steps + 1):
        lr = a.lr * min(step / warm, 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, a.steps - warm))))
        for g in opt.param_groups:
            g["lr"] = lr
        if pos + a.batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        batch = data[order[pos:pos + a.batch]]
        pos += a.batch
        logits = ref_llama.forward(params, cfg, batch[:, :-1])
        loss = ref_llama.loss_fn(logits, batch[:, 1:])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        opt.step()
        if step % 20 == 0 or step == a.steps:
            el = time.time() - t0
            tps = step * a.batch * (T - 1) / el
            eta = el / step * (a.steps - step)
            print(f"step {step}/{a.steps} loss {loss.item():.4f} lr {lr:.2e} {tps:.0f} tokens/s "
                  f"ETA {eta:.0f}s", flush=True)

    tmp = a.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    conf = ref_llama.hf_config(cfg)
    conf["max_position_embeddings"] = T
    ref_llama.write_json(os.path.join(tmp, "config.json"), conf)
    ref_llama.write_safetensors(
        os.path.join(tmp, "model.safetensors"),
        {k: v.detach().to(torch.float32) for k, v in params.items()},
        {"format": "pt", "trained_by": "tools/train_torch_ref.py", "steps": str(a.steps)},
    )
    shutil.rmtree(a.out, ignore_errors=True)
    os.replace(tmp, a.out)
    print(f"wrote {a.out} ({sum(v.numel() for v in params.values())} parameters)", flush=True)


if __name__ == "__main__":
    main()
