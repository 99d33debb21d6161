#!/usr/bin/env bash
# The paper's comparisons at a budget where experts specialise (issue 16): sets up (idempotent),
# prepares the multi-domain corpus with an 8K BPE and runs configs/paper-mixed/suite.json into
# reports/paper-mixed. The runs train two at a time, one thread each (`dsmoe experiment --shard
# I/2`: small models use one core better than two), then one more pass reuses every checkpoint,
# runs the analyses and writes the report. Interrupted, it resumes where it stopped (runs
# checkpoint every training.checkpoint_interval steps). Shard logs: OUT/shard-I.log.
# Usage: scripts/paper_mixed.sh [--quick] [--jobs N] [extra `dsmoe experiment` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
unset OPENBLAS_CORETYPE   # the image's Haswell override halves SGEMM speed on this CPU
data=data/mixed-bpe8k
[ -f $data/train.safetensors ] || ./build/dsmoe prepare --corpus mixed --tokenizer bpe --vocab-size 8192 --out $data
out=reports/paper-mixed
jobs=2
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) out=reports/paper-mixed-quick; args+=("$1") ;;
    --jobs) jobs=$2; shift ;;
    *) args+=("$1") ;;
  esac
  shift
done
[[ "$jobs" =~ ^[1-9][0-9]?$ ]] || { echo "paper_mixed: --jobs must be 1-99, got '$jobs'" >&2; exit 2; }
suite=(./build/dsmoe experiment --suite configs/paper-mixed/suite.json --data $data --out "$out")
mkdir -p "$out"
if [ "$jobs" -gt 1 ]; then
  threads=$(( $(nproc) / jobs )); [ "$threads" -ge 1 ] || threads=1
  pids=()
  for ((i = 0; i < jobs; i++)); do
    OMP_NUM_THREADS=$threads "${suite[@]}" --shard "$i/$jobs" "${args[@]}" > "$out/shard-$i.log" 2>&1 &
    pids+=($!)
  done
  trap 'kill "${pids[@]}" 2>/dev/null' INT TERM
  echo "paper_mixed: training in $jobs processes of $threads thread(s); follow $out/shard-*.log"
  status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  [ $status -eq 0 ] || { echo "paper_mixed: a shard failed (see $out/shard-*.log)" >&2; exit 1; }
fi
"${suite[@]}" "${args[@]}"
