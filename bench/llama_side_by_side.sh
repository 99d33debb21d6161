#!/usr/bin/env bash
# dsmoe and llama.cpp side by side on the same GGUF files (issue 15):
#   1. the benchmark model (bench/make_bench_model.cpp: deepseek-moe-16b's layer shapes, 4 layers,
#      random weights, byte-level vocabulary) exported with `dsmoe export --format gguf --type T`
#      for T in f32 bf16 q8_0 q4_0;
#   2. for each file and 1 and 2 threads, REPS repetitions, the engines alternating (which one goes
#      first alternates too), each a fresh process on the same PROMPT token ids: the prefill of the
#      PROMPT-token prompt (tokens/s) and NEW - 1 greedy decode steps after it (batch 1, tokens/s).
#      llama.cpp: npm node-llama-cpp's CPU build (bench/llama_speed.mjs: flash attention off, F32
#      KV cache, exactly T threads). With BATCHES="1 8 16" each row is also run with B different
#      prompts at once (one prefill of B x PROMPT tokens, then decode steps of B tokens). dsmoe: `dsmoe generate --verbose` with --dtype f32 / bf16 / q8 /
#      q4 for the four files (a Q8_0 / Q4_0 file is requantized to dsmoe's own blocks of the same
#      size: its default --dtype auto would dequantize it to f32) at --compute f32 and --compute auto
#      (bf16 where it applies; the f32 file runs f32 only). `uptime`'s load average is recorded
#      before every run;
#   3. (run first) the perplexity cost of each storage and compute mode: `dsmoe score` of a trained model
#      (PPL_MODEL, exported to the same four GGUF types) on held-out windows (PPL_IDS);
#   4. a Markdown table (medians, [min-max] over the repetitions, dsmoe / llama.cpp per row) on
#      stdout and in $WORK/side_by_side.md; the raw runs in $WORK/runs.tsv.
#
#   bench/llama_side_by_side.sh                 # the full run (1.85 B parameters; under load 15-20 one repetition
#                                               # took 53 min after the exports: bench/RESULTS.md session 5)
#   bench/llama_side_by_side.sh --quick         # the same pipeline in under a minute on a quiet machine (23 s of
#                                               # CPU; 3 min of wall time at load 15): a 2-layer model with
#                                               # 8 routed experts, q8_0 only, 1 thread, 1 repetition, short prompt
#   REPS=5 THREADS="1 2" TYPES="bf16 q8_0" WORK=/tmp/sbs bench/llama_side_by_side.sh
#   BATCHES="1 16" TYPES="q8_0" bench/llama_side_by_side.sh   # batched decode (B sequences) as well
#   PPL_MODEL=runs/default PPL_IDS=val_windows.jsonl ...   # the trained model for step 3 (skipped without PPL_IDS)
set -euo pipefail
cd "$(dirname "$0")/.."
unset OPENBLAS_CORETYPE  # some images pin it to Haswell, which halves SGEMM on AVX-512 (README)
BUILD="${BUILD:-build}"
QUICK=0 TABLE_ONLY=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    --table-only) TABLE_ONLY=1 ;;  # redo only the table from $WORK's runs.tsv and ppl.tsv (e.g. of a run cut short)
    *) echo "usage: $0 [--quick] [--table-only]" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  WORK="${WORK:-/tmp/dsmoe_side_by_side_quick}"
  TYPES="${TYPES:-q8_0}" THREADS="${THREADS:-1}" REPS="${REPS:-1}" PROMPT="${PROMPT:-32}" NEW="${NEW:-9}" BATCHES="${BATCHES:-1 2}"
  MODEL_ARGS=(--layers 2 --routed-experts 8)
  PPL_WINDOWS="${PPL_WINDOWS:-2}"
else
  WORK="${WORK:-/tmp/dsmoe_side_by_side}"
  TYPES="${TYPES:-f32 bf16 q8_0 q4_0}" THREADS="${THREADS:-1 2}" REPS="${REPS:-3}" PROMPT="${PROMPT:-256}" NEW="${NEW:-65}" BATCHES="${BATCHES:-1}"
  MODEL_ARGS=()
  PPL_WINDOWS="${PPL_WINDOWS:-200}"
fi
PPL_MODEL="${PPL_MODEL:-runs/default}"
PPL_IDS="${PPL_IDS:-}"
DSMOE="$BUILD/dsmoe"
RUNS="$WORK/runs.tsv" PPL="$WORK/ppl.tsv"
mkdir -p "$WORK/out"
load() { cut -d' ' -f1-3 /proc/loadavg; }
dsmoe_dtype() { case "$1" in f32) echo f32 ;; bf16) echo bf16 ;; q8_0) echo q8 ;; q4_0) echo q4 ;; esac; }

