#include "train/corpus.h"

#include <algorithm>
#include <cctype>
#include <fmt/format.h>
#include <filesystem>
#include <fstream>
#include <limits>
#include <unordered_map>
#include <xxhash.h>

#include "core/error.h"
#include "core/path_exists.h"
#include "io/safetensors.h"
#include "tokenizer/unicode.h"
#include "train/data.h"

namespace dsmoe {

namespace fs = std::filesystem;

int32_t LabelledCorpus::domain_index(const std::string& name, const std::string& where) {
  auto it = std::find(domains.begin(), domains.end(), name);
  if (it != domains.end()) return (int32_t)(it - domains.begin());
  if (name.empty() || name.size() > kMaxDomainNameBytes ||
      std::any_of(name.begin(), name.end(), [](char c) { return (unsigned char)c < 0x20 || c == 0x7f; }))
    fail("{}: domain '{}' must be 1 to {} bytes without control characters", where, name, kMaxDomainNameBytes);
  if ((int64_t)domains.size() >= kMaxDomains) fail("{}: more than {} domains", where, kMaxDomains);
  domains.push_back(name);
  return (int32_t)domains.size() - 1;
}

LabelledCorpus read_manifest(const std::string& manifest_path) {
  std::ifstream in(manifest_path, std::ios::binary);
  if (!in) fail("{}: cannot read the manifest", manifest_path);
  const fs::path base = fs::path(manifest_path).parent_path();
  LabelledCorpus c;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos || line[0] == '#') continue;
    const std::string where = fmt::format("{} line {}", manifest_path, lineno);
    const size_t tab = line.find('\t');
    if (tab == std::string::npos) fail("{}: expected \"domain<TAB>path\", got '{}'", where, line);
    const std::string domain = line.substr(0, tab), path = line.substr(tab + 1);
    if (path.empty()) fail("{}: empty path", where);
    const fs::path p = fs::path(path).is_absolute() ? fs::path(path) : base / path;
    if (!regular_file_exists(p.string(), where)) fail("{}: {} is not a readable file", where, p.string());
    Document d;
    d.domain = c.domain_index(domain, where);
    d.text = read_text_file(p.string());
    d.source = p.string();
    if (const size_t bad = tok::utf8_invalid_at(d.text); bad != std::string::npos)
      fail("{}: {} is not UTF-8 text (invalid byte at offset {})", where, p.string(), bad);
    c.docs.push_back(std::move(d));
  }
  if (c.docs.empty()) fail("{}: the manifest lists no documents", manifest_path);
  return c;
}

LabelledCorpus read_mixed_corpus(const std::string& brown_dir, const std::string& manifest_path) {
  if (!fs::exists(manifest_path))
    fail("{}: the mixed corpus' manifest is missing (scripts/setup.sh writes it from the Debian packages with "
         "scripts/mixed_corpus.py)", manifest_path);
  LabelledCorpus c;
  const int32_t prose = c.domain_index("prose", brown_dir);
  for (std::string& t : read_brown_corpus(brown_dir)) c.docs.push_back({std::move(t), prose, brown_dir});
  LabelledCorpus rest = read_manifest(manifest_path);
  for (Document& d : rest.docs) {
    d.domain = c.domain_index(rest.domains[d.domain], manifest_path);
    c.docs.push_back(std::move(d));
  }
  return c;
}

// --- deduplication ---

