#!/usr/bin/env bash
# Trains the models to ship (tokenizer + LVMs at three sizes for the scaling study) on the real
# data of tools/fetch_data.sh, held-out split by tools/shipped/split.sh. One resumable script:
#
#   setsid nohup bash tools/shipped/train.sh > out/shipped/logs/train.out 2>&1 &
#
# Stages run in order; a finished stage leaves out/shipped/stages/NAME.done and is skipped; an
# interrupted one resumes with its CLI's own --resume (tokenizer, model) or resumable build
# (dataset). After every stage the script re-executes itself, so edits to later stages take
# effect without a restart. Logs: out/shipped/logs/STAGE.log (progress lines), JSON:
# out/shipped/logs/*.jsonl (model --json-log) and out/shipped/*.json (summaries).
#
# The trainer runs from a pinned snapshot of the repository (out/shipped/code = `git archive PIN`),
# so the packages being restructured in the working tree cannot break a run that lasts hours.
# Env: PIN (commit, default below), TOK_STEPS, LVM_TOKENS (token budget per model size).
set -euo pipefail
cd "$(dirname "$0")/../.."
R="$(pwd)"
export DENO_WEBGPU_BACKEND="${DENO_WEBGPU_BACKEND:-vulkan}" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
PIN="${PIN:-aaeecfa}"
O="$R/out/shipped"
CODE="$O/code"
LOG="$O/logs"
ST="$O/stages"
D="$R/data/shipped"
DS="$O/ds"
mkdir -p "$LOG" "$ST" "$DS"

TOK_STEPS="${TOK_STEPS:-1000}"
TOK_BATCH=8
# LVM: one visual sentence = 8 images x 64 codes = 512 tokens = one packed row.
SEQ=512
LVM_BATCH=4                                  # 2048 tokens per step
# Peak learning rate per size: 1e-3 x 128 / hidden (1e-3 at xs's width 128; m at 1e-3 spiked from
# loss 5.5 to 7.8 repeatedly in its first 60 steps, measured), cosine to lr/5 after 10% warmup.
declare -A LVM_LR=([xs]=1e-3 [s]=6.7e-4 [m]=4e-4)
# Same budget for every size. The first run (PIN c83d8c3) trained 614,400 tokens (300 steps, a
# cosine ending at step 300); the budget was then raised to 3,072,000 (1500 steps) and each run
# resumed with --decay-steps 1500: the cosine restarts from its value at step 300 of a 1500-step
# decay (a warm restart, lr back near the peak) and ends at step 1500. A fresh run with this
# budget gets the plain 1500-step cosine.
LVM_TOKENS="${LVM_TOKENS:-3072000}"
LVM_STEPS=$((LVM_TOKENS / (SEQ * LVM_BATCH)))

say() { echo "[shipped $(date +%H:%M:%S)] $*"; }
lvm() { (cd "$CODE" && deno run -A apps/train/main.ts "$@"); }
done_() { [ -f "$ST/$1.done" ]; }
mark() { date -Is > "$ST/$1.done"; }

plan() {
  local xs=$((LVM_TOKENS / 3000 / 60)) sm=$((LVM_TOKENS / 1200 / 60)) m=$((LVM_TOKENS / 480 / 60))
  cat <<EOF
[shipped] plan (2-core CPU through lavapipe, CPU shared with other work; rates measured here
          under that load; each stage resumes where it stopped):
  split           tools/shipped/split.sh: MNIST last 10% per class, video tails, every 8th photo  ~3 min (once)
  tokenizer       tiny VQGAN (32x32 -> 8x8 codes, 512 codes, 2.85M params), $TOK_STEPS steps x batch $TOK_BATCH
                  on data/shipped/tok (train digits ~44%, train video frames ~39%, train photos ~18%
                  of samples); 0.25-0.55 steps/s -> ~35-65 min, + ~3 min held-out eval (997 digits)
  tokenizer_eval  tools/shipped/psnr.ts: held-out PSNR of digits, video frames, photos            ~1 min
  datasets        8 images (512 tokens) per sentence, --shard-sentences 16; train ~1770 sentences:
                  classes, digit analogies (invert flip rotation zoom edges), colour analogies on
                  photos + video frames (colorization flip rotation edges zoom invert), sequence
                  (stride 2); the same kinds on the held-out split; ~17k images at 25-50 img/s  ~10-15 min
  lvm_xs          0.95M params (tools/shipped/lvm_xs.json) } seq $SEQ x batch $LVM_BATCH, $LVM_STEPS steps,
  lvm_s           2.89M params (lvm_s.json)              } $LVM_TOKENS tokens each, lr 1e-3*128/hidden:
  lvm_m           7.83M params (lvm_m.json)              } ~3000 / ~1200 / ~480 tokens/s (quiet CPU; up to 5x slower under load) -> ~$xs / ~$sm / ~$m min
  evaluate        tools/shipped/evaluate.sh: every metric of the model card, 3 sizes x 8 tasks   ~15 min
