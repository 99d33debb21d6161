#!/usr/bin/env bash
# Inference speed (bf16 / q8 / q4) on a 4-layer model with deepseek-moe-16b's expert shapes, next to
# the read-bandwidth ceiling measured in the same invocation, and decode's share of it:
#   ceiling tokens/s = read GB/s / weight bytes one token reads (MB/token, counted by the benchmark).
#   bench/infer_bench.sh                      2 threads
#   THREADS=1 DSMOE_BENCH=build-q/dsmoe_bench bench/infer_bench.sh
#   OMP_WAIT_POLICY=passive bench/infer_bench.sh   on a machine shared with other busy processes
# The OpenMP wait policy is left as the caller has it (unset: libgomp spins briefly, then sleeps;
# what a user of dsmoe gets). A decode step runs ~30 short parallel regions, and waking sleeping
# threads for each costs a third of the speed (measured: bench/RESULTS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE
BENCH="${DSMOE_BENCH:-build/dsmoe_bench}"
THREADS="${THREADS:-2}"
OUT="$(mktemp /tmp/dsmoe_infer.XXXXXX.json)"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), threads $THREADS, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}, $BENCH"
OMP_NUM_THREADS=$THREADS "$BENCH" --benchmark_filter='^(Ceiling_ReadBandwidth|Infer_)' \
  --benchmark_out="$OUT" --benchmark_out_format=json
python3 - "$OUT" "$THREADS" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); T = sys.argv[2]
b = {x["name"].replace("/real_time", "").replace("/min_time:3.000", ""): x for x in d["benchmarks"]}
bw = b[f"Ceiling_ReadBandwidth/threads:{T}"]["GB/s"] / 1e9
print(f"\nread ceiling ({T} thread(s)): {bw:.2f} GB/s")
print("| storage | MB/token | decode tok/s | ceiling tok/s | % of ceiling | prefill tok/s (128) | GEMV GB/s (% of ceiling) |")
print("|---|---|---|---|---|---|---|")
for i, t in enumerate(["bf16", "q8", "q4"]):
    dec = b[f"Infer_Decode/type:{i}"]; pre = b[f"Infer_Prefill/type:{i}/compute:0"]; g = b[f"Infer_Gemv/type:{i}"]["GB/s"] / 1e9
    mb = dec["MB/token"]; ceil = bw * 1e3 / mb
    print(f"| {t} | {mb:.1f} | {dec['tokens/s']:.2f} | {ceil:.2f} | {100 * dec['tokens/s'] / ceil:.0f}% | {pre['tokens/s']:.1f} | {g:.2f} ({100 * g / bw:.0f}%) |")
print("\n| storage | prefill tok/s (128), compute f32 | bf16 | int8 |")
print("|---|---|---|---|")
for i, t in enumerate(["bf16", "q8", "q4"]):
    row = [b.get(f"Infer_Prefill/type:{i}/compute:{c}", {}).get("tokens/s") for c in range(3)]
    print(f"| {t} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in row) + " |")
PY
