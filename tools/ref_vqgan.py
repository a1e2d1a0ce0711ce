#!/usr/bin/python3
"""PyTorch reference of the LVM tokenizer (open-muse `VQGANModel`) for @lvm/tokenizer's tests.

Run with Debian's torch (open-muse itself is not installed, so its math is written out here, module
by module, with the same state-dict names):
  - ResnetBlock: h = conv1(silu(norm1(x))); h = conv2(silu(norm2(h))); out = h + (nin_shortcut(x) if
    cin != cout else x); GroupNorm(32 groups, eps 1e-6, affine); no dropout at eval
  - Downsample: F.pad(x, (0, 1, 0, 1)) then 3x3 conv stride 2, no padding
  - Upsample: nearest x2 then 3x3 conv stride 1 pad 1
  - Encoder: conv_in, down[i] (num_res_blocks blocks, downsample except the last level), mid.block_1,
    mid.block_2, norm_out, SiLU, conv_out; quant_conv (1x1)
  - quantizer: argmin over codes of |z|^2 + |e|^2 - 2 z.e (ties -> lowest index, as torch.argmin)
  - Decoder: post_quant_conv (1x1), conv_in, mid, up[N-1] ... up[0] (num_res_blocks + 1 blocks each,
    upsample except up[0]), norm_out, SiLU, conv_out; inference clamps to [0, 1]
  - training loss (what @lvm/tokenizer's trainer uses, the standard VQ-VAE form):
    mean((recon - x)^2) + mean((e - sg(z))^2) + beta * mean((z - sg(e))^2), recon decoded from the
    straight-through z + sg(e - z), beta = commitment_cost (0.25)

    /usr/bin/python3 tools/ref_vqgan.py             # writes tests/fixtures/tokenizer/
    /usr/bin/python3 tools/ref_vqgan.py --count     # prints the lvm config's parameter count

Fixture config (below): 16x16 input, 2 levels (8x8 = 64 tokens), hidden 32 (GroupNorm needs multiples
of 32), z 16, codebook 64 x 8. Random weights rounded to f16-representable values, so the same numbers
are stored three ways within the 2 MB budget:
  bin/pytorch_model.bin                   torch.save state dict, f32, open-muse names (the release format)
  openmuse/model.safetensors              open-muse names, F16
  diffusers/diffusion_pytorch_model.safetensors   diffusers VQModel names, F16
bin/ and openmuse/ with the open-muse config.json, diffusers/ with the diffusers VQModel config.json
(which does not record the input resolution: load it with resolution 16), and
  reference.safetensors: images (2,3,16,16) f32 (image 0 is also image.png), ids (2,64) I32, z (2,8,8,8)
  (quant_conv output), margin (1): the smallest gap between the best and second-best code distance
  (so float rounding cannot flip an id), decoded (2,3,16,16) from ids, clamped, decoded_raw (unclamped),
  loss (4): total, reconstruction, codebook, commitment; grad.<name> for a subset of the parameters.

Second fixture, levels3/ (LEVELS3_CONFIG): 32x32 input, 3 levels with channel_mult [1, 2, 1] (8x8 = 64
tokens), so channel counts change in the encoder (32 -> 64 -> 32) and the decoder (32 -> 64 -> 32):
nin_shortcut blocks in both, and the decoder's up.i reading up.(i+1)'s channels. That is the smallest
3-level layout with channel changes (every channel count a multiple of 32, so no hidden 8); its ~495k
parameters are stored in F16 twice (~1 MB each), conv weights drawn from 17 levels (k/8 of a power of
two, k in -8..8) so that the files compress well in git:
  levels3/bin/pytorch_model.bin           torch.save state dict, F16 storages, open-muse names
  levels3/diffusers/diffusion_pytorch_model.safetensors   diffusers VQModel names, F16, with the
                                          diffusers config.json (load it with resolution 32)
  levels3/reference.safetensors: images (2,3,32,32), ids (2,64), z (2,4,8,8), margin, decoded, loss,
  grad.<name> for the nin_shortcut, resampling and norm parameters among others.
All math runs in float64 on the stored weights, so the fixtures are the exact answer for them.
"""

