#!/usr/bin/env bash
# The hostile-input half of CI (scripts/test.sh runs it after the normal suite when CI=true or
# DSMOE_SANITIZED=1): every CTest test again, built with ASan + UBSan (build-asan/, clang,
# -DDSMOE_SANITIZE=ON, UB fatal, leaks reported), then every fuzz target for FUZZ_SECONDS (default
# 20) on its committed corpus (scripts/fuzz.sh, build-fuzz/). Prints the time of each phase.
# The oracle's self-check (oracle_self_check.*) is left out: it is Python alone, runs no instrumented
# code, and the normal suite has just run it.
# Usage: scripts/test_sanitized.sh [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
if [ ! -f build-asan/CMakeCache.txt ] || ! grep -q '^DSMOE_FUZZ:BOOL=ON' build-asan/CMakeCache.txt; then
  # (also a build-asan/ configured before it held the fuzz targets)
  cmake -S . -B build-asan -DDSMOE_SANITIZE=ON -DDSMOE_FUZZ=ON -DCMAKE_CXX_COMPILER="${CXX:-clang++}" \
    -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build build-asan -j"$(nproc)"
t_build=$((SECONDS - t0))

# As scripts/fuzz.sh: a leak is a finding, each suppression in fuzz/lsan.supp says why it is not one.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/fuzz/lsan.supp:print_suppressions=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
unset OPENBLAS_CORETYPE
t1=$SECONDS
(cd build-asan && ctest --output-on-failure -j2 -E '^oracle_self_check[.]' "$@")
t_suite=$((SECONDS - t1))

t2=$SECONDS
FUZZ_BUILD=build-asan scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
t_fuzz=$((SECONDS - t2))
echo "[sanitized] build ${t_build}s, sanitized suite ${t_suite}s, fuzz targets ${t_fuzz}s"
