#!/usr/bin/env bash
# before/after, interleaved, same process environment
set -u
cd /work/main
unset OPENBLAS_CORETYPE
export OMP_WAIT_POLICY=passive
OUT=/tmp/ba; mkdir -p $OUT
for T in 2 1; do
  for r in 1; do
    for v in before after; do
      B=/tmp/dsmoe_bench_before; [[ $v == after ]] && B=build-speed/dsmoe_bench
      echo "[$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)] $v T=$T rep $r"
      OMP_NUM_THREADS=$T $B --benchmark_filter='^TrainStep_(Default|PaperDeepSeekMoE)/' --benchmark_min_time=2 \
        --benchmark_out=$OUT/${v}_t${T}_r$r.json --benchmark_out_format=json 2>&1 | grep real_time
    done
  done
  echo "[$(date -u +%T)] ceiling T=$T"
  build-speed/dsmoe_bench --benchmark_filter="^Ceiling_Sgemm/2048/$T" 2>&1 | grep Ceiling
done
for v in before after; do
  B=/tmp/dsmoe_bench_before; [[ $v == after ]] && B=build-speed/dsmoe_bench
  echo "[$(date -u +%T) load $(cut -d' ' -f1 /proc/loadavg)] $v Paper2B T=2"
  OMP_NUM_THREADS=2 $B --benchmark_filter='^TrainStep_Paper2B' --benchmark_out=$OUT/${v}_2b_t2.json --benchmark_out_format=json 2>&1 | grep real_time
done