if [ "$TABLE_ONLY" = 0 ]; then
echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), load average $(load), $(nproc) cores, commit $(git describe --always --dirty), OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset}" | tee "$WORK/header.txt"

echo "PROMPT=$PROMPT NEW=$NEW" > "$WORK/params.sh"  # what --table-only's table says was run

# 1. the model and its GGUF files (made once per WORK folder)
[ -d "$WORK/model" ] || "$BUILD/make_bench_model" "$WORK/model" "${MODEL_ARGS[@]}"
for t in $TYPES; do
  [ -f "$WORK/model-$t.gguf" ] || "$DSMOE" export --format gguf --type "$t" --model "$WORK/model" --out "$WORK/model-$t.gguf" \
    >/dev/null 2> "$WORK/export-$t.err" || { cat "$WORK/export-$t.err"; exit 1; }
done

# The prompts: PROMPT ids of the byte vocabulary each from a fixed LCG (the same for every run and
# engine); prompt j (of a batch) starts the LCG at 12345 + j, so the sequences of a batch differ
# (identical prompts would route alike and flatter batching).
prompt_ids() {  # j
  awk -v n="$PROMPT" -v j="$1" 'BEGIN { x = 12345 + j; for (i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; printf "%s%d", (i ? "," : ""), int(x / 65536) % 256 } }'
}

# 3. perplexity cost of each storage and compute mode on the trained model
: > "$PPL"
if [ -d "$PPL_MODEL" ] && [ -n "$PPL_IDS" ] && [ -f "$PPL_IDS" ]; then
  head -n "$PPL_WINDOWS" "$PPL_IDS" > "$WORK/ppl_ids.jsonl"
  for t in f32 bf16 q8_0 q4_0; do
    [ -f "$WORK/ppl-$t.gguf" ] || "$DSMOE" export --format gguf --type "$t" --model "$PPL_MODEL" --out "$WORK/ppl-$t.gguf" \
      >/dev/null 2> "$WORK/export-ppl-$t.err" || { cat "$WORK/export-ppl-$t.err"; exit 1; }
    modes="f32 auto"
    [ "$t" = f32 ] && modes="f32"
    for c in $modes; do
      f="$WORK/out/score-$t-$c.json"
      "$DSMOE" score --model "$WORK/ppl-$t.gguf" --dtype "$(dsmoe_dtype "$t")" --compute "$c" \
        --ids-jsonl "$WORK/ppl_ids.jsonl" --summary > "$f" 2>/dev/null
      printf '%s\t%s\t%s\n' "$t" "$c" "$f" >> "$PPL"
    done
  done
else
  echo "no perplexity: set PPL_MODEL (a trained model folder) and PPL_IDS (one JSON id array per line)" >&2
fi

# 2. the runs. One line per run in runs.tsv: engine, mode, type, threads, rep, load average, and the
# file with the run's output (llama_speed.mjs's JSON line, or dsmoe generate --verbose's stderr).
: > "$RUNS"
# The batch's prompts: ;-separated for llama_speed.mjs, repeated --prompt-ids for dsmoe.
batch_ids() {  # B
  local j; for ((j = 0; j < $1; j++)); do printf '%s%s' "$([ $j -gt 0 ] && echo ';')" "$(prompt_ids $j)"; done
}
run_llama() {  # type threads rep batch
  local l f="$WORK/out/llama-$1-$2-$3-b$4.json"
  l=$(load)
  node bench/llama_speed.mjs "$WORK/model-$1.gguf" "$2" "$(batch_ids "$4")" "$NEW" > "$f"
  printf 'llama.cpp\t-\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$l" "$f" "$4" >> "$RUNS"
}
run_dsmoe() {  # type threads rep compute batch
  local l f="$WORK/out/dsmoe-$4-$1-$2-$3-b$5.err" j args=()
  for ((j = 0; j < $5; j++)); do args+=(--prompt-ids "$(prompt_ids $j)"); done
  l=$(load)
  OMP_NUM_THREADS="$2" "$DSMOE" generate --model "$WORK/model-$1.gguf" --dtype "$(dsmoe_dtype "$1")" --compute "$4" \
    "${args[@]}" --temperature 0 --ignore-eos --max-new-tokens "$NEW" --json --verbose 2> "$f" >/dev/null
  printf 'dsmoe\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$4" "$1" "$2" "$3" "$l" "$f" "$5" >> "$RUNS"
}
for rep in $(seq 1 "$REPS"); do
  for t in $TYPES; do
    modes="f32 auto"
    [ "$t" = f32 ] && modes="f32"
    for th in $THREADS; do
      for b in $BATCHES; do
        if [ $((rep % 2)) = 1 ]; then
          run_llama "$t" "$th" "$rep" "$b"
          for c in $modes; do run_dsmoe "$t" "$th" "$rep" "$c" "$b"; done
        else
          for c in $modes; do run_dsmoe "$t" "$th" "$rep" "$c" "$b"; done
          run_llama "$t" "$th" "$rep" "$b"
        fi
        echo "rep $rep $t $th threads batch $b done, load $(load)" >&2
      done
    done
  done
