#!/usr/bin/python3
"""PyTorch reference for @lvm/transformer: writes the small fixtures its tests compare against.

Run with Debian's torch (no `transformers` library there, so the LLaMA math is written out here,
following Hugging Face `LlamaForCausalLM` line by line):
  - RMSNorm in f32: x * rsqrt(mean(x^2) + eps) * weight
  - RoPE, rotate-half convention: q*cos + rotate_half(q)*sin, inv_freq = theta^(-2i/d), emb = cat(f, f)
  - attention: q/k/v/o projections without bias, GQA through repeat_kv, causal softmax(qk^T/sqrt(d)) v
  - SwiGLU MLP: down(silu(gate(x)) * up(x)); pre-norm residual blocks; final norm; lm_head (or the
    embedding when tie_word_embeddings)
  - loss: mean cross-entropy of logits (B,T,V) against explicit targets (B,T) (the caller shifts)

    /usr/bin/python3 tools/ref_llama.py [NAME...]  # writes tests/fixtures/transformer/<NAME>/

For each variant it writes config.json + model.safetensors (HF layout, f32) and reference.safetensors:
  inputs, targets (i32 [B,T]); logits (f32 [B,T,V]); loss (f32 [1]); grad.<param> for every parameter;
  adamw.losses / adamw.grad_norms (f32 [10]): the loss before each of 10 AdamW steps (lr 1e-2,
  betas 0.9/0.95, eps 1e-8, weight decay 0.1 on every parameter, global-norm clip 1.0) and the norm
  of the gradient that step clipped; adamw.final_loss (f32 [1]) after the 10th step;
  score.logprobs (f32 [T-1]): log p(inputs[0][i] | inputs[0][:i]) for i >= 1;
  generate.prompt / generate.tokens (i32): greedy continuation with ids >= image_codes suppressed,
  generate.margin (f32): the smallest top-1 minus top-2 logit gap along the way (so a tie can't flip it).
The math runs in float64 on the f32-stored weights, so the fixtures are the exact answer for them.

16-bit checkpoints as other tools write them (DERIVED): the same random model as a base variant
(same seed, same weights and inputs), stored BF16 in 2 shards behind model.safetensors.index.json, or
F16 in one model.safetensors, by this file's own safetensors writer (torch's round-to-nearest-even
casts). Their reference.safetensors holds inputs, targets (i32 [B,T]), logits (f32 [B,T,V]) and loss
(f32 [1]) computed in float64 from the 16-bit weights as stored, so they are exact for them too.
"""

import json
import math
import os
import struct
import sys

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "transformer")

# name: (hidden, layers, heads, kv heads, ffn, vocab, image codes, tied)
VARIANTS = {
    "mha": dict(hidden=24, layers=2, heads=3, kv_heads=3, ffn=40, vocab=100, image_codes=96, tied=False),
    "gqa_tied": dict(hidden=32, layers=2, heads=4, kv_heads=2, ffn=44, vocab=100, image_codes=96, tied=True),
}
# name: (base variant, stored dtype, shards)
DERIVED = {
    "mha_bf16_sharded": ("mha", "BF16", 2),
    "gqa_tied_f16": ("gqa_tied", "F16", 1),
}
B, T = 2, 11
RMS_EPS = 1e-6
THETA = 10000.0
MAX_POS = 64
ADAMW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
CLIP = 1.0
STEPS = 10
GEN_PROMPT, GEN_NEW = 5, 8