namespace {

// Words of a text (maximal runs of non-whitespace).
std::vector<std::string_view> words_of(const std::string& t) {
  std::vector<std::string_view> w;
  size_t i = 0;
  while (i < t.size()) {
    while (i < t.size() && std::isspace((unsigned char)t[i])) ++i;
    size_t j = i;
    while (j < t.size() && !std::isspace((unsigned char)t[j])) ++j;
    if (j > i) w.emplace_back(t.data() + i, j - i);
    i = j;
  }
  return w;
}

uint64_t mix(uint64_t x) {  // splitmix64's finaliser: a bijection, so distinct seeds give distinct orders
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

DedupReport deduplicate(LabelledCorpus& c, const DedupOptions& o) {
  const size_t n_hash = (size_t)o.bands * (size_t)o.rows;
  DSMOE_ASSERT(o.shingle_words >= 1 && n_hash >= 1 && o.near_threshold > 0 && o.near_threshold <= 1, "dedup options");
  DedupReport r;
  r.exact_by_domain.assign(c.domains.size(), 0);
  r.near_by_domain.assign(c.domains.size(), 0);
  std::unordered_map<uint64_t, size_t> exact_seen;                 // normalised-text hash -> kept index
  std::vector<std::unordered_map<uint64_t, std::vector<size_t>>> band_buckets(o.bands);  // -> kept signatures
  std::vector<std::vector<uint64_t>> signatures;                   // of kept documents
  std::vector<Document> kept;
  std::vector<uint64_t> sig(n_hash);
  for (Document& d : c.docs) {
    const std::vector<std::string_view> w = words_of(d.text);
    std::string normalised;
    for (auto v : w) normalised.append(v).push_back(' ');
    const uint64_t h = XXH3_64bits(normalised.data(), normalised.size());
    if (exact_seen.count(h)) {  // equal 64-bit hashes of different texts: ~n^2 / 2^65, negligible
      r.exact++;
      r.exact_by_domain[d.domain]++;
      continue;
    }
    // MinHash: the minimum over shingles of n_hash independent hashes (one XXH3 per shingle, then
    // mixed with each seed).
    std::fill(sig.begin(), sig.end(), std::numeric_limits<uint64_t>::max());
    const size_t k = (size_t)o.shingle_words;
    const size_t n_shingles = w.size() >= k ? w.size() - k + 1 : (w.empty() ? 0 : 1);
    for (size_t s = 0; s < n_shingles; ++s) {
      const char* b = w[s].data();
      const std::string_view last = w[std::min(s + k, w.size()) - 1];
      const uint64_t sh = XXH3_64bits(b, (size_t)(last.data() + last.size() - b));
      for (size_t i = 0; i < n_hash; ++i) sig[i] = std::min(sig[i], mix(sh ^ (0x9e3779b97f4a7c15ULL * (i + 1))));
    }
    bool near = false;
    std::vector<uint64_t> band_keys(o.bands);
    for (int b = 0; b < o.bands; ++b)
      band_keys[b] = XXH3_64bits(sig.data() + (size_t)b * o.rows, (size_t)o.rows * sizeof(uint64_t));
    for (int b = 0; b < o.bands && !near; ++b) {
      auto it = band_buckets[b].find(band_keys[b]);
      if (it == band_buckets[b].end()) continue;
      const size_t checks = std::min(it->second.size(), o.max_bucket_checks);
      for (size_t q = 0; q < checks && !near; ++q) {
        const std::vector<uint64_t>& other = signatures[it->second[q]];
        size_t agree = 0;
        for (size_t i = 0; i < n_hash; ++i) agree += other[i] == sig[i];
        near = (double)agree / (double)n_hash >= o.near_threshold;
      }
    }
    if (near) {
      r.near++;
      r.near_by_domain[d.domain]++;
      continue;
    }
    exact_seen.emplace(h, kept.size());
    for (int b = 0; b < o.bands; ++b) band_buckets[b][band_keys[b]].push_back(signatures.size());
    signatures.push_back(sig);
    kept.push_back(std::move(d));
  }
  c.docs = std::move(kept);
  return r;
}

static uint64_t text_hash(const std::string& text) { return XXH3_64bits(text.data(), text.size()); }

bool held_out_by_hash(const std::string& text, int64_t every) {
  DSMOE_ASSERT(every >= 1, "held-out period must be >= 1");
  return text_hash(text) % (uint64_t)every == 0;
}

std::vector<bool> choose_held_out(const LabelledCorpus& c, int64_t every) {
  std::vector<bool> held(c.docs.size());
  std::vector<size_t> count(c.domains.size(), 0), held_count(c.domains.size(), 0);
  std::vector<size_t> smallest(c.domains.size(), SIZE_MAX);
  std::vector<uint64_t> smallest_hash(c.domains.size(), 0);
  for (size_t i = 0; i < c.docs.size(); ++i) {
    const int32_t d = c.docs[i].domain;
    const uint64_t h = text_hash(c.docs[i].text);
    held[i] = h % (uint64_t)every == 0;
    count[d]++;
    held_count[d] += held[i];
    if (smallest[d] == SIZE_MAX || h < smallest_hash[d]) {
      smallest[d] = i;
      smallest_hash[d] = h;
    }
  }
  for (size_t d = 0; d < c.domains.size(); ++d)
    if (count[d] >= 2 && held_count[d] == 0) held[smallest[d]] = true;
  return held;
}

}  // namespace dsmoe
