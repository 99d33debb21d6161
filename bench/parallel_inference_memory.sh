#!/bin/sh
# Resident memory per rank of expert-parallel inference: `dsmoe score` on one model folder at P = 1, 2
# and 4 (the routed experts split over all ranks), each rank's RSS after loading and its peak, as
# `dsmoe` reports them on stderr ("resident memory after loading: rank 0 ... (peak ...)").
#   bench/parallel_inference_memory.sh [MODEL_DIR] [BUILD_DIR]
# MODEL_DIR defaults to /tmp/dsmoe_bench_model (build/make_bench_model writes it: 16B expert shapes,
# 64 routed experts, 4 layers, q8, 1.97 GB).
set -eu
MODEL=${1:-/tmp/dsmoe_bench_model}
BUILD=${2:-build}
IDS=$(mktemp /tmp/dsmoe_mem_ids.XXXXXX)
trap 'rm -f "$IDS"' EXIT
echo "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]" > "$IDS"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for P in 1 2 4; do
  if [ "$P" = 1 ]; then
    OMP_NUM_THREADS=1 env -u OPENBLAS_CORETYPE "$BUILD/dsmoe" score --model "$MODEL" --ids-jsonl "$IDS" --summary \
      2>&1 >/dev/null | grep -E "resident memory|loaded" | sed "s/^/P=1: /"
  else
    mpirun --allow-run-as-root --oversubscribe -np "$P" -x OMP_NUM_THREADS=1 -x OMP_WAIT_POLICY=passive \
      env -u OPENBLAS_CORETYPE "$BUILD/dsmoe" score --model "$MODEL" --ids-jsonl "$IDS" --summary \
      2>&1 >/dev/null | grep -E "resident memory|loaded" | sed "s/^/P=$P: /"
  fi
done