import json
import os
import struct
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizer")

FIXTURE_CONFIG = {
    "_class_name": "VQGANModel",
    "resolution": 16,
    "num_channels": 3,
    "hidden_channels": 32,
    "channel_mult": [1, 1],
    "num_res_blocks": 1,
    "attn_resolutions": [],
    "no_attn_mid_block": True,
    "z_channels": 16,
    "num_embeddings": 64,
    "quantized_embed_dim": 8,
    "dropout": 0.0,
    "resample_with_conv": True,
    "commitment_cost": 0.25,
}

LEVELS3_CONFIG = dict(FIXTURE_CONFIG, resolution=32, channel_mult=[1, 2, 1], num_res_blocks=1, z_channels=8,
                      num_embeddings=32, quantized_embed_dim=4)

LVM_CONFIG = dict(FIXTURE_CONFIG, resolution=256, hidden_channels=128, channel_mult=[1, 2, 2, 4, 6],
                  num_res_blocks=2, z_channels=64, num_embeddings=8192, quantized_embed_dim=64)

GRAD_NAMES = [
    "encoder.conv_in.weight", "encoder.conv_in.bias",
    "encoder.down.0.block.0.norm1.weight", "encoder.down.0.block.0.norm1.bias",
    "encoder.down.0.downsample.conv.weight", "encoder.down.0.downsample.conv.bias",
    "encoder.mid.block_2.conv2.bias", "encoder.norm_out.weight",
    "encoder.conv_out.bias", "quant_conv.weight", "quant_conv.bias",
    "quantize.embedding.weight",
    "post_quant_conv.weight", "post_quant_conv.bias",
    "decoder.conv_in.weight", "decoder.mid.block_1.norm2.bias",
    "decoder.up.1.block.0.conv1.bias", "decoder.up.1.upsample.conv.weight",
    "decoder.up.0.block.1.norm2.weight", "decoder.norm_out.bias",
    "decoder.conv_out.weight", "decoder.conv_out.bias",
]


# ------------------------------------------------------------------------------- parameter layout
def param_specs(c):
    """[(name, shape)] in the order open-muse's VQGANModel.state_dict() lists them."""
    specs = []
    hid, mult, nrb = c["hidden_channels"], c["channel_mult"], c["num_res_blocks"]
    n = len(mult)

    def conv(name, cout, cin, k):
        specs.append((name + ".weight", (cout, cin, k, k)))
        specs.append((name + ".bias", (cout,)))

    def norm(name, ch):
        specs.append((name + ".weight", (ch,)))
        specs.append((name + ".bias", (ch,)))

    def res(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cout, cin, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cout, cin, 1)

    conv("encoder.conv_in", hid, c["num_channels"], 3)
    in_mult = [1] + list(mult)
    for i in range(n):
        cin, cout = hid * in_mult[i], hid * mult[i]
        for j in range(nrb):
            res(f"encoder.down.{i}.block.{j}", cin, cout)
            cin = cout
        if i != n - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    mid = hid * mult[-1]
    res("encoder.mid.block_1", mid, mid)
    res("encoder.mid.block_2", mid, mid)
    norm("encoder.norm_out", mid)
    conv("encoder.conv_out", c["z_channels"], mid, 3)
    conv("decoder.conv_in", mid, c["z_channels"], 3)
    res("decoder.mid.block_1", mid, mid)
    res("decoder.mid.block_2", mid, mid)
    for i in range(n):  # registered in index order (the module list is reversed at build time)
        cin = hid * mult[-1] if i == n - 1 else hid * mult[i + 1]
        cout = hid * mult[i]
        for j in range(nrb + 1):
            res(f"decoder.up.{i}.block.{j}", cin, cout)
            cin = cout
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cout, cout, 3)
    norm("decoder.norm_out", hid * mult[0])
    conv("decoder.conv_out", c["num_channels"], hid * mult[0], 3)
    specs.append(("quantize.embedding.weight", (c["num_embeddings"], c["quantized_embed_dim"])))
    conv("quant_conv", c["quantized_embed_dim"], c["z_channels"], 1)
    conv("post_quant_conv", c["z_channels"], c["quantized_embed_dim"], 1)
    return specs