# ---------------------------------------------------------------- the model (HF LlamaForCausalLM math)
def rms_norm(x, w, eps):
    # HF LlamaRMSNorm: variance in f32 (here f64), multiply by the weight after casting back.
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(positions, dim, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    freqs = torch.outer(positions.to(torch.float64), inv_freq)  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def repeat_kv(x, n_rep):
    # (B, KV, T, D) -> (B, KV*n_rep, T, D), head h uses kv head h // n_rep
    if n_rep == 1:
        return x
    b, kv, t, d = x.shape
    return x[:, :, None, :, :].expand(b, kv, n_rep, t, d).reshape(b, kv * n_rep, t, d)


def forward(p, cfg, ids):
    """ids (B,T) int64 -> logits (B,T,V)."""
    D, H, KV = cfg["hidden"], cfg["heads"], cfg["kv_heads"]
    hd = D // H
    b, t = ids.shape
    x = p["model.embed_tokens.weight"][ids]  # (B,T,D)
    cos, sin = rope_cos_sin(torch.arange(t), hd, THETA, x.dtype)  # (T,hd)
    mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)
    for i in range(cfg["layers"]):
        pre = f"model.layers.{i}."
        h = rms_norm(x, p[pre + "input_layernorm.weight"], RMS_EPS)
        q = (h @ p[pre + "self_attn.q_proj.weight"].T).view(b, t, H, hd).transpose(1, 2)
        k = (h @ p[pre + "self_attn.k_proj.weight"].T).view(b, t, KV, hd).transpose(1, 2)
        v = (h @ p[pre + "self_attn.v_proj.weight"].T).view(b, t, KV, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, H // KV), repeat_kv(v, H // KV)
        att = (q @ k.transpose(2, 3)) / math.sqrt(hd) + mask  # (B,H,T,T)
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, D)
        x = x + y @ p[pre + "self_attn.o_proj.weight"].T
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], RMS_EPS)
        g = h @ p[pre + "mlp.gate_proj.weight"].T
        u = h @ p[pre + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ p[pre + "mlp.down_proj.weight"].T
    x = rms_norm(x, p["model.norm.weight"], RMS_EPS)
    head = p["model.embed_tokens.weight"] if cfg["tied"] else p["lm_head.weight"]
    return x @ head.T


def loss_fn(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---------------------------------------------------------------- parameters, files
def param_shapes(cfg):
    D, H, KV, F, V = cfg["hidden"], cfg["heads"], cfg["kv_heads"], cfg["ffn"], cfg["vocab"]
    hd = D // H
    shapes = {"model.embed_tokens.weight": (V, D)}
    for i in range(cfg["layers"]):
        pre = f"model.layers.{i}."
        shapes[pre + "input_layernorm.weight"] = (D,)
        shapes[pre + "self_attn.q_proj.weight"] = (H * hd, D)
        shapes[pre + "self_attn.k_proj.weight"] = (KV * hd, D)
        shapes[pre + "self_attn.v_proj.weight"] = (KV * hd, D)
        shapes[pre + "self_attn.o_proj.weight"] = (D, H * hd)
        shapes[pre + "post_attention_layernorm.weight"] = (D,)
        shapes[pre + "mlp.gate_proj.weight"] = (F, D)
        shapes[pre + "mlp.up_proj.weight"] = (F, D)
        shapes[pre + "mlp.down_proj.weight"] = (D, F)
    shapes["model.norm.weight"] = (D,)
    if not cfg["tied"]:
        shapes["lm_head.weight"] = (V, D)
    return shapes


def init_params(cfg, gen):
    """Random weights scaled so every part of the network matters (std 0.02 would give near-uniform
    logits): embeddings N(0,1) (N(0, 4/D) when tied), linears N(0, 1/fan_in), norm weights 1 + N(0, 0.1^2). Stored f32."""
    p = {}
    for name, shape in param_shapes(cfg).items():
        if len(shape) == 1:
            w = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif name == "model.embed_tokens.weight":
            # Tied: the same matrix makes the logits, so keep them O(1) there too.
            w = torch.randn(shape, generator=gen) * (2.0 / math.sqrt(shape[1]) if cfg["tied"] else 1.0)
        else:
            w = torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        p[name] = w.to(torch.float32)
    return p


def hf_config(cfg):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg["hidden"],
        "intermediate_size": cfg["ffn"],
        "num_hidden_layers": cfg["layers"],
        "num_attention_heads": cfg["heads"],
        "num_key_value_heads": cfg["kv_heads"],
        "vocab_size": cfg["vocab"],
        "max_position_embeddings": MAX_POS,
        "rms_norm_eps": RMS_EPS,
        "rope_theta": THETA,
        "tie_word_embeddings": cfg["tied"],
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "torch_dtype": "float32",
        "image_codes": cfg["image_codes"],
    }


def write_safetensors(path, tensors, metadata=None):
    """Minimal safetensors writer (the `safetensors` package is not installed): u64 header length,
    JSON header {name: {dtype, shape, data_offsets}}, then the little-endian data."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        t = t.contiguous()
        if t.dtype == torch.float32:
            dt, raw = "F32", t.numpy().astype("<f4").tobytes()
        elif t.dtype == torch.float16:
            dt, raw = "F16", t.numpy().astype("<f2").tobytes()
        elif t.dtype == torch.bfloat16:  # numpy has no bfloat16: the same 16 bits as int16
            dt, raw = "BF16", t.view(torch.int16).numpy().astype("<i2").tobytes()
        elif t.dtype in (torch.int32, torch.int64):
            dt, raw = "I32", t.to(torch.int32).numpy().astype("<i4").tobytes()
        else:
            raise TypeError(f"{name}: unsupported dtype {t.dtype}")
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata:
        header["__metadata__"] = metadata
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for raw in blobs:
            f.write(raw)
    os.replace(tmp, path)


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------- the fixtures
def greedy(p, cfg, prompt, n):
    """Greedy decoding by full recompute, ids >= image_codes suppressed. Returns (new ids, min gap)."""
    ids = list(prompt)
    margin = float("inf")
    with torch.no_grad():
        for _ in range(n):
            logits = forward(p, cfg, torch.tensor([ids]))[0, -1, : cfg["image_codes"]]
            top2 = torch.topk(logits, 2).values
            margin = min(margin, float(top2[0] - top2[1]))
            ids.append(int(torch.argmax(logits)))
    return ids[len(prompt):], margin


def build(name, cfg, seed):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    p32 = init_params(cfg, gen)
    inputs = torch.randint(0, cfg["vocab"], (B, T), generator=gen)
    targets = torch.randint(0, cfg["vocab"], (B, T), generator=gen)

    # Forward + backward in f64 on the f32 weights.
    p = {k: v.to(torch.float64).requires_grad_(True) for k, v in p32.items()}
    logits = forward(p, cfg, inputs)
    loss = loss_fn(logits, targets)
    loss.backward()
    ref = {
        "inputs": inputs.to(torch.int32),
        "targets": targets.to(torch.int32),
        "logits": logits.detach().to(torch.float32),
        "loss": loss.detach().reshape(1).to(torch.float32),
    }
    for k, v in p.items():
        ref["grad." + k] = v.grad.to(torch.float32)

    # score: log p(x_i | x_<i) for row 0.
    with torch.no_grad():
        lp = torch.log_softmax(logits[0].detach(), dim=-1)
        ref["score.logprobs"] = lp[:-1].gather(1, inputs[0, 1:, None])[:, 0].to(torch.float32)

    # Greedy generation from a prompt of image codes.
    prompt = [int(x) % cfg["image_codes"] for x in inputs[1, :GEN_PROMPT]]
    gen_ids, margin = greedy({k: v.detach() for k, v in p.items()}, cfg, prompt, GEN_NEW)
    ref["generate.prompt"] = torch.tensor(prompt, dtype=torch.int32)
    ref["generate.tokens"] = torch.tensor(gen_ids, dtype=torch.int32)
    ref["generate.margin"] = torch.tensor([margin], dtype=torch.float32)

    # 10 AdamW steps (torch.optim.AdamW, decoupled decay on every parameter, clip_grad_norm_ 1.0).
    q = {k: v.detach().clone().requires_grad_(True) for k, v in p32.items()}
    q = {k: v.to(torch.float64).detach().requires_grad_(True) for k, v in q.items()}
    opt = torch.optim.AdamW(list(q.values()), **ADAMW)
    losses, norms = [], []
    for _ in range(STEPS):
        opt.zero_grad()
        l = loss_fn(forward(q, cfg, inputs), targets)
        l.backward()
        # clip_grad_norm_: scale = max_norm / (norm + 1e-6) when that is < 1.
        norms.append(float(torch.nn.utils.clip_grad_norm_(list(q.values()), CLIP)))
        losses.append(float(l))
        opt.step()
    with torch.no_grad():
        final = float(loss_fn(forward(q, cfg, inputs), targets))
    ref["adamw.losses"] = torch.tensor(losses, dtype=torch.float32)
    ref["adamw.grad_norms"] = torch.tensor(norms, dtype=torch.float32)
    ref["adamw.final_loss"] = torch.tensor([final], dtype=torch.float32)

    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    write_json(os.path.join(d, "config.json"), hf_config(cfg))
    write_safetensors(os.path.join(d, "model.safetensors"), p32, {"format": "pt"})
    meta = {
        "generator": "tools/ref_llama.py",
        "torch": torch.__version__,
        "seed": str(seed),
        "adamw": json.dumps({**ADAMW, "clip": CLIP, "steps": STEPS, "decay": "all parameters"}),
    }
    write_safetensors(os.path.join(d, "reference.safetensors"), ref, meta)
    print(
        f"{name}: loss {float(loss):.6f}, adamw losses {losses[0]:.4f} -> {final:.4f}, "
        f"grad norms {norms[0]:.3f}..{norms[-1]:.3f}, greedy {gen_ids} (margin {margin:.4f})"
    )


def seed_of(variant):
    return 1234 + list(VARIANTS).index(variant)


def build_derived(name, base, dtype, shards):
    """`base`'s model (same seed: same weights and batch) stored in `dtype`, in `shards` files."""
    cfg = VARIANTS[base]
    gen = torch.Generator().manual_seed(seed_of(base))
    p32 = init_params(cfg, gen)  # the same draws, in the same order, as build()
    inputs = torch.randint(0, cfg["vocab"], (B, T), generator=gen)
    targets = torch.randint(0, cfg["vocab"], (B, T), generator=gen)
    p16 = {k: v.to({"BF16": torch.bfloat16, "F16": torch.float16}[dtype]) for k, v in p32.items()}
    with torch.no_grad():
        logits = forward({k: v.to(torch.float64) for k, v in p16.items()}, cfg, inputs)
        loss = loss_fn(logits, targets)

    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(d):  # weight files of an earlier layout
        if f.startswith("model") and f.endswith((".safetensors", ".json")):
            os.remove(os.path.join(d, f))
    write_json(os.path.join(d, "config.json"),
               {**hf_config(cfg), "torch_dtype": {"BF16": "bfloat16", "F16": "float16"}[dtype]})
    names = list(p16)
    if shards == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), p16, {"format": "pt"})
    else:
        # Split in checkpoint order at about equal bytes, as HF's max_shard_size does.
        sizes = [p16[n].numel() * 2 for n in names]
        total, groups, acc = sum(sizes), [[] for _ in range(shards)], 0
        for n, size in zip(names, sizes):
            groups[min(shards - 1, acc * shards // total)].append(n)
            acc += size
        weight_map = {}
        for k, group in enumerate(groups):
            file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
            write_safetensors(os.path.join(d, file), {n: p16[n] for n in group}, {"format": "pt"})
            weight_map.update({n: file for n in group})
        write_json(os.path.join(d, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
    ref = {
        "inputs": inputs.to(torch.int32),
        "targets": targets.to(torch.int32),
        "logits": logits.to(torch.float32),
        "loss": loss.reshape(1).to(torch.float32),
    }
    meta = {"generator": "tools/ref_llama.py", "torch": torch.__version__, "base": base,
            "seed": str(seed_of(base)), "dtype": dtype}
    write_safetensors(os.path.join(d, "reference.safetensors"), ref, meta)
    print(f"{name}: {base} as {dtype} in {shards} file(s), loss {float(loss):.6f}")


def main():
    torch.set_num_threads(1)
    names = sys.argv[1:] or [*VARIANTS, *DERIVED]
    unknown = [n for n in names if n not in VARIANTS and n not in DERIVED]
    if unknown:
        sys.exit(f"unknown fixture {unknown}; expected some of {[*VARIANTS, *DERIVED]}")
    for name in VARIANTS:
        if name in names:
            build(name, VARIANTS[name], seed=seed_of(name))
    for name, (base, dtype, shards) in DERIVED.items():
        if name in names:
            build_derived(name, base, dtype, shards)


if __name__ == "__main__":
    main()
