#!/usr/bin/env bash
# Sets up, builds and runs every test (CTest). Usage: scripts/test.sh [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
unset OPENBLAS_CORETYPE   # see DEVELOPERS notes: it halves SGEMM speed on Zen 5
cd build && ctest --output-on-failure -j2 "$@"
