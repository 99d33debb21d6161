#!/usr/bin/env bash
# Sets up (idempotent), prepares the Brown corpus with a 2K BPE (as quickstart does) and runs the
# small-scale reproduction of the DeepSeekMoE paper (configs/paper/suite.json) into reports/paper.
# A re-run reuses finished runs. Usage: scripts/paper.sh [--quick] [extra `dsmoe experiment` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
unset OPENBLAS_CORETYPE   # the image's Haswell override halves SGEMM speed on this CPU
[ -f data/brown-bpe2k/train.safetensors ] || ./build/dsmoe prepare --corpus brown --tokenizer bpe --vocab-size 2048 --out data/brown-bpe2k
out=reports/paper
for a in "$@"; do [ "$a" = "--quick" ] && out=reports/paper-quick; done
./build/dsmoe experiment --suite configs/paper/suite.json --data data/brown-bpe2k --out "$out" "$@"
