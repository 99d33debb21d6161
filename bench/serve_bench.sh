#!/usr/bin/env bash
# End-to-end server benchmark on the 16B-shaped benchmark model (bench/make_bench_model.cpp: q8,
# deepseek-moe-16b expert shapes, 4 layers, byte-level vocab), with the OpenAI Node SDK as the load
# generator (bench/serve_bench.mjs):
#   1. single stream: `dsmoe generate` (one prompt, greedy, MAX_TOKENS tokens), decode tokens/s
#      from --verbose; and generate's own batch of 16 prompts (the engine without the server);
#   2. `dsmoe serve --parallel 32`: aggregate generated tokens/s, time to first token and
#      per-request latency (p50 / p99) at 1, 4, 16 and 32 concurrent clients;
#   3. chunked prefill: STALL_STREAMS streams decode while a LONG-token prompt arrives, with
#      --prefill-chunk 64 and with chunking off (--prefill-chunk LONG): the running streams' worst
#      inter-token gap while it is prefilled.
#   bench/serve_bench.sh                    MODEL=/tmp/dsmoe_bench_model (made when missing)
#   MAX_TOKENS=32 PER_CLIENT=2 LEVELS="1 4 16 32" LONG=1024 bench/serve_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"  # a shared machine: see bench/RESULTS.md
BUILD="${BUILD:-build}"
MODEL="${MODEL:-/tmp/dsmoe_bench_model}"
MAX_TOKENS="${MAX_TOKENS:-16}"
PER_CLIENT="${PER_CLIENT:-1}"
LEVELS="${LEVELS:-1 4 16 32}"
LONG="${LONG:-512}"
STALL_STREAMS="${STALL_STREAMS:-4}"
[ -d "$MODEL" ] || "$BUILD/make_bench_model" "$MODEL"
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}, OMP_WAIT_POLICY=$OMP_WAIT_POLICY, commit $(git rev-parse --short HEAD)"

# The single-stream reference, and the engine's own batched decode (generate with N prompts in one
# batch: no server, no HTTP), the most the server could reach at N clients.
for n in 1 16; do
  prompts=()
  for i in $(seq 0 $((n - 1))); do prompts+=(--prompt "Hi $i"); done
  "$BUILD/dsmoe" generate --model "$MODEL" "${prompts[@]}" --temperature 0 --max-new-tokens "$MAX_TOKENS" \
    --verbose >/dev/null 2>/tmp/dsmoe_serve_bench_generate.err
  echo "dsmoe generate, batch $n, load $(cut -d' ' -f1 /proc/loadavg): $(grep 'decode' /tmp/dsmoe_serve_bench_generate.err | tail -1)"
done

SERVER_PID=""
start_server() {  # args: extra serve options; sets URL
  "$BUILD/dsmoe" serve --model "$MODEL" --port 0 "$@" 2>/tmp/dsmoe_serve_bench.err &
  SERVER_PID=$!
  for _ in $(seq 600); do
    URL=$(grep -o 'http://127.0.0.1:[0-9]*' /tmp/dsmoe_serve_bench.err || true)
    [ -n "$URL" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat /tmp/dsmoe_serve_bench.err; exit 1; }
    sleep 0.1
  done
  echo "the server did not start"; exit 1
}
stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; }
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true' EXIT

start_server --parallel 32 --ctx 256
for c in $LEVELS; do
  echo "load $(cut -d' ' -f1 /proc/loadavg): $(node bench/serve_bench.mjs throughput "$URL" "$c" "$PER_CLIENT" "$MAX_TOKENS")"
done
stop_server

for chunk in 64 "$LONG"; do
  start_server --parallel $((STALL_STREAMS + 1)) --ctx $((LONG + 64)) --prefill-chunk "$chunk"
  echo "prefill chunk $chunk, load $(cut -d' ' -f1 /proc/loadavg): $(node bench/serve_bench.mjs stall "$URL" "$STALL_STREAMS" 48 "$LONG")"
  stop_server
done