EOF
}

snapshot() {
  if [ "$(cat "$CODE/.pin" 2>/dev/null)" != "$PIN" ]; then
    say "snapshot of commit $PIN -> $CODE"
    rm -rf "$CODE" && mkdir -p "$CODE"
    git archive "$PIN" | tar -x -C "$CODE"
    echo "$PIN" > "$CODE/.pin"
  fi
}

stage_split() {
  bash tools/fetch_data.sh data
  bash tools/shipped/split.sh
}

stage_tokenizer() {
  local out="$O/tokenizer" resume=()
  [ -d "$out/checkpoints" ] && resume=(--resume)
  local evals=()
  # --eval-images once per folder: the CLI appends stray positionals to --images (training!)
  for c in 0 1 2 3 4 5 6 7 8 9; do evals+=(--eval-images "$D/heldout/mnist/$c"); done
  lvm tokenizer --images "$D/tok" --max-frames 0 "${evals[@]}" \
    --preset tiny --steps "$TOK_STEPS" --batch "$TOK_BATCH" --out "$out" \
    --log-every 10 --save-every 50 --json "${resume[@]}" \
    > "$O/tokenizer.json" 2>> "$LOG/tokenizer.log"
  cat "$O/tokenizer.json"
}

stage_tokenizer_eval() {
  (cd "$CODE" && deno run -A --config deno.json "$R/tools/shipped/psnr.ts" --code . "$O/tokenizer" \
    digits="$D/heldout/mnist" video="$D/heldout/video" photos="$D/heldout/photos") \
    > "$O/tokenizer_heldout.json"
  cat "$O/tokenizer_heldout.json"
}

# One dataset build (resumable by the CLI; skipped once its index.json exists). NAME, then arguments.
# --shard-sentences 16: the trainer shuffles shards, then the sentences of one shard at a time, so
# small shards are what mixes the tasks of the combined dataset within a short run.
build() {
  local name="$1"; shift
  if [ ! -f "$DS/$name/index.json" ]; then
    say "dataset $name: $*"
    lvm dataset --tokenizer "$O/tokenizer" --out "$DS/$name" --images 8 --shard-sentences 16 \
      --quiet "$@" 2>&1 | tee "$LOG/ds_$name.log"
  fi
}
combine() {
  local out="$1"; shift
  local dirs=()
  for n in "$@"; do dirs+=("$DS/$n"); done
  if [ ! -f "$DS/$out/index.json" ]; then lvm dataset --combine "${dirs[@]}" --out "$DS/$out"; fi
  lvm dataset --stats "$DS/$out" --json > "$DS/$out.stats.json"
  lvm dataset --stats "$DS/$out"
}

DIGIT_KINDS=(invert flip rotation zoom edges)
COLOUR_KINDS=(colorization flip rotation edges zoom invert)

