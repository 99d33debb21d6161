#!/usr/bin/env bash
# Sets up, builds and runs every test (CTest). Usage: scripts/test.sh [ctest args...]
# With DSMOE_SANITIZED=1 it then runs scripts/test_sanitized.sh: the suite again under ASan + UBSan
# and every fuzz target for a short time. (Not yet on for CI=true: the whole sanitized suite has not
# been timed; see fuzz/RESULTS.md.)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
unset OPENBLAS_CORETYPE   # see DEVELOPERS notes: it halves SGEMM speed on Zen 5
(cd build && ctest --output-on-failure -j2 "$@")
if [ "${DSMOE_SANITIZED:-0}" = 1 ]; then
  scripts/test_sanitized.sh
fi
