#!/usr/bin/env bash
# Checks `dsmoe scaling` (the step cost model, src/experiment/scaling_model.h) against measured
# training steps on this machine: one thread per rank,
#   1. P = 1: `dsmoe train` (1 thread) gives the rank's sustained rate (tokens/s x train FLOPs/token);
#   2. comm_bench under mpirun -np 2 gives the all-to-all latency and bandwidth between two ranks;
#   3. P = 2 (mpirun, --ep 2, 1 thread each) is measured and compared with the model's prediction
#      from 1 and 2, and with P = 1 at 2 threads (the same total threads);
# alternating P = 1 and P = 2 for REPS rounds, the load average recorded with each run.
#   bench/scaling_check.sh        CONFIG=configs/paper/gshard.json DATA=data/brown-bpe2k STEPS=30 REPS=3
STEPS_DEFAULT=30
source "$(dirname "$0")/two_rank_training_env.sh"
work=$(mktemp -d /tmp/dsmoe-scaling-check.XXXXXX)
load() { cut -d' ' -f1 /proc/loadavg; }
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, commit $(git rev-parse --short HEAD), $CONFIG, $STEPS steps"

tok_s() { grep -o '[0-9.]* tok/s average' "$1" | tail -1 | cut -d' ' -f1; }
train() {  # label, threads, extra train flags (one word), launcher...
  local label=$1 threads=$2 extra=$3
  shift 3
  rm -rf "$work/$label"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=$threads "$@" "$BUILD/dsmoe" train --config "$CONFIG" --data "$DATA" --out "$work/$label" \
    --steps "$STEPS" --sample-tokens 0 $extra >"$work/$label.log" 2>&1 || { cat "$work/$label.log"; exit 1; }
  tok_s "$work/$label.log"
}

# Train FLOPs per token at the attention length of max_position_embeddings (the paper configs train
# at that length).
flops=$("$BUILD/dsmoe" info --config "$CONFIG" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["train_flops_per_token"])')
declare -a p1 p2 p1t2
for r in $(seq "$REPS"); do
  l=$(load); p1+=("$(train p1 1 "")"); echo "round $r: P=1 1 thread  ${p1[-1]} tok/s (load $l)"
  l=$(load); p2+=("$(train p2 1 "--ep=2" "${MPI[@]}" -x OMP_NUM_THREADS=1)")
  echo "round $r: P=2 --ep 2, 1 thread each ${p2[-1]} tok/s (load $l)"
  l=$(load); p1t2+=("$(train p1t2 2 "")"); echo "round $r: P=1 2 threads ${p1t2[-1]} tok/s (load $l)"
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
P1=$(med "${p1[@]}"); P2=$(med "${p2[@]}"); P1T2=$(med "${p1t2[@]}")

"${MPI[@]}" -x OMP_NUM_THREADS=1 "$BUILD/comm_bench" --max-mb 32 --reps 20 >"$work/comm.log"
cat "$work/comm.log"
lat=$(grep -o 'intra-latency-us [0-9.]*' "$work/comm.log" | cut -d' ' -f2)
bw=$(grep -o 'intra-gbs [0-9.]*' "$work/comm.log" | cut -d' ' -f2)
gflops=$(python3 -c "print($P1 * $flops / 1e9)")

"$BUILD/dsmoe" scaling --config "$CONFIG" --rank-gflops "$gflops" --ranks-per-node 2 --nodes 1 --ep 2 \
  --intra-gbs "$bw" --intra-latency-us "$lat" --json >"$work/predicted.json"
python3 - "$work/predicted.json" "$P1" "$P2" "$P1T2" "$gflops" <<'EOF'
import json, sys
row = json.load(open(sys.argv[1]))[0]
p1, p2, p1t2, gflops = map(float, sys.argv[2:6])
pred_tps = row["tokens_per_s"]
print(f"\nrank rate from P=1 (1 thread): {gflops:.2f} GFLOP/s")
print("| | tokens/s | step split |")
print("|---|---|---|")
print(f"| P=1, 1 thread (measured) | {p1:.0f} | all compute |")
print(f"| P=2, --ep 2, 1 thread each (measured) | {p2:.0f} | |")
print(f"| P=2 predicted by dsmoe scaling | {pred_tps:.0f} | compute {row['compute_s']:.3g} s, all-to-all {row['all_to_all_s']:.3g} s, all-reduce {row['all_reduce_s']:.3g} s |")
print(f"| P=1, 2 threads (measured, same total threads) | {p1t2:.0f} | |")
print(f"\nprediction / measurement at P=2: {pred_tps / p2:.2f}; P=2 over P=1 at 2 threads: {p2 / p1t2:.2f}")
EOF
python3 - "$work/p2/metrics.jsonl" <<'EOF2'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
comm = [sum(r["comm_s"][i] for r in rows if "comm_s" in r) for i in range(2)]
wait = [sum(r["comm_wait_s"][i] for r in rows if "comm_wait_s" in r) for i in range(2)]
step = [sum(r["step_s"][i] for r in rows if "step_s" in r) for i in range(2)]
load = [r["max_load"] for r in rows]
print(f"measured at P=2 (last round, metrics.jsonl): time inside collectives {comm[0]:.2f} / {comm[1]:.2f} s of "
      f"{step[0]:.2f} / {step[1]:.2f} s of steps per rank ({100 * comm[0] / step[0]:.0f}% / {100 * comm[1] / step[1]:.0f}%), "
      f"of which waiting for the other rank {wait[0]:.2f} / {wait[1]:.2f} s ({100 * wait[0] / step[0]:.0f}% / "
      f"{100 * wait[1] / step[1]:.0f}%) and transfer {comm[0] - wait[0]:.3f} / {comm[1] - wait[1]:.3f} s; "
      f"expert load max/mean {min(load):.2f}-{max(load):.2f}")
EOF2
echo "logs: $work"
