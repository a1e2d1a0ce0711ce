#!/usr/bin/python3
"""Writes the tiny reference fixtures for packages/image (PIL is the reference).

Run: /usr/bin/python3 tools/fixtures_image.py   (needs PIL: apt-get install -y python3-pil)

Writes into tests/fixtures/image/:
  src_37x23.png            random-ish RGB source (smooth ramps + noise + hard 0/255 edges so that
                           bicubic overshoot is clipped)
  resize_<W>x<H>.rgb       PIL Image.resize((W, H), Image.BICUBIC) of the source, HWC uint8 bytes
  tiny_20x12.jpg           PIL JPEG (quality 90, 4:2:0) of a crop of the source
  tiny_20x12_jpg.rgb       PIL's decode of that JPEG (HWC uint8), to compare other decoders with
  anim_3f.gif              3-frame palette GIF (9x7), frames fully redrawn (disposal 1)
  anim_3f_f<i>.rgb         PIL's decode of frame i converted to RGB
  rgba_5x4.png / .rgb      RGBA PNG with varying alpha; .rgb is PIL convert("RGB") (alpha dropped)
  gray_6x5.png / .rgb      8-bit grayscale PNG; .rgb is convert("RGB")
  pal_6x5.png / .rgb       palette PNG; .rgb is convert("RGB")
  manifest.json            the list of resize cases and PIL's version
"""
import json
import os
import sys

import numpy as np
from PIL import Image

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "image")

# (width, height) targets for the 37x23 source: down, up, one axis only, extreme down, 1x1.
RESIZE_CASES = [(16, 16), (50, 41), (37, 10), (5, 23), (3, 2), (1, 1), (80, 9)]


def source_image() -> np.ndarray:
    """(23, 37, 3) uint8: ramps + seeded noise + a hard black/white checker block."""
    H, W = 23, 37
    rng = np.random.default_rng(1234)
    y, x = np.mgrid[0:H, 0:W]
    r = (x * 255 // (W - 1)).astype(np.int32)
    g = (y * 255 // (H - 1)).astype(np.int32)
    b = ((x + y) * 7 % 256).astype(np.int32)
    img = np.stack([r, g, b], axis=-1) + rng.integers(-40, 41, size=(H, W, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    checker = (((x // 2) + (y // 2)) % 2 * 255).astype(np.uint8)
    img[5:15, 20:32, :] = checker[5:15, 20:32, None]  # hard 0/255 edges: overshoot gets clipped
    img[0, 0] = [0, 0, 0]
    img[-1, -1] = [255, 255, 255]
    return img


def save_raw(name: str, im: Image.Image) -> None:
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(arr.tobytes())


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    src = Image.fromarray(source_image(), "RGB")
    src.save(os.path.join(OUT, "src_37x23.png"))
    src = Image.open(os.path.join(OUT, "src_37x23.png"))  # resize what a reader would load
    src.load()
    cases = []
    for w, h in RESIZE_CASES:
        name = f"resize_{w}x{h}.rgb"
        save_raw(name, src.resize((w, h), Image.BICUBIC))
        cases.append({"width": w, "height": h, "file": name})

    crop = src.crop((3, 2, 23, 14))  # 20x12
    crop.save(os.path.join(OUT, "tiny_20x12.jpg"), quality=90, subsampling=2)
    save_raw("tiny_20x12_jpg.rgb", Image.open(os.path.join(OUT, "tiny_20x12.jpg")))

    # 3-frame GIF from explicit palette images (no quantisation ambiguity), every frame redrawn fully.
    pal = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0, 255, 255, 255, 40, 80, 120, 200, 100, 50]
    frames = []
    for i in range(3):
        idx = np.zeros((7, 9), dtype=np.uint8)
        yy, xx = np.mgrid[0:7, 0:9]
        idx[:] = (xx + yy * (i + 1) + i) % 8
        p = Image.fromarray(idx, "P")
        p.putpalette(pal + [0] * (768 - len(pal)))
        frames.append(p)
    gif_path = os.path.join(OUT, "anim_3f.gif")
    frames[0].save(gif_path, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   disposal=1, optimize=False)
    g = Image.open(gif_path)
    for i in range(g.n_frames):
        g.seek(i)
        save_raw(f"anim_3f_f{i}.rgb", g)

    yy, xx = np.mgrid[0:4, 0:5]
    rgba = np.stack([xx * 60, yy * 80, (xx * yy * 20) % 256, (xx + 5 * yy) * 12], -1).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(os.path.join(OUT, "rgba_5x4.png"))
    save_raw("rgba_5x4.rgb", Image.open(os.path.join(OUT, "rgba_5x4.png")))

    yy, xx = np.mgrid[0:5, 0:6]
    Image.fromarray(((xx * 40 + yy * 13) % 256).astype(np.uint8), "L").save(
        os.path.join(OUT, "gray_6x5.png"))
    save_raw("gray_6x5.rgb", Image.open(os.path.join(OUT, "gray_6x5.png")))
    p = Image.fromarray(((xx + yy) % 8).astype(np.uint8), "P")
    p.putpalette(pal + [0] * (768 - len(pal)))
    p.save(os.path.join(OUT, "pal_6x5.png"))
    save_raw("pal_6x5.rgb", Image.open(os.path.join(OUT, "pal_6x5.png")))

    import PIL
    manifest = {
        "generator": "tools/fixtures_image.py",
        "pil_version": PIL.__version__,
        "source": {"file": "src_37x23.png", "width": 37, "height": 23},
        "resize": cases,
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"wrote {len(os.listdir(OUT))} files to {os.path.normpath(OUT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