def to_diffusers(name, n_levels):
    """open-muse key -> diffusers VQModel key (as diffusers' scripts/convert_amused.py maps them)."""
    p = name.split(".")
    if p[0] in ("encoder", "decoder"):
        if p[1] == "down":
            rest = p[3:]
            if rest[0] == "block":
                rest = ["resnets"] + rest[1:]
            elif rest[0] == "downsample":
                rest = ["downsamplers", "0"] + rest[1:]
            p = [p[0], "down_blocks", p[2]] + rest
        elif p[1] == "up":
            rest = p[3:]
            if rest[0] == "block":
                rest = ["resnets"] + rest[1:]
            elif rest[0] == "upsample":
                rest = ["upsamplers", "0"] + rest[1:]
            p = [p[0], "up_blocks", str(n_levels - 1 - int(p[2]))] + rest
        elif p[1] == "mid":
            p = [p[0], "mid_block", "resnets", str(int(p[2][-1]) - 1)] + p[3:]
        elif p[1] == "norm_out":
            p = [p[0], "conv_norm_out"] + p[2:]
        p = ["conv_shortcut" if s == "nin_shortcut" else s for s in p]
    return ".".join(p)


def diffusers_config(c):
    """The diffusers VQModel config.json of an open-muse config (as convert_amused.py builds the model;
    only representable when channel_mult[0] == 1, since diffusers' conv_in outputs block_out_channels[0])."""
    assert c["channel_mult"][0] == 1
    n = len(c["channel_mult"])
    return {
        "_class_name": "VQModel",
        "act_fn": "silu",
        "block_out_channels": [c["hidden_channels"] * m for m in c["channel_mult"]],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "force_upcast": False,
        "in_channels": c["num_channels"],
        "latent_channels": c["z_channels"],
        "layers_per_block": c["num_res_blocks"],
        "lookup_from_codebook": True,
        "mid_block_add_attention": False,
        "norm_num_groups": 32,
        "norm_type": "group",
        "num_vq_embeddings": c["num_embeddings"],
        "out_channels": c["num_channels"],
        "sample_size": 32,  # not the input resolution (aMUSEd's 256x256 VQ-GAN also says 32)
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "vq_embed_dim": c["quantized_embed_dim"],
    }


# ------------------------------------------------------------------------------------- the model
def group_norm(x, w, b):
    return F.group_norm(x, 32, w, b, eps=1e-6)


def res_block(p, name, x):
    h = F.silu(group_norm(x, p[name + ".norm1.weight"], p[name + ".norm1.bias"]))
    h = F.conv2d(h, p[name + ".conv1.weight"], p[name + ".conv1.bias"], padding=1)
    h = F.silu(group_norm(h, p[name + ".norm2.weight"], p[name + ".norm2.bias"]))
    h = F.conv2d(h, p[name + ".conv2.weight"], p[name + ".conv2.bias"], padding=1)
    if name + ".nin_shortcut.weight" in p:
        x = F.conv2d(x, p[name + ".nin_shortcut.weight"], p[name + ".nin_shortcut.bias"])
    return x + h


