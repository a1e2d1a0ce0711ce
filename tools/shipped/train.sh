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
PIN="${PIN:-c83d8c3}"
O="$R/out/shipped"
CODE="$O/code"
LOG="$O/logs"
ST="$O/stages"
D="$R/data/shipped"
DS="$O/ds"
mkdir -p "$LOG" "$ST" "$DS"

TOK_STEPS="${TOK_STEPS:-1500}"
TOK_BATCH=8
# LVM: one visual sentence = 8 images x 64 codes = 512 tokens = one packed row.
SEQ=512
LVM_BATCH=8                                  # 4096 tokens per step
LVM_TOKENS="${LVM_TOKENS:-1228800}"          # same budget for every size
LVM_STEPS=$((LVM_TOKENS / (SEQ * LVM_BATCH)))

say() { echo "[shipped $(date +%H:%M:%S)] $*"; }
lvm() { (cd "$CODE" && deno run -A apps/train/main.ts "$@"); }
done_() { [ -f "$ST/$1.done" ]; }
mark() { date -Is > "$ST/$1.done"; }

plan() {
  cat <<EOF
[shipped] plan (2-core CPU, lavapipe; estimates with the CPU shared):
  1 split       tools/shipped/split.sh (MNIST last 10%/class, video tails, every 8th photo)  ~3 min
  2 tokenizer   tiny VQGAN (32x32 -> 8x8 codes, 512 codes, 2.85M params), $TOK_STEPS steps x batch $TOK_BATCH,
                on data/shipped/tok (train digits, train video frames, train photos);
                eval: held-out MNIST (900 digits)                                      ~45-60 min
  3 datasets    8 images/sentence (512 tokens): classes (MNIST), digit analogies (invert, flip,
                rotation, zoom, edges), colour analogies on photos + video frames (colorization,
                flip, rotation, edges, zoom, invert), sequence (video frames, stride 2); the same
                kinds on the held-out split; combined into ds/train and ds/heldout       ~15 min
  4 lvm-*       LLaMA, seq $SEQ, batch $LVM_BATCH, $LVM_STEPS steps = $LVM_TOKENS tokens each:
                xs ~1M, s ~3M, m ~7.8M params (tools/shipped/lvm_*.json)                    see below
EOF
}

snapshot() {
  if [ ! -f "$CODE/.pin" ]; then
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
    --log-every 10 --save-every 50 --eval-every 250 --json "${resume[@]}" \
    > "$O/tokenizer.json" 2>> "$LOG/tokenizer.log"
  cat "$O/tokenizer.json"
}

# Every stage, in order. Each entry: NAME (function stage_NAME).
STAGES=(split tokenizer)

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
