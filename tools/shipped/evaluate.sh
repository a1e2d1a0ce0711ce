#!/usr/bin/env bash
# Evaluates the shipped models on the held-out split (tools/shipped/split.sh) after
# tools/shipped/train.sh: every LVM size found, one JSON + charts (deno task train evaluate):
#
#   bash tools/shipped/evaluate.sh            # -> out/shipped/eval/{metrics.json,*.png,strips/}
#
# Then `cp out/shipped/eval/metrics.json models/metrics.json` (the demo draws its charts from it)
# and copy the figures into models/README.md.
# Env: TOK (tokenizer folder or run folder, default out/shipped/tokenizer), MODELS (space-separated
# model or run folders, default out/shipped/lvm_{xs,s,m}, missing ones skipped), EXAMPLES (held-out
# prompts per task, default 24), SEED (default 0), OUT (default out/shipped/eval), EXTRA (more flags).
# Runs from the working tree (not train.sh's pinned snapshot): the evaluation is newer than the pin.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DENO_WEBGPU_BACKEND="${DENO_WEBGPU_BACKEND:-vulkan}" XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
TOK="${TOK:-out/shipped/tokenizer}"
MODELS="${MODELS:-out/shipped/lvm_xs out/shipped/lvm_s out/shipped/lvm_m}"
OUT="${OUT:-out/shipped/eval}"
HELD="data/shipped/heldout"
args=()
for m in $MODELS; do
  if [ -e "$m" ]; then args+=(--model "$m"); else echo "[evaluate] $m: not there, skipped" >&2; fi
done
[ ${#args[@]} -gt 0 ] || { echo "[evaluate] no model found (MODELS=$MODELS)" >&2; exit 1; }
[ -d "$HELD" ] || { echo "[evaluate] $HELD missing: run tools/shipped/split.sh" >&2; exit 1; }
[ -d out/shipped/ds/train ] && args+=(--train-data out/shipped/ds/train)
mkdir -p "$OUT"
t0=$SECONDS
# shellcheck disable=SC2086
deno run -A apps/train/main.ts evaluate "${args[@]}" --tokenizer "$TOK" --heldout "$HELD" \
  --train data/shipped/train --examples "${EXAMPLES:-24}" --seed "${SEED:-0}" \
  --json "$OUT/metrics.json" --charts "$OUT" ${EXTRA:-} | tee "$OUT/summary.txt"
echo "[evaluate] done in $(((SECONDS - t0) / 60)) min: $OUT/metrics.json, $OUT/in_context.png, $OUT/scaling.png" >&2
