#!/usr/bin/env bash
# The gradient all-reduce after backward (--no-overlap-grad-sync) against overlapped with it (the default,
# train/gradient_sync.h), data-parallel at P = 2, one thread per rank: every gradient float is
# all-reduced, and the step is small, so the all-reduce is a large share of it. The two settings
# alternate for REPS rounds, the load average recorded with each run; per run the median step time
# (metrics.jsonl step_s, steps after the first), the share of it in collectives and the share of
# that spent waiting for the other rank.
#   bench/grad_overlap.sh       CONFIG=configs/paper/gshard.json DATA=data/brown-bpe2k STEPS=40 REPS=3
#                               BATCH=4 SEQ=128 (the micro-batch: the step's compute)
STEPS_DEFAULT=40
source "$(dirname "$0")/two_rank_training_env.sh"
BATCH="${BATCH:-4}"
SEQ="${SEQ:-128}"
MPI+=(-x OMP_NUM_THREADS=1)
work=$(mktemp -d /tmp/dsmoe-grad-overlap.XXXXXX)
cfg="$work/config.json"
cat >"$cfg" <<JSON
{ "extends": "$(realpath "$CONFIG")",
  "training": { "batch_size": $BATCH, "seq_len": $SEQ, "grad_accum": 1, "log_interval": 1, "eval_interval": 0,
                "eval_batches": 1, "warmup_steps": 2 } }
JSON
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores," \
  "commit $(git rev-parse --short HEAD), $CONFIG, batch $BATCH x $SEQ, $STEPS steps, P = 2 data-parallel"
run() {  # label, extra flag
  rm -rf "$work/$1"
  # shellcheck disable=SC2086
  "${MPI[@]}" "$BUILD/dsmoe" train --config "$cfg" --data "$DATA" --out "$work/$1" --steps "$STEPS" \
    --sample-tokens 0 --quiet $2 >"$work/$1.log" 2>&1 || { cat "$work/$1.log"; exit 1; }
  python3 - "$work/$1/metrics.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
step = [max(r["step_s"]) for r in rows]
comm = [sum(r["comm_s"]) / sum(r["step_s"]) for r in rows]
wait = [sum(r["comm_wait_s"]) / sum(r["step_s"]) for r in rows]
print(f"step {1e3 * statistics.median(step):.1f} ms (median), comm {100 * statistics.mean(comm):.1f}%, "
      f"of which waiting {100 * statistics.mean(wait):.1f}%")
PY
}
for r in $(seq "$REPS"); do
  echo "round $r: after backward (load $(cut -d' ' -f1 /proc/loadavg)): $(run after --no-overlap-grad-sync)"
  echo "round $r: overlapped     (load $(cut -d' ' -f1 /proc/loadavg)): $(run overlap --overlap-grad-sync)"
done
rm -rf "$work"
