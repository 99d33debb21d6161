#!/usr/bin/env bash
# Regenerates the seed corpora fuzz/corpus/<target>/ with dsmoe's own writers (fuzz/make_corpus.cpp).
# Needs the fuzz build folder (scripts/fuzz.sh configures it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f build-fuzz/CMakeCache.txt ] ||
  cmake -S . -B build-fuzz -DDSMOE_FUZZ=ON -DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target make_corpus
rm -rf fuzz/corpus
ASAN_OPTIONS=detect_leaks=0 OMP_NUM_THREADS=1 build-fuzz/fuzz/make_corpus fuzz/corpus
