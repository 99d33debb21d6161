#!/usr/bin/env bash
# All-to-all bytes per MoE layer and step, measured by the dispatcher's counters (metrics.jsonl:
# a2a_bytes_sent / a2a_bytes_received / a2a_slots_leaving, per rank, forward + backward, all MoE
# layers and micro-batches of the step), against the formula
#     2 passes x 2 x k x hidden x 4 bytes x (fraction of (token, expert) slots leaving their rank) x tokens
# (a row out and the result back in the forward; the output's gradient out and the input's back in
# the backward), with plain top-k and with DeepSeek-V2 device-limited routing (one group per rank,
# topk_group 1). A short training run of the tests' tiny model shape on byte-level Brown text.
#   bench/a2a_bytes.sh            (P = 2 and 4, one thread per rank)
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE
BIN="${DSMOE:-build/dsmoe}"
WORK="$(mktemp -d /tmp/dsmoe_a2a.XXXXXX)"
MPI=(mpirun --oversubscribe -x OMP_NUM_THREADS=1)
[ "$(id -u)" = 0 ] && MPI+=(--allow-run-as-root)
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $BIN"
"$BIN" prepare --corpus brown --tokenizer bytes --out "$WORK/data" >/dev/null 2>&1
for variant in greedy group_limited; do
  for P in 2 4; do
    python3 - "$WORK/cfg_${variant}_$P.json" "$variant" "$P" <<'PY'
import json, sys
path, variant, P = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = {"model_type": "deepseek", "vocab_size": 256, "hidden_size": 128, "intermediate_size": 256,
     "moe_intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4, "n_shared_experts": 1,
     "n_routed_experts": 8, "num_experts_per_tok": 2, "first_k_dense_replace": 1, "max_position_embeddings": 128,
     "training": {"steps": 6, "warmup_steps": 1, "batch_size": 8, "seq_len": 64, "grad_accum": 1,
                  "log_interval": 1, "eval_interval": 0, "eval_batches": 1, "init_std": 0.2}}
if variant == "group_limited":
    c.update({"topk_method": "group_limited_greedy", "n_group": P, "topk_group": 1})
json.dump(c, open(path, "w"))
PY
    "${MPI[@]}" -np "$P" "$BIN" train --config "$WORK/cfg_${variant}_$P.json" --data "$WORK/data" \
      --out "$WORK/run_${variant}_$P" --ep "$P" --quiet --sample-tokens 0 >/dev/null
    python3 - "$WORK/run_${variant}_$P/metrics.jsonl" "$variant" "$P" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
H, k, layers, tokens = 128, 2, 2, 8 * 64
sent = sum(sum(r["a2a_bytes_sent"]) for r in rows) / len(rows)
recv = sum(sum(r["a2a_bytes_received"]) for r in rows) / len(rows)
leaving = sum(sum(r["a2a_slots_leaving"]) for r in rows) / len(rows)
frac = leaving / (tokens * k * layers)
formula = 2 * 2 * k * H * 4 * frac * tokens  # per MoE layer, both passes, all ranks
print(f"| {sys.argv[2]} | {sys.argv[3]} | {frac:.3f} | {sent / layers / 1e3:.1f} | {recv / layers / 1e3:.1f} | "
      f"{formula / 1e3:.1f} | {sent / layers / int(sys.argv[3]) / 1e3:.1f} |")
PY
  done
done
rm -rf "$WORK"
