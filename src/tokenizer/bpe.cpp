// The BPE model: a word's characters become vocabulary ids, then merges apply lowest rank first,
// leftmost first among equal ranks (what HF's priority-queue merge loop computes).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <queue>

#include "core/error.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace dsmoe::tok::detail {

void MergeMap::build(const std::vector<std::pair<uint64_t, std::pair<uint32_t, int32_t>>>& entries) {
  size_t cap = 16;
  while (cap < entries.size() * 2 + 1) cap *= 2;
  slots_.assign(cap, Slot{0, kEmpty, -1});
  mask_ = cap - 1;
  for (const auto& [key, val] : entries) {
    size_t i = mix(key) & mask_;
    while (slots_[i].rank != kEmpty && slots_[i].key != key) i = (i + 1) & mask_;
    slots_[i] = Slot{key, val.first, val.second};  // a repeated pair: the later entry wins, as in HF
  }
}

// ---- per-thread word cache ----------------------------------------------------------------------
namespace {
class WordCache {
 public:
  static constexpr size_t kMaxKey = 256;
  const int32_t* find(std::string_view key, uint64_t h, uint32_t& n) const {
    if (slots_.empty()) return nullptr;
    size_t i = h & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.hash == 0) return nullptr;
      if (s.hash == h && s.klen == key.size() && std::memcmp(keys_.data() + s.koff, key.data(), key.size()) == 0) {
        n = s.vlen;
        return vals_.data() + s.voff;
      }
      i = (i + 1) & mask_;
    }
  }
  void insert(std::string_view key, uint64_t h, const int32_t* v, uint32_t n) {
    if (slots_.empty() || count_ * 2 >= slots_.size()) {
      if (slots_.empty()) {
        slots_.assign(1 << 17, Slot{});
        mask_ = slots_.size() - 1;
      } else {  // full: start over (simple, and the hot words come straight back)
        std::fill(slots_.begin(), slots_.end(), Slot{});
        keys_.clear();
        vals_.clear();
        count_ = 0;
      }
    }
    size_t i = h & mask_;
    while (slots_[i].hash != 0) i = (i + 1) & mask_;
    slots_[i] = Slot{h, (uint32_t)keys_.size(), (uint32_t)key.size(), (uint32_t)vals_.size(), n};
    keys_.append(key);
    vals_.insert(vals_.end(), v, v + n);
    ++count_;
  }
  void clear() {
    slots_.clear();
    keys_.clear();
    vals_.clear();
    count_ = 0;
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t koff = 0, klen = 0, voff = 0, vlen = 0;
  };
  std::vector<Slot> slots_;
  size_t mask_ = 0, count_ = 0;
  std::string keys_;
  std::vector<int32_t> vals_;
};

inline uint64_t word_hash(std::string_view s, bool raw) {
  uint64_t h = std::hash<std::string_view>{}(s) * 2 + (raw ? 1 : 0);
  return h ? h : 1;  // 0 marks an empty slot
}

std::atomic<uint64_t> g_serial{1};
}  // namespace

struct BpeScratch {
  uint64_t serial = 0;
  WordCache cache;
  std::vector<int32_t> syms;
  std::string buf;
};

BpeScratch& bpe_scratch(const BpeModel& m) {
  thread_local BpeScratch s;
  if (s.serial != m.serial) {
    s.cache.clear();
    s.serial = m.serial;
  }
  return s;
}

void BpeModel::finish() {
  serial = g_serial.fetch_add(1);
  byte_fast_ = continuing_subword_prefix.empty() && end_of_word_suffix.empty();
  for (int b = 0; b < 256; ++b) {
    auto it = vocab.find(std::string_view(byte_char_utf8((unsigned char)b)));
    byte_ids_[b] = it == vocab.end() ? -1 : it->second;
    if (byte_ids_[b] < 0) byte_fast_ = false;
  }
}

void BpeModel::tokenize_chars(std::string_view w, std::vector<int32_t>& syms) const {
  syms.clear();
  std::string key;
  int32_t unk_id = -1;
  bool have_unk = false;
  auto unk_lookup = [&]() -> int32_t {
    auto it = vocab.find(std::string_view(*unk_token));
    if (it == vocab.end()) fail("BPE model: unk_token {:?} is not in the vocabulary", *unk_token);
    return it->second;
  };
  size_t i = 0;
  while (i < w.size()) {
    size_t start = i;
    size_t n = (size_t)utf8_len((unsigned char)w[i]);
    i = std::min(w.size(), i + n);
    std::string_view ch = w.substr(start, i - start);
    bool first = start == 0, last = i >= w.size();
    std::string_view look = ch;
    if ((!first && !continuing_subword_prefix.empty()) || (last && !end_of_word_suffix.empty())) {
      key.clear();
      if (!first) key += continuing_subword_prefix;
      key += ch;
      if (last) key += end_of_word_suffix;
      look = key;
    }
    auto it = vocab.find(look);
    if (it != vocab.end()) {
      if (have_unk) {
        syms.push_back(unk_id);
        have_unk = false;
      }
      syms.push_back(it->second);
      continue;
    }
    if (byte_fallback) {
      int32_t ids[4];
      bool ok = true;
      for (size_t k = 0; k < ch.size() && ok; ++k) {
        char code[8];
        std::snprintf(code, sizeof code, "<0x%02X>", (unsigned)(unsigned char)ch[k]);
        auto bt = vocab.find(std::string_view(code));
        if (bt == vocab.end()) ok = false;
        else ids[k] = bt->second;
      }
      if (ok) {
        // HF pushes the byte tokens without flushing a pending unk first (it is flushed later).
        for (size_t k = 0; k < ch.size(); ++k) syms.push_back(ids[k]);
        continue;
      }
    }
    if (unk_token) {
      if (have_unk && fuse_unk) continue;  // fused into the pending unk
      if (have_unk) syms.push_back(unk_id);
      unk_id = unk_lookup();
      have_unk = true;
    }
    // no unk token: the character is dropped, as in HF
  }
  if (have_unk) syms.push_back(unk_id);
}