# deal ROOT N NAME: the files of each sub-folder F of ROOT (sorted), file i -> $D/sub/NAME_g(i%N)/F/
# (symlinks). Disjoint subsets of a split for builds that should use only part of it (`--part`
# cannot subsample: `--combine` refuses a build whose other parts are missing).
deal() {
  local root="$1" n="$2" name="$3" f g i
  for f in $(ls "$root" | LC_ALL=C sort); do
    mapfile -t files < <(ls "$root/$f" | LC_ALL=C sort)
    for ((g = 0; g < n; g++)); do
      local sel=()
      for ((i = g; i < ${#files[@]}; i += n)); do sel+=("$root/$f/${files[$i]}"); done
      mkdir -p "$D/sub/${name}_g$g/$f"
      [ ${#sel[@]} -gt 0 ] && ln -s "${sel[@]}" "$D/sub/${name}_g$g/$f/"
    done
  done
}
subsets() {
  [ -f "$D/sub/.done" ] && return
  rm -rf "$D/sub"
  deal "$D/train/mnist" 20 mnist          # 20 groups of ~444 train digits (all classes)
  deal "$D/train/video" 6 frames          # 6 groups of every 6th train frame of each video
  deal "$D/heldout/mnist" 4 ho_mnist
  deal "$D/heldout/video" 2 ho_frames
  touch "$D/sub/.done"
}

stage_datasets() {
  local i g
  subsets
  # train split: ~1770 sentences (~0.9M tokens): classes ~31% (digit groups 0-9 = half the train
  # digits), digit analogies ~31% (one group of ~444 digits per kind: groups 10-14), colour
  # analogies ~22% (train photos + one group of every-6th train video frames per kind), sequences
  # ~15% (train video frames, stride 2, 3 random groupings).
  local roots=(); for g in 0 1 2 3 4 5 6 7 8 9; do roots+=("$D/sub/mnist_g$g"); done
  build classes --kind classes --input "${roots[@]}" --seed 1
  i=0; for k in "${DIGIT_KINDS[@]}"; do
    build "digit_$k" --kind "$k" --input "$D/sub/mnist_g$((10 + i))" --seed $((10 + i)); i=$((i + 1)); done
  i=0; for k in "${COLOUR_KINDS[@]}"; do
    build "colour_$k" --kind "$k" --input "$D/train/photos" "$D/sub/frames_g$i" --seed $((20 + i)); i=$((i + 1)); done
  build sequence --kind sequence --input "$D/train/video" --stride 2 --epochs 3 --seed 2
  combine train classes "${DIGIT_KINDS[@]/#/digit_}" "${COLOUR_KINDS[@]/#/colour_}" sequence
  # held-out split (never trained on): the same kinds, one combined dataset per task group
  build ho_classes --kind classes --input "$D/heldout/mnist" --seed 101
  i=0; for k in "${DIGIT_KINDS[@]}"; do
    build "ho_digit_$k" --kind "$k" --input "$D/sub/ho_mnist_g$((i % 4))" --seed $((110 + i)); i=$((i + 1)); done
  i=0; for k in "${COLOUR_KINDS[@]}"; do
    build "ho_colour_$k" --kind "$k" --input "$D/heldout/photos" "$D/sub/ho_frames_g$((i % 2))" --seed $((120 + i)); i=$((i + 1)); done
  build ho_sequence --kind sequence --input "$D/heldout/video" --stride 2 --epochs 2 --seed 102
  combine ho_digit_analogies "${DIGIT_KINDS[@]/#/ho_digit_}"
  combine ho_colour_analogies "${COLOUR_KINDS[@]/#/ho_colour_}"
  combine heldout ho_classes "${DIGIT_KINDS[@]/#/ho_digit_}" "${COLOUR_KINDS[@]/#/ho_colour_}" ho_sequence
}

# LLaMA at one size (tools/shipped/lvm_SIZE.json), the same data, order and token budget for all.
lvm_size() {
  local size="$1" out="$O/lvm_$1" args=()
  if [ -f "$out/latest" ] || ls -d "$out"/checkpoint-* >/dev/null 2>&1; then
    args=(--resume --decay-steps $LVM_STEPS)
  else
    args=(--data "$DS/train" --config "$R/tools/shipped/lvm_$size.json" --seq $SEQ
      --batch $LVM_BATCH --lr ${LVM_LR[$size]} --seed 0 --overwrite)
  fi
  lvm model --out "$out" "${args[@]}" --steps $LVM_STEPS --log-every 5 --eval-every 50 \
    --eval-batches 8 --save-every 25 --keep 2 --json-log "$LOG/lvm_$size.jsonl"
}
stage_lvm_xs() { lvm_size xs; }
stage_lvm_s() { lvm_size s; }
stage_lvm_m() { lvm_size m; }

# The held-out evaluation of every size (tools/shipped/evaluate.sh, run from the working tree: the
# evaluation is newer than the pin): out/shipped/eval/metrics.json, charts, strips.
stage_evaluate() { bash "$R/tools/shipped/evaluate.sh"; }

# Every stage, in order (function stage_NAME). lvm_xs first: a quick check of the whole data path;
# then s, then m (the slowest: ~90 min per 2.5M tokens on a quiet 2-core CPU).
STAGES=(split tokenizer tokenizer_eval datasets lvm_xs lvm_s lvm_m evaluate)

main() {
  snapshot
  plan
  for s in "${STAGES[@]}"; do
    if done_ "$s"; then continue; fi
    say "stage $s: start (log $LOG/$s.log)"
    local t0=$SECONDS
    "stage_$s" 2>&1 | tee -a "$LOG/$s.log"
    mark "$s"
    say "stage $s: done in $(((SECONDS - t0) / 60)) min"
    exec bash "$0" "$@"
  done
  say "all stages done"
}
main "$@"; exit $?
