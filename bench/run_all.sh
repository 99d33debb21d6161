#!/usr/bin/env bash
# dsmoe vs the PyTorch DeepSeekMoE peer, side by side, at the same thread counts, in one invocation.
#   bench/run_all.sh                      threads 2 then 1, results under a fresh temporary folder
#   THREADS="2" OUT_DIR=/tmp/x bench/run_all.sh
# Environment:
#   DSMOE_BENCH   the dsmoe_bench binary (default: build/dsmoe_bench, the README's build folder)
#   THREADS       thread counts to run, in order (default "2 1")
#   PEER_MATCHED  1 (default): also run the peer with OPENBLAS_CORETYPE set to the kernel set dsmoe
#                 picks for itself (Debian's OpenBLAS 0.3.21 does not detect this CPU and falls back
#                 to SSE "Prescott" kernels when the variable is unset; torch 1.13 does its fp32
#                 matmuls through that OpenBLAS). 0: only the unset run.
#   DSMOE_FILTER  dsmoe's benchmarks (default '^(Moe_LayerFwdBwd|TrainStep_)'; e.g. '^TrainStep_' with
#                 PEER_CASES=train,train_paper for the training steps only, ~10 min for both thread counts)
#   PEER_CASES    the peer's cases (default "small,2b,16b,train,train_paper"; add train_2b for the
#                 TrainStep_Paper2B peer, ~1.5 min per peer run at these sizes)
#   TOKENS_2B, TOKENS_16B  tokens of the two big MoE layers in the side-by-side rows (default 2048,
#                 1024: these must be rows registered in bench/bench_moe.cpp). dsmoe also runs the
#                 full-size rows (8192, 4096), shown without a peer.
# Both engines run with OPENBLAS_CORETYPE unset (the image may export Haswell): dsmoe then chooses
# its kernels itself (see src/core/blas_env.h), torch gets OpenBLAS's own detection.
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE
# The OpenMP wait policy is left as the caller has it, for both engines (unset: libgomp spins briefly,
# then sleeps; what users get). On a machine shared with other busy processes, OMP_WAIT_POLICY=passive
# avoids spinning barriers that collapse when another process holds a core (bench/RESULTS.md).
echo "OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}"

BENCH="${DSMOE_BENCH:-build/dsmoe_bench}"
[[ -x "$BENCH" ]] || { echo "no dsmoe_bench at $BENCH (build it: cmake --build build --target dsmoe_bench)" >&2; exit 1; }
TORCH_PY=/usr/bin/python3
"$TORCH_PY" -c "import torch" 2>/dev/null || { echo "$TORCH_PY cannot import torch" >&2; exit 1; }
THREADS="${THREADS:-2 1}"
PEER_MATCHED="${PEER_MATCHED:-1}"
DSMOE_FILTER="${DSMOE_FILTER:-^(Moe_LayerFwdBwd|TrainStep_)}"
PEER_CASES="${PEER_CASES:-small,2b,16b,train,train_paper}"
TOKENS_2B="${TOKENS_2B:-2048}"
TOKENS_16B="${TOKENS_16B:-1024}"
OUT_DIR="${OUT_DIR:-$(mktemp -d /tmp/dsmoe_run_all.XXXXXX)}"
mkdir -p "$OUT_DIR"

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cpus online"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null || echo '?') $(git status --porcelain 2>/dev/null | wc -l) changed files"
  echo "dsmoe_bench: $BENCH"
  echo "torch: $("$TORCH_PY" -c 'import torch; print(torch.__version__)')"
  "$TORCH_PY" -c 'import torch; print(torch.__config__.show())' | sed -n '/MKL-DNN\|OpenMP\|CPU capability\|BLAS_INFO/p' | cut -c1-200
} | tee "$OUT_DIR/env.txt"

load() { echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"; }

for T in $THREADS; do
  echo "== $T thread(s) =="
  echo "[$(load)] dsmoe ceilings"
  "$BENCH" --benchmark_filter='^Ceiling' --benchmark_format=console \
    --benchmark_out="$OUT_DIR/dsmoe_ceiling_t$T.json" --benchmark_out_format=json
  echo "[$(load)] dsmoe MoE layers + training steps, OMP_NUM_THREADS=$T"
  OMP_NUM_THREADS=$T "$BENCH" --benchmark_filter="$DSMOE_FILTER" --benchmark_format=console \
    --benchmark_out="$OUT_DIR/dsmoe_t$T.json" --benchmark_out_format=json
  echo "[$(load)] torch peer, OPENBLAS_CORETYPE unset"
  OMP_NUM_THREADS=$T OPENBLAS_NUM_THREADS=$T "$TORCH_PY" bench/torch_moe_peer.py --threads "$T" --cases "$PEER_CASES" \
    --tokens 2b="$TOKENS_2B" --tokens 16b="$TOKENS_16B" --json "$OUT_DIR/torch_t$T.json"
  if [[ "$PEER_MATCHED" == 1 ]]; then
    CT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["context"]["openblas_kernels"])' "$OUT_DIR/dsmoe_t$T.json")"
    echo "[$(load)] torch peer, OPENBLAS_CORETYPE=$CT (the kernels dsmoe picked)"
    OPENBLAS_CORETYPE=$CT OMP_NUM_THREADS=$T OPENBLAS_NUM_THREADS=$T "$TORCH_PY" bench/torch_moe_peer.py --threads "$T" --cases "$PEER_CASES" \
      --tokens 2b="$TOKENS_2B" --tokens 16b="$TOKENS_16B" --json "$OUT_DIR/torch_matched_t$T.json"
  fi
  echo "[$(load)] done"
done

python3 - "$OUT_DIR" $THREADS <<'PY'
import json, os, sys
out, threads = sys.argv[1], sys.argv[2:]
def gb(path):
    d = json.load(open(path))
    return d, {b["name"].replace("/real_time", "").replace("/iterations:2", ""): b for b in d["benchmarks"]}
def tp(path):
    if not os.path.exists(path): return {}
    d = json.load(open(path))
    return {r["name"]: r for r in d["results"]}, d["info"]
for T in threads:
    _, ceil = gb(f"{out}/dsmoe_ceiling_t{T}.json")
    ctx, ds = gb(f"{out}/dsmoe_t{T}.json")
    sg = ceil[f"Ceiling_Sgemm/2048/{T}"]["GFLOP/s"] / 1e9
    bw = {k: v["GB/s"] / 1e9 for k, v in ceil.items() if k.startswith("Ceiling_ReadBandwidth")}
    tu, iu = tp(f"{out}/torch_t{T}.json")
    tm = tp(f"{out}/torch_matched_t{T}.json")
    tm, im = tm if tm else ({}, None)
    print(f"\n## {T} thread(s): dsmoe OpenBLAS kernels {ctx['context'].get('openblas_kernels')}, "
          f"SGEMM ceiling ({T}t, n=2048) {sg:.1f} GFLOP/s, read bandwidth "
          + ", ".join(f"{k.split('/')[-1]} {v:.1f} GB/s" for k, v in bw.items()))
    print(f"torch peer: OpenBLAS core {iu['openblas']['corename']} (unset)"
          + (f", {im['openblas']['corename']} (matched)" if im else ""))
    hdr = f"| {'case':<52} | dsmoe GFLOP/s | dsmoe tok/s | dsmoe/ceiling | cold step s | torch GFLOP/s (unset) | ratio | torch GFLOP/s (matched) | ratio |"
    print(hdr); print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for name, b in ds.items():
        g = b["GFLOP/s"] / 1e9
        row = f"| {name:<52} | {g:13.1f} | {b['tokens/s']:11.0f} | {100 * g / sg:12.1f}% | {b.get('cold_s', float('nan')):11.2f} |"
        for t in (tu, tm):
            if name in t:
                row += f" {t[name]['GFLOP/s']:{21 if t is tu else 23}.2f} | {g / t[name]['GFLOP/s']:4.1f}x |"
            else:
                row += f" {'-':>{21 if t is tu else 23}} | {'-':>5} |"
        print(row)
PY
echo "raw results: $OUT_DIR"