void BpeModel::merge_symbols(std::vector<int32_t>& syms, bool force_heap) const {
  const int n = (int)syms.size();
  if (n < 2) return;
  thread_local std::vector<int32_t> nxt, prv, merged_id;
  thread_local std::vector<uint32_t> rank;
  nxt.resize(n);
  prv.resize(n);
  rank.resize(n);
  merged_id.resize(n);
  for (int i = 0; i < n; ++i) {
    nxt[i] = i + 1 < n ? i + 1 : -1;
    prv[i] = i - 1;
  }
  constexpr uint32_t kNone = 0xFFFFFFFFu;
  auto pair_rank = [&](int i) {
    uint32_t r;
    int32_t m;
    if (nxt[i] >= 0 && merges.find(syms[i], syms[nxt[i]], r, m)) {
      rank[i] = r;
      merged_id[i] = m;
    } else {
      rank[i] = kNone;
    }
  };
  for (int i = 0; i < n; ++i) pair_rank(i);

  auto do_merge = [&](int i) {
    int j = nxt[i];
    syms[i] = merged_id[i];
    nxt[i] = nxt[j];
    if (nxt[j] >= 0) prv[nxt[j]] = i;
    syms[j] = -1;
  };

  if (n <= 64 && !force_heap) {
    while (true) {
      int best = -1;
      uint32_t best_rank = kNone;
      for (int i = 0; i >= 0; i = nxt[i])
        if (rank[i] < best_rank) best_rank = rank[i], best = i;
      if (best < 0) break;
      do_merge(best);
      pair_rank(best);
      if (prv[best] >= 0) pair_rank(prv[best]);
    }
  } else {
    struct Entry {
      uint32_t rank;
      int32_t pos;
      int32_t merged;
      bool operator>(const Entry& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> q;
    for (int i = 0; i < n; ++i)
      if (rank[i] != kNone) q.push({rank[i], i, merged_id[i]});
    while (!q.empty()) {
      Entry top = q.top();
      q.pop();
      int i = top.pos;
      if (syms[i] < 0 || nxt[i] < 0) continue;
      pair_rank(i);
      if (rank[i] == kNone || merged_id[i] != top.merged) continue;  // stale entry
      do_merge(i);
      if (prv[i] >= 0) {
        pair_rank(prv[i]);
        if (rank[prv[i]] != kNone) q.push({rank[prv[i]], prv[i], merged_id[prv[i]]});
      }
      pair_rank(i);
      if (rank[i] != kNone) q.push({rank[i], i, merged_id[i]});
    }
  }
  int k = 0;
  for (int i = 0; i < n; ++i)
    if (syms[i] >= 0) syms[k++] = syms[i];
  syms.resize(k);
}

void BpeModel::tokenize(const Piece& p, std::vector<int32_t>& out, BpeScratch& sc) const {
  std::string_view s = p.s;
  const bool cacheable = s.size() <= WordCache::kMaxKey;
  uint64_t h = 0;
  if (cacheable) {
    h = word_hash(s, p.raw_bytes);
    uint32_t n = 0;
    if (const int32_t* v = sc.cache.find(s, h, n)) {
      out.insert(out.end(), v, v + n);
      return;
    }
  }
  std::vector<int32_t>& syms = sc.syms;
  syms.clear();
  std::string_view word = s;
  if (p.raw_bytes && (ignore_merges || !byte_fast_)) {
    sc.buf.clear();
    byte_level_map(s, sc.buf);
    word = sc.buf;
  }
  bool done = false;
  if (ignore_merges) {
    auto it = vocab.find(word);
    if (it != vocab.end()) {
      syms.push_back(it->second);
      done = true;
    }
  }
  if (!done) {
    if (p.raw_bytes && byte_fast_) {
      syms.resize(s.size());
      for (size_t i = 0; i < s.size(); ++i) syms[i] = byte_ids_[(unsigned char)s[i]];
    } else {
      tokenize_chars(word, syms);
    }
    merge_symbols(syms);
  }
  if (cacheable) sc.cache.insert(s, h, syms.data(), (uint32_t)syms.size());
  out.insert(out.end(), syms.begin(), syms.end());
}

}  // namespace dsmoe::tok::detail