def encode_features(p, c, x):
    """x (B,3,H,W) -> z (B,E,h,w): encoder + quant_conv."""
    n, nrb = len(c["channel_mult"]), c["num_res_blocks"]
    h = F.conv2d(x, p["encoder.conv_in.weight"], p["encoder.conv_in.bias"], padding=1)
    for i in range(n):
        for j in range(nrb):
            h = res_block(p, f"encoder.down.{i}.block.{j}", h)
        if i != n - 1:
            h = F.pad(h, (0, 1, 0, 1))
            h = F.conv2d(h, p[f"encoder.down.{i}.downsample.conv.weight"],
                         p[f"encoder.down.{i}.downsample.conv.bias"], stride=2)
    h = res_block(p, "encoder.mid.block_1", h)
    h = res_block(p, "encoder.mid.block_2", h)
    h = F.silu(group_norm(h, p["encoder.norm_out.weight"], p["encoder.norm_out.bias"]))
    h = F.conv2d(h, p["encoder.conv_out.weight"], p["encoder.conv_out.bias"], padding=1)
    return F.conv2d(h, p["quant_conv.weight"], p["quant_conv.bias"])


def distances(p, z):
    """z (B,E,h,w) -> (B*h*w, K) squared distances, open-muse's addmm form."""
    e = p["quantize.embedding.weight"]
    rows = z.permute(0, 2, 3, 1).reshape(-1, e.shape[1])
    return (rows ** 2).sum(1, keepdim=True) + (e ** 2).sum(1)[None, :] - 2.0 * rows @ e.t()


def decode_latent(p, c, q):
    """q (B,E,h,w) -> unclamped pixels (B,3,H,W): post_quant_conv + decoder."""
    n, nrb = len(c["channel_mult"]), c["num_res_blocks"]
    h = F.conv2d(q, p["post_quant_conv.weight"], p["post_quant_conv.bias"])
    h = F.conv2d(h, p["decoder.conv_in.weight"], p["decoder.conv_in.bias"], padding=1)
    h = res_block(p, "decoder.mid.block_1", h)
    h = res_block(p, "decoder.mid.block_2", h)
    for i in reversed(range(n)):
        for j in range(nrb + 1):
            h = res_block(p, f"decoder.up.{i}.block.{j}", h)
        if i != 0:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = F.conv2d(h, p[f"decoder.up.{i}.upsample.conv.weight"],
                         p[f"decoder.up.{i}.upsample.conv.bias"], padding=1)
    h = F.silu(group_norm(h, p["decoder.norm_out.weight"], p["decoder.norm_out.bias"]))
    return F.conv2d(h, p["decoder.conv_out.weight"], p["decoder.conv_out.bias"], padding=1)


def lookup(p, ids, h, w):
    """ids (B, h*w) -> (B,E,h,w)."""
    e = p["quantize.embedding.weight"][ids]  # (B, hw, E)
    return e.reshape(ids.shape[0], h, w, -1).permute(0, 3, 1, 2)


# ------------------------------------------------------------------------------------------- files
DTYPE_ORDER = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64"]


def safetensors_bytes(tensors):
    """{name: numpy array} -> bytes laid out as the safetensors library writes them."""
    kind = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}
    items = sorted(tensors.items(), key=lambda kv: (-DTYPE_ORDER.index(kind[kv[1].dtype]), kv[0]))
    header, offset = {}, 0
    for name, a in items:
        raw_len = a.size * a.dtype.itemsize
        header[name] = {"dtype": kind[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + raw_len]}
        offset += raw_len
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(np.ascontiguousarray(a).tobytes() for _, a in items)


