#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz/, or FUZZ_BUILD, clang, ASan + UBSan) and runs each for SECONDS on a
# scratch copy of its seed corpus (fuzz/corpus/<target>/; the committed seeds stay small). Fails on
# any crash, sanitizer report, leak, out-of-memory or timeout and prints the reproducer path.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (default: 60 s, every target)
# Environment: FUZZ_WORK (scratch folder, default a new mktemp -d, kept for the reproducers),
# FUZZ_ARGS (extra libFuzzer flags), CXX (default clang++), FUZZ_BUILD (the build folder, default
# build-fuzz/; scripts/test_sanitized.sh passes its build-asan/, configured with DSMOE_FUZZ too).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
all=(fuzz_safetensors fuzz_config fuzz_hf_folder fuzz_quant_config fuzz_tokenizer_json
     fuzz_tokenizer_encode fuzz_tokenizer_decode fuzz_data_split fuzz_suite fuzz_chat_template fuzz_gguf
     fuzz_ids_jsonl fuzz_api_request)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")

# Largest input per target: room for its seeds to grow a little, small enough that each execution
# stays fast (a model folder holds a whole tiny checkpoint).
max_len() {
  case "$1" in
    fuzz_hf_folder|fuzz_gguf) echo 32768 ;;
    fuzz_safetensors|fuzz_data_split|fuzz_tokenizer_json) echo 16384 ;;
    *) echo 4096 ;;
  esac
}

build="${FUZZ_BUILD:-build-fuzz}"
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -DDSMOE_FUZZ=ON -DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}"

work="${FUZZ_WORK:-$(mktemp -d /tmp/dsmoe-fuzz.XXXXXX)}"
mkdir -p "$work"
# Leaks are findings. The suppressions are those of fuzz/lsan.supp (each one justified there).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/fuzz/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# One thread per OpenMP region: the fuzzed code paths are not parallel, and two cores are shared.
export OMP_NUM_THREADS=1

status=0
for t in "${targets[@]}"; do
  corpus="$work/$t/corpus" artifacts="$work/$t/artifacts/"
  mkdir -p "$corpus" "$artifacts"
  # The reproducers of fixed bugs seed the run too: they sit on the paths the bugs were on.
  cp -n fuzz/corpus/"$t"/* fuzz/regressions/"$t"/* "$corpus"/ 2>/dev/null || true
  log="$work/$t/fuzz.log"
  echo "[fuzz] $t: ${secs}s, corpus $corpus, log $log"
  set +e
  # shellcheck disable=SC2086
  "$build"/fuzz/"$t" "$corpus" -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$artifacts" -print_final_stats=1 ${FUZZ_ARGS:-} >"$log" 2>&1
  rc=$?
  set -e
  runs=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
  echo "[fuzz] $t: rc=$rc ${runs:-(no final stats)}"
  if [ $rc -ne 0 ]; then
    status=1
    tail -40 "$log"
    for a in "$artifacts"*; do [ -e "$a" ] && echo "[fuzz] $t: reproducer $a"; done
    echo "[fuzz] $t: rerun with $build/fuzz/$t <reproducer>"
  fi
done
exit $status