done

fi  # TABLE_ONLY
. "$WORK/params.sh"

# 4. the table
python3 - "$RUNS" "$PPL" "$WORK/header.txt" "$PROMPT" "$NEW" <<'PY' | tee "$WORK/side_by_side.md"
import json, re, statistics, sys
runs_path, ppl_path, header_path, prompt, new = sys.argv[1:6]
runs, loads = {}, []
for line in open(runs_path):
    if not line.strip():
        continue
    fields = line.rstrip("\n").split("\t")
    engine, mode, t, th, rep, load, path = fields[:7]
    b = fields[7] if len(fields) > 7 else "1"  # runs.tsv of before the batch column: batch 1
    text = open(path).read()
    if engine == "llama.cpp":
        j = json.loads(text.strip().splitlines()[-1])
        pre, dec = j["prefill_tokens"] / j["prefill_s"], j["decode_tokens"] / j["decode_s"]
    else:
        m = re.search(r"prefill \d+ tokens in [0-9.]+ s \(([0-9.]+) tok/s\).*decode \d+ tokens in \d+ steps, [0-9.]+ s "
                      r"\(([0-9.]+) tok/s\)", text)
        if not m:
            sys.exit(f"no speed line in {path}:\n{text}")
        pre, dec = float(m.group(1)), float(m.group(2))
    runs.setdefault((t, th, b, engine, mode), []).append((pre, dec))
    loads.append(float(load.split()[0]))
reps = max(len(v) for v in runs.values())  # a cell with fewer runs (a run cut short) says how many

def cell(v):
    return f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]" + ("" if len(v) == reps else f" (n={len(v)})")

print(open(header_path).read().strip() + f"; load average (1 min) before the runs: {min(loads):.1f}-{max(loads):.1f}")
print()
print(f"Prefill: B prompts of {prompt} tokens, tokens/s; decode: {int(new) - 1} greedy tokens after each, B sequences"
      f" a step, tokens/s of all B. Median [min-max] of {reps} repetitions; ratio = dsmoe's faster compute mode /"
      f" llama.cpp (medians).")
print()
print("| file | threads | B | prefill llama.cpp | prefill dsmoe f32 | prefill dsmoe auto | prefill ratio "
      "| decode llama.cpp | decode dsmoe f32 | decode dsmoe auto | decode ratio |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
order = ["f32", "bf16", "q8_0", "q4_0"]
for t, th, b in sorted({k[:3] for k in runs}, key=lambda k: (order.index(k[0]), int(k[1]), int(k[2]))):
    ll, f, a = (runs.get((t, th, b, e, m), []) for e, m in (("llama.cpp", "-"), ("dsmoe", "f32"), ("dsmoe", "auto")))
    out = [t, th, b]
    for i in (0, 1):
        lv, fv, av = [x[i] for x in ll], [x[i] for x in f], [x[i] for x in a]
        best = max(statistics.median(v) for v in (fv, av) if v) if (fv or av) else 0
        out += [cell(lv) if lv else "-", cell(fv) if fv else "-", cell(av) if av else "(= f32)",
                f"**{best / statistics.median(lv):.2f}x**" if lv and best else "-"]
    print("| " + " | ".join(out) + " |")

ppl = [l.rstrip("\n").split("\t") for l in open(ppl_path) if l.strip()]
if ppl:
    res = [(t, c, json.load(open(path))) for t, c, path in ppl]
    base = next((j["perplexity"] for t, c, j in res if t == "f32" and c == "f32"), None)
    print()
    print(f"Perplexity cost (dsmoe score, {res[0][2]['tokens_scored']} predictions): each file and --compute against f32 / f32.")
    print()
    print("| file | --dtype | --compute | ran as | mean NLL | perplexity | delta perplexity |")
    print("|---|---|---|---|---|---|---|")
    for t, c, j in res:
        d = f"{(j['perplexity'] / base - 1) * 100:+.4f}%" if base else "-"
        print(f"| {t} | {j['dtype']} | {c} | {j['compute']} | {j['mean_nll']:.6f} | {j['perplexity']:.3f} | {d} |")
PY