def png_bytes(img_u8):
    """(H,W,3) uint8 -> an 8-bit RGB PNG (filter 0 on every row)."""
    h, w, _ = img_u8.shape
    raw = b"".join(b"\x00" + img_u8[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ------------------------------------------------------------------------------------ the fixture
def f16_exact(t):
    return t.to(torch.float16).to(torch.float64)


def random_params(c, gen):
    p = {}
    for name, shape in param_specs(c):
        if name.endswith(".weight") and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            t = (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * (3.0 / fan_in) ** 0.5
        elif "norm" in name and name.endswith(".weight"):
            t = 1.0 + 0.2 * torch.randn(shape, generator=gen, dtype=torch.float64)
        elif name == "quantize.embedding.weight":
            t = torch.randn(shape, generator=gen, dtype=torch.float64)
        else:  # biases
            t = 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
        p[name] = f16_exact(t)
    return p


def fixture_images():
    """Two 16x16 images of whole bytes: a colour pattern and a noise image."""
    yy, xx = np.mgrid[0:16, 0:16].astype(np.float64)
    img0 = np.stack([
        np.clip(128 + 100 * np.sin(xx / 2.5) * np.cos(yy / 3.5), 0, 255),
        np.clip(16 * xx, 0, 255),
        np.clip(255 - 15 * yy + 10 * ((xx + yy) % 3), 0, 255),
    ], axis=-1).astype(np.uint8)  # (H,W,3)
    img1 = np.random.default_rng(5).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    return img0, img1


def build_fixture():
    c = FIXTURE_CONFIG
    img0, img1 = fixture_images()
    x = torch.tensor(np.stack([img0, img1]), dtype=torch.float64).permute(0, 3, 1, 2) / 255.0
    gen = torch.Generator().manual_seed(0)
    p = random_params(c, gen)
    with torch.no_grad():
        z = encode_features(p, c, x)
        # Codebook spread like the features, so every image uses several codes; of 30 draws keep the
        # one with the widest gap between the best and second-best code of any position.
        rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        best = None
        for _ in range(30):
            e = rows.mean(0) + rows.std(0) * torch.randn(p["quantize.embedding.weight"].shape, generator=gen,
                                                         dtype=torch.float64)
            p["quantize.embedding.weight"] = f16_exact(e)
            top2 = distances(p, z).topk(2, dim=1, largest=False).values
            gap = (top2[:, 1] - top2[:, 0]).min().item()
            if best is None or gap > best[0]:
                best = (gap, p["quantize.embedding.weight"])
        p["quantize.embedding.weight"] = best[1]
        # Decoder output scaled into ~[0,1] so that most decoded pixels are not clamped.
        ids = distances(p, z).argmin(1).reshape(2, -1)
        raw = decode_latent(p, c, lookup(p, ids, 8, 8))
        s = 0.2 / raw.std().item()
        p["decoder.conv_out.weight"] = f16_exact(p["decoder.conv_out.weight"] * s)
        p["decoder.conv_out.bias"] = f16_exact((p["decoder.conv_out.bias"] - raw.mean() * s) + 0.5)
        d = distances(p, z)
        ids = d.argmin(1)
        top2 = d.topk(2, dim=1, largest=False).values
        margin = (top2[:, 1] - top2[:, 0]).min().item()
        ids = ids.reshape(2, -1)
        raw = decode_latent(p, c, lookup(p, ids, 8, 8))
        decoded = raw.clamp(0, 1)

    # The training loss and its gradients (straight-through estimator), float64.
    q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    zt = encode_features(q, c, x)
    emb = q["quantize.embedding.weight"]
    zq = lookup(q, ids, 8, 8)
    rec = decode_latent(q, c, zt + (zq - zt).detach())
    l_rec = ((rec - x) ** 2).mean()
    l_cb = ((zq - zt.detach()) ** 2).mean()
    l_commit = ((zt - zq.detach()) ** 2).mean()
    loss = l_rec + l_cb + c["commitment_cost"] * l_commit
    loss.backward()
    assert emb.grad is not None

    n_levels = len(c["channel_mult"])
    f32 = {k: v.to(torch.float32).numpy() for k, v in p.items()}
    f16 = {k: v.to(torch.float16).numpy() for k, v in p.items()}
    cfg = json.dumps(c, indent=2) + "\n"
    for sub in ("bin", "openmuse"):
        write(os.path.join(OUT, sub, "config.json"), cfg.encode())
    write(os.path.join(OUT, "diffusers", "config.json"), (json.dumps(diffusers_config(c), indent=2) + "\n").encode())
    torch.save({k: torch.from_numpy(v) for k, v in f32.items()}, os.path.join(OUT, "bin", "pytorch_model.bin"))
    write(os.path.join(OUT, "openmuse", "model.safetensors"), safetensors_bytes(f16))
    write(os.path.join(OUT, "diffusers", "diffusion_pytorch_model.safetensors"),
          safetensors_bytes({to_diffusers(k, n_levels): v for k, v in f16.items()}))
    write(os.path.join(OUT, "image.png"), png_bytes(img0))
    ref = {
        "images": x.to(torch.float32).numpy(),
        "ids": ids.to(torch.int32).numpy(),
        "z": z.to(torch.float32).numpy(),
        "margin": np.array([margin], np.float32),
        "decoded": decoded.to(torch.float32).numpy(),
        "decoded_raw": raw.to(torch.float32).numpy(),
        "loss": np.array([loss.item(), l_rec.item(), l_cb.item(), l_commit.item()], np.float32),
    }
    for name in GRAD_NAMES:
        ref["grad." + name] = q[name].grad.to(torch.float32).numpy()
    write(os.path.join(OUT, "reference.safetensors"), safetensors_bytes(ref))
    used = len(set(ids.reshape(-1).tolist()))
    clamped = ((raw < 0) | (raw > 1)).double().mean().item()
    print(f"fixture: {sum(v.size for v in f32.values())} params, ids use {used} codes, margin {margin:.4g}, "
          f"{clamped * 100:.1f}% of decoded values clamped, loss {loss.item():.6f}")


LEVELS3_GRAD_NAMES = [
    "encoder.conv_in.weight",
    "encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.1.block.0.nin_shortcut.bias",
    "encoder.down.1.block.0.norm1.weight", "encoder.down.2.block.0.nin_shortcut.weight",
    "encoder.down.2.block.0.norm2.bias", "encoder.down.1.downsample.conv.bias",
    "encoder.norm_out.weight", "quant_conv.weight", "quantize.embedding.weight", "post_quant_conv.bias",
    "decoder.up.2.block.1.norm1.weight", "decoder.up.2.upsample.conv.bias",
    "decoder.up.1.block.0.nin_shortcut.weight", "decoder.up.1.block.0.nin_shortcut.bias",
    "decoder.up.1.block.0.norm1.bias", "decoder.up.1.upsample.conv.bias",
    "decoder.up.0.block.0.nin_shortcut.weight", "decoder.up.0.block.0.conv1.bias",
    "decoder.norm_out.weight", "decoder.conv_out.weight",
]


def coarse(t):
    """Rounds to k/8 of a power of two near the tensor's range (k in -8..8): 3 significant bits, so the
    low byte of every F16 value is zero and the files deflate well; still 17 levels of random values."""
    step = 2.0 ** (np.floor(np.log2(t.abs().max().item())) - 3)
    return (t / step).round().clamp(-8, 8) * step


def levels3_images(size):
    """A colour pattern and a noise image, size x size, whole bytes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img0 = np.stack([
        np.clip(128 + 110 * np.sin(xx / 4.0 + yy / 9.0), 0, 255),
        np.clip(255 * xx / (size - 1), 0, 255),
        np.clip(200 - 150 * np.cos(yy / 5.0) * np.sin(xx / 7.0), 0, 255),
    ], axis=-1).astype(np.uint8)
    img1 = np.random.default_rng(7).integers(0, 256, (size, size, 3)).astype(np.uint8)
    return img0, img1


def build_levels3():
    """The second fixture (see the module doc): levels3/."""
    c = LEVELS3_CONFIG
    out = os.path.join(OUT, "levels3")
    R = c["resolution"]
    G = R // 2 ** (len(c["channel_mult"]) - 1)
    img0, img1 = levels3_images(R)
    x = torch.tensor(np.stack([img0, img1]), dtype=torch.float64).permute(0, 3, 1, 2) / 255.0
    gen = torch.Generator().manual_seed(1)
    p = random_params(c, gen)
    for k, shape in param_specs(c):
        if len(shape) == 4:
            p[k] = f16_exact(coarse(p[k]))
    with torch.no_grad():
        z = encode_features(p, c, x)
        rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        best = None
        for _ in range(40):
            e = rows.mean(0) + rows.std(0) * torch.randn(p["quantize.embedding.weight"].shape, generator=gen,
                                                         dtype=torch.float64)
            p["quantize.embedding.weight"] = f16_exact(e)
            top2 = distances(p, z).topk(2, dim=1, largest=False).values
            gap = (top2[:, 1] - top2[:, 0]).min().item()
            if best is None or gap > best[0]:
                best = (gap, p["quantize.embedding.weight"])
        p["quantize.embedding.weight"] = best[1]
        ids = distances(p, z).argmin(1).reshape(2, -1)
        raw = decode_latent(p, c, lookup(p, ids, G, G))
        s = 0.2 / raw.std().item()
        p["decoder.conv_out.weight"] = f16_exact(p["decoder.conv_out.weight"] * s)
        p["decoder.conv_out.bias"] = f16_exact((p["decoder.conv_out.bias"] - raw.mean() * s) + 0.5)
        d = distances(p, z)
        top2 = d.topk(2, dim=1, largest=False).values
        margin = (top2[:, 1] - top2[:, 0]).min().item()
        ids = d.argmin(1).reshape(2, -1)
        raw = decode_latent(p, c, lookup(p, ids, G, G))
        decoded = raw.clamp(0, 1)

    q = {k: v.clone().requires_grad_(True) for k, v in p.items()}
    zt = encode_features(q, c, x)
    zq = lookup(q, ids, G, G)
    rec = decode_latent(q, c, zt + (zq - zt).detach())
    l_rec = ((rec - x) ** 2).mean()
    l_cb = ((zq - zt.detach()) ** 2).mean()
    l_commit = ((zt - zq.detach()) ** 2).mean()
    loss = l_rec + l_cb + c["commitment_cost"] * l_commit
    loss.backward()

    f16 = {k: v.to(torch.float16).numpy() for k, v in p.items()}
    write(os.path.join(out, "bin", "config.json"), (json.dumps(c, indent=2) + "\n").encode())
    os.makedirs(os.path.join(out, "bin"), exist_ok=True)
    torch.save({k: torch.from_numpy(v) for k, v in f16.items()}, os.path.join(out, "bin", "pytorch_model.bin"))
    write(os.path.join(out, "diffusers", "config.json"), (json.dumps(diffusers_config(c), indent=2) + "\n").encode())
    n_levels = len(c["channel_mult"])
    write(os.path.join(out, "diffusers", "diffusion_pytorch_model.safetensors"),
          safetensors_bytes({to_diffusers(k, n_levels): v for k, v in f16.items()}))
    ref = {
        "images": x.to(torch.float32).numpy(),
        "ids": ids.to(torch.int32).numpy(),
        "z": z.to(torch.float32).numpy(),
        "margin": np.array([margin], np.float32),
        "decoded": decoded.to(torch.float32).numpy(),
        "loss": np.array([loss.item(), l_rec.item(), l_cb.item(), l_commit.item()], np.float32),
    }
    for name in LEVELS3_GRAD_NAMES:
        ref["grad." + name] = q[name].grad.to(torch.float32).numpy()
    write(os.path.join(out, "reference.safetensors"), safetensors_bytes(ref))
    nin = [k for k, _ in param_specs(c) if "nin_shortcut.weight" in k]
    used = len(set(ids.reshape(-1).tolist()))
    clamped = ((raw < 0) | (raw > 1)).double().mean().item()
    print(f"levels3: {sum(v.size for v in f16.values())} params, nin_shortcut in {nin}, ids use {used} codes, "
          f"margin {margin:.4g}, {clamped * 100:.1f}% of decoded values clamped, loss {loss.item():.6f}")


def main():
    if "--count" in sys.argv:
        print(sum(int(np.prod(s)) for _, s in param_specs(LVM_CONFIG)))
        return
    build_fixture()
    build_levels3()
    total = 0
    for dirpath, _, files in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
