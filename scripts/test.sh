#!/usr/bin/env bash
# Sets up, builds and runs every test (CTest). Usage: scripts/test.sh [ctest args...]
# Then, in CI (CI=true) or with DSMOE_SANITIZED=1, scripts/test_sanitized.sh: the suite again under
# ASan + UBSan and every fuzz target for a short time on its seed corpus (its cost on 2 cores is in
# fuzz/RESULTS.md). DSMOE_SANITIZED=0 skips that half in CI too.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
unset OPENBLAS_CORETYPE   # see DEVELOPERS notes: it halves SGEMM speed on Zen 5
(cd build && ctest --output-on-failure -j2 "$@")
if [ "${DSMOE_SANITIZED:-}" = 1 ] || { [ "${CI:-}" = true ] && [ "${DSMOE_SANITIZED:-}" != 0 ]; }; then
  scripts/test_sanitized.sh
fi
