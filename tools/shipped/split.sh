#!/usr/bin/env bash
# The fixed train / held-out split of the real data the shipped models are trained on.
# Deterministic (sorted with LC_ALL=C, no randomness) and idempotent: run it again and it
# changes nothing (delete data/shipped/ to rebuild). Needs tools/fetch_data.sh's data/ and ffmpeg.
#
# HELD OUT (no training step of the tokenizer or the LVM ever reads these; every metric is on them):
#   MNIST   the last 10% of each class folder data/mnist/C/, by file order (sorted file names):
#           floor(n/10) files of the n in class C (e.g. class 0: 1001 files -> 100 held out).
#   video   of each video in data/video/ (vtest.avi 795 frames, Megamind.avi 270, tree.avi 68),
#           decoded frame by frame (every frame, shorter side scaled to 128 px, PNG): the last
#           ceil(n/10) frames (its temporal tail). The GAP=8 frames just before the tail are used
#           by nobody, so no training frame is a near-duplicate neighbour of a held-out one.
#   photos  data/images/{opencv,skimage}/*: the files sorted by "DIR/NAME" (LC_ALL=C); every 8th
#           (1-based positions 8, 16, 24, ...) is held out.
#
# Layout (symlinks into data/ for MNIST and photos; extracted PNG frames for videos):
#   data/shipped/train/mnist/{0..9}/NNNNN.png      data/shipped/heldout/mnist/{0..9}/NNNNN.png
#   data/shipped/train/video/NAME/NNNNN.png        data/shipped/heldout/video/NAME/NNNNN.png
#   data/shipped/train/photos/DIR_NAME             data/shipped/heldout/photos/DIR_NAME
#   data/shipped/tok/SOURCE/...   the tokenizer's training input, built only from train/: the
#           tokenizer samples a random *source* then a random image of it, and every sub-folder
#           of a folder given to it is one source, so sources are grouped to weigh the domains:
#           50 digit sources (each class's train digits dealt round-robin into 5 folders),
#           video sources of 32 consecutive train frames each (~30), photo sources of 2 photos
#           each (~20) -> sampled roughly 50% digits, 30% video frames, 20% photos.
#   data/shipped/SPLIT.txt   the resulting counts.
set -euo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C
SRC=data
DST=data/shipped
GAP=8
say() { echo "[split] $*" >&2; }

if [ -f "$DST/.done" ]; then say "already split ($DST/.done)"; cat "$DST/SPLIT.txt"; exit 0; fi
[ -d "$SRC/mnist/0" ] && [ -d "$SRC/video" ] && [ -d "$SRC/images" ] ||
  { say "run tools/fetch_data.sh first"; exit 1; }
command -v ffmpeg >/dev/null || { say "ffmpeg is needed to cut the videos into frames"; exit 1; }
rm -rf "$DST"
mkdir -p "$DST"/{train,heldout}/{mnist,video,photos} "$DST/tok"
ABS="$(pwd)"
report=()

# MNIST: last floor(n/10) of each class by sorted name.
for c in 0 1 2 3 4 5 6 7 8 9; do
  mapfile -t files < <(ls "$SRC/mnist/$c" | grep -i '\.png$' | sort)
  n=${#files[@]}; h=$((n / 10)); t=$((n - h))
  mkdir -p "$DST/train/mnist/$c" "$DST/heldout/mnist/$c"
  for ((i = 0; i < n; i++)); do
    f=${files[$i]}
    if ((i < t)); then ln -s "$ABS/$SRC/mnist/$c/$f" "$DST/train/mnist/$c/$f"
    else ln -s "$ABS/$SRC/mnist/$c/$f" "$DST/heldout/mnist/$c/$f"; fi
  done
  # tokenizer sources: the class's train digits dealt round-robin into 5 folders
  for ((i = 0; i < t; i++)); do
    d="$DST/tok/digits_${c}_$((i % 5))"; mkdir -p "$d"
    ln -s "$ABS/$SRC/mnist/$c/${files[$i]}" "$d/${files[$i]}"
  done
  report+=("mnist/$c: $n files, train $t (${files[0]}..${files[$((t - 1))]}), heldout $h (${files[$t]}..${files[$((n - 1))]})")
done

# Videos: every frame, shorter side 128 px; tail ceil(n/10) held out, GAP frames before it unused.
for v in $(ls "$SRC/video" | sort); do
  name="${v%.*}"
  tmp="$DST/.frames_$name"; rm -rf "$tmp"; mkdir -p "$tmp"
  ffmpeg -v error -i "$SRC/video/$v" -vf "scale='if(lt(iw,ih),128,-2)':'if(lt(iw,ih),-2,128)':flags=bicubic" \
    -start_number 0 "$tmp/%05d.png"
  mapfile -t frames < <(ls "$tmp" | sort)
  n=${#frames[@]}; h=$(((n + 9) / 10)); t=$((n - h - GAP))
  mkdir -p "$DST/train/video/$name" "$DST/heldout/video/$name"
  for ((i = 0; i < n; i++)); do
    f=${frames[$i]}
    if ((i < t)); then mv "$tmp/$f" "$DST/train/video/$name/$f"
    elif ((i >= n - h)); then mv "$tmp/$f" "$DST/heldout/video/$name/$f"; fi
  done
  rm -rf "$tmp"
  for ((i = 0; i < t; i++)); do
    d="$DST/tok/video_${name}_$(printf %02d $((i / 32)))"; mkdir -p "$d"
    ln -s "$ABS/$DST/train/video/$name/${frames[$i]}" "$d/${frames[$i]}"
  done
  report+=("video/$name: $n frames, train 0..$((t - 1)) ($t), unused gap $t..$((n - h - 1)) ($GAP), heldout $((n - h))..$((n - 1)) ($h)")
done

# Photos: every 8th of the sorted DIR/NAME list held out.
mapfile -t photos < <(cd "$SRC/images" && ls -d */* | grep -iE '\.(png|jpe?g|tiff?)$' | sort)
k=0; ntrain=0; nheld=0; held_names=()
for ((i = 0; i < ${#photos[@]}; i++)); do
  p=${photos[$i]}; flat="${p//\//_}"
  if (((i + 1) % 8 == 0)); then
    ln -s "$ABS/$SRC/images/$p" "$DST/heldout/photos/$flat"; nheld=$((nheld + 1)); held_names+=("$flat")
  else
    ln -s "$ABS/$SRC/images/$p" "$DST/train/photos/$flat"
    d="$DST/tok/photos_$(printf %02d $((k / 2)))"; mkdir -p "$d"
    ln -s "$ABS/$SRC/images/$p" "$d/$flat"; k=$((k + 1)); ntrain=$((ntrain + 1))
  fi
done
report+=("photos: ${#photos[@]} files, train $ntrain, heldout $nheld: ${held_names[*]}")
report+=("tokenizer sources (data/shipped/tok): $(ls "$DST/tok" | grep -c '^digits') digit, $(ls "$DST/tok" | grep -c '^video') video, $(ls "$DST/tok" | grep -c '^photos') photo")

printf '%s\n' "${report[@]}" > "$DST/SPLIT.txt"
cat "$DST/SPLIT.txt"
touch "$DST/.done"
