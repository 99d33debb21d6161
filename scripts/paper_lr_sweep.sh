#!/usr/bin/env bash
# The learning-rate and warm-up sweep that chose the training settings of configs/paper-mixed
# (issue 16: "tune the learning rate and warm-up for this scale once, with a short sweep on the Dense
# and DeepSeekMoE models, and then use the same settings for all"). Each point trains the model for
# a fifth of the suite's steps with the suite's batch, schedule shape and data, and is scored by its
# held-out loss at the end. Two runs at a time, one thread each (the suite's own layout).
# Writes runs/lr-sweep/<model>-lr<LR>-wu<W>/ and the table runs/lr-sweep/sweep.md; a re-run skips
# finished points. Usage: [POINTS="model lr warmup\n..."] scripts/paper_lr_sweep.sh [DATA]   (default
# data/mixed-bpe8k; POINTS replaces the list below)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-data/mixed-bpe8k}
[ -f "$data/train.safetensors" ] || { echo "paper_lr_sweep: no prepared data in $data (dsmoe prepare --corpus mixed --tokenizer bpe --vocab-size 8192 --out $data)" >&2; exit 2; }
unset OPENBLAS_CORETYPE
export OMP_NUM_THREADS=1
root=runs/lr-sweep
mkdir -p "$root"
steps=600
# model lr warm-up. Learning rates at 8% warm-up (the paper's 2000 of ~25K steps), doubling from 2e-3
# (the Brown suite's) until the loss turns up, then the warm-up at the best one.
points=${POINTS:-"dense 0.002 48
dense 0.004 48
dense 0.008 48
dense 0.016 48
deepseekmoe 0.002 48
deepseekmoe 0.004 48
deepseekmoe 0.008 48
deepseekmoe 0.016 48"}

run_point() {
  local m=$1 lr=$2 wu=$3
  local dir="$root/$m-lr$lr-wu$wu"
  if [ -f "$dir/checkpoint.safetensors" ] && grep -q "\"step\":$steps,.*val_loss" "$dir/metrics.jsonl" 2>/dev/null; then return 0; fi
  local cfg="$root/$m-lr$lr-wu$wu.json"
  printf '{ "extends": "%s", "training": {"lr": %s, "warmup_steps": %s, "steps": %s, "eval_interval": %s} }\n' \
    "$PWD/configs/paper-mixed/$m.json" "$lr" "$wu" "$steps" "$steps" > "$cfg"
  ./build/dsmoe train --config "$cfg" --data "$data" --out "$dir" --force --quiet --sample-tokens 0
}

pids=()
while read -r m lr wu; do
  run_point "$m" "$lr" "$wu" &
  pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done <<< "$points"
for p in "${pids[@]}"; do wait "$p"; done

{
  echo "| model | lr | warm-up steps | held-out loss after $steps steps |"
  echo "|---|---|---|---|"
  while read -r m lr wu; do
    v=$(grep -o '"val_loss":[0-9.eE+-]*' "$root/$m-lr$lr-wu$wu/metrics.jsonl" | tail -1 | cut -d: -f2)
    printf '| %s | %s | %s | %.4f |\n' "$m" "$lr" "$wu" "$v"
  done <<< "$points"
} > "$root/sweep.md"
cat "$root/sweep.md"
