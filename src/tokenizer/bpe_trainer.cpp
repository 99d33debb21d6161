// Byte-level BPE trainer. Words are counted once (pre-tokenised exactly as the written tokenizer.json
// pre-tokenises), then merges are learnt on the distinct words with incremental pair counts: a
// max-heap with lazy invalidation picks the most frequent pair, and only the words that contain it
// are rewritten. Ties go to the smallest (left id, right id), so the result does not depend on the
// number of threads.
#include "tokenizer/bpe_trainer.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <queue>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace dsmoe::tok {

using json = nlohmann::json;
using namespace detail;

namespace {

using WordCounts = std::unordered_map<std::string, int64_t, SvHash, std::equal_to<>>;

// Counts the pre-tokenised words of texts[begin, end): the special tokens are cut out first, then the
// Split regex, as Tokenizer::encode does with the written file.
void count_words(const std::vector<std::string>& texts, size_t begin, size_t end, const Regex& re,
                 const AddedVocab& added, WordCounts& counts, int64_t& nwords) {
  std::vector<Piece> pieces;
  std::vector<std::pair<size_t, size_t>> matches;
  std::vector<std::string_view> views;
  for (size_t t = begin; t < end; ++t) {
    const std::string& text = texts[t];
    size_t bad = utf8_invalid_at(text);
    if (bad != std::string_view::npos)
      fail("tokenizer training: corpus text {} is not valid UTF-8 (invalid byte at offset {})", t, bad);
    pieces.clear();
    added.split(text, added.raw_trie, pieces);
    for (const Piece& p : pieces) {
      if (p.id >= 0) continue;
      re.find_all(p.s, matches);
      views.clear();
      split_by_matches(p.s, matches, SplitBehavior::Isolated, false, views);
      for (std::string_view v : views) {
        auto it = counts.find(v);
        if (it == counts.end()) counts.emplace(std::string(v), 1);
        else ++it->second;
        ++nwords;
      }
    }
  }
}

struct PairHash {
  size_t operator()(uint64_t k) const noexcept {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
  }
};
inline uint64_t pack(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b; }

}  // namespace

std::string train_bpe_json(const std::vector<std::string>& texts, int32_t vocab_size, const TrainOptions& opts,
                           TrainStats* stats) {
  auto t0 = std::chrono::steady_clock::now();
  const int32_t nspecial = (int32_t)opts.special_tokens.size();
  if (vocab_size < 256 + nspecial)
    fail("tokenizer training: --vocab-size {} is too small: the byte alphabet (256) and the {} special tokens "
         "need {}",
         vocab_size, nspecial, 256 + nspecial);
  {
    std::unordered_set<std::string> seen;
    for (const auto& s : opts.special_tokens) {
      if (s.empty()) fail("tokenizer training: a special token is empty");
      if (!seen.insert(s).second) fail("tokenizer training: special token {:?} is given twice", s);
    }
  }
  Regex re(opts.split_pattern, "tokenizer training: split pattern");

  // Vocabulary: the special tokens, then the 256 byte-level characters.
  std::vector<std::string> tok_str;
  Vocab tok_id;
  for (const auto& s : opts.special_tokens) {
    tok_id.emplace(s, (int32_t)tok_str.size());
    tok_str.push_back(s);
  }
  AddedVocab added;
  for (int32_t i = 0; i < nspecial; ++i) {
    AddedToken t;
    t.content = opts.special_tokens[i];
    t.id = i;
    t.special = true;
    t.normalized = false;
    added.by_id[i] = t;
    added.raw_trie.add(t.content, i);
  }
  std::array<int32_t, 256> byte_id;
  for (int b = 0; b < 256; ++b) {
    const std::string& c = byte_char_utf8((unsigned char)b);
    auto it = tok_id.find(std::string_view(c));
    if (it != tok_id.end()) {
      byte_id[b] = it->second;  // a special token spelt like a byte character: reuse it
    } else {
      byte_id[b] = (int32_t)tok_str.size();
      tok_id.emplace(c, byte_id[b]);
      tok_str.push_back(c);
    }
  }

  // 1. Count words, in parallel.
  int threads = opts.threads > 0 ? opts.threads : (int)std::max(1u, std::thread::hardware_concurrency());
  threads = (int)std::max<size_t>(1, std::min<size_t>((size_t)threads, texts.size()));
  std::vector<WordCounts> partial(threads);
  std::vector<int64_t> nwords(threads, 0);
  {
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> errs(threads);
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        try {
          size_t b = texts.size() * t / threads, e = texts.size() * (t + 1) / threads;
          count_words(texts, b, e, re, added, partial[t], nwords[t]);
        } catch (...) {
          errs[t] = std::current_exception();
        }
      });
    for (auto& th : pool) th.join();
    for (auto& e : errs)
      if (e) std::rethrow_exception(e);
  }
  WordCounts counts = std::move(partial[0]);
  for (int t = 1; t < threads; ++t) {
    for (auto& [w, c] : partial[t]) counts[w] += c;
    WordCounts().swap(partial[t]);
  }
  int64_t total_words = 0;
  for (int64_t n : nwords) total_words += n;

  // Distinct words in a fixed order (sorted), as symbol sequences.
  std::vector<std::pair<std::string, int64_t>> wl(counts.begin(), counts.end());
  WordCounts().swap(counts);
  std::sort(wl.begin(), wl.end());
  std::vector<std::vector<int32_t>> words(wl.size());
  std::vector<int64_t> freq(wl.size());
  for (size_t i = 0; i < wl.size(); ++i) {
    freq[i] = wl[i].second;
    words[i].reserve(wl[i].first.size());
    for (unsigned char b : wl[i].first) words[i].push_back(byte_id[b]);
  }

  // 2. Pair counts and where each pair occurs.
  std::unordered_map<uint64_t, int64_t, PairHash> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>, PairHash> pair_where;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      uint64_t p = pack(s[i], s[i + 1]);
      pair_count[p] += freq[w];
      auto& where = pair_where[p];
      if (where.empty() || where.back() != (int32_t)w) where.push_back((int32_t)w);
    }
  }
  struct Cand {
    int64_t count;
    uint64_t pair;
    bool operator<(const Cand& o) const {  // max-heap: higher count first, then smaller pair
      return count != o.count ? count < o.count : pair > o.pair;
    }
  };
  std::priority_queue<Cand> heap;
  for (const auto& [p, c] : pair_count)
    if (c > 0) heap.push({c, p});

  // 3. Merge until the vocabulary is full.
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::unordered_map<uint64_t, int64_t, PairHash> delta;
  std::vector<int32_t> touched_new;
  while ((int32_t)tok_str.size() < vocab_size && !heap.empty()) {
    Cand top = heap.top();
    heap.pop();
    auto pc = pair_count.find(top.pair);
    int64_t cur = pc == pair_count.end() ? 0 : pc->second;
    if (cur != top.count) {  // stale: re-queue with the current count
      if (cur > 0) heap.push({cur, top.pair});
      continue;
    }
    if (cur < opts.min_frequency) break;
    int32_t a = (int32_t)(top.pair >> 32), b = (int32_t)(uint32_t)top.pair;
    std::string merged = tok_str[a] + tok_str[b];
    int32_t nid;
    auto ex = tok_id.find(std::string_view(merged));
    if (ex != tok_id.end()) {
      nid = ex->second;
    } else {
      nid = (int32_t)tok_str.size();
      tok_id.emplace(merged, nid);
      tok_str.push_back(std::move(merged));
    }
    merges.emplace_back(a, b);

    delta.clear();
    std::vector<int32_t> where = std::move(pair_where[top.pair]);
    pair_where.erase(top.pair);
    for (int32_t w : where) {
      auto& s = words[w];
      const int64_t f = freq[w];
      bool changed = false;
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        if (s[i] != a || s[i + 1] != b) continue;
        // Pairs around the merge site lose one occurrence, the new ones gain one.
        if (i > 0) {
          delta[pack(s[i - 1], a)] -= f;
          delta[pack(s[i - 1], nid)] += f;
        }
        if (i + 2 < s.size()) {
          delta[pack(b, s[i + 2])] -= f;
          delta[pack(nid, s[i + 2])] += f;
        }
        s[i] = nid;
        s.erase(s.begin() + (ptrdiff_t)i + 1);
        changed = true;
      }
      if (!changed) continue;
      for (size_t i = 0; i + 1 < s.size(); ++i)
        if (s[i] == nid || s[i + 1] == nid) {
          auto& wh = pair_where[pack(s[i], s[i + 1])];
          if (wh.empty() || wh.back() != w) wh.push_back(w);
        }
    }
    pair_count.erase(top.pair);
    for (const auto& [p, d] : delta) {
      if (d == 0) continue;
      int64_t& c = pair_count[p];
      c += d;
      if (d > 0 && c > 0) heap.push({c, p});
      if (c <= 0) pair_count.erase(p);
    }
  }

  // 4. tokenizer.json
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  json added_json = json::array();
  for (int32_t i = 0; i < nspecial; ++i)
    added_json.push_back({{"id", i},
                          {"content", opts.special_tokens[i]},
                          {"single_word", false},
                          {"lstrip", false},
                          {"rstrip", false},
                          {"normalized", false},
                          {"special", true}});
  j["added_tokens"] = added_json;
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       json::array({{{"type", "Split"},
                     {"pattern", {{"Regex", opts.split_pattern}}},
                     {"behavior", "Isolated"},
                     {"invert", false}},
                    {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}})}};
  if (opts.bos_template && nspecial > 0) {
    const std::string& bos = opts.special_tokens[0];
    j["post_processor"] = {
        {"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array({{{"SpecialToken", {{"id", bos}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"SpecialToken", {{"id", bos}, {"type_id", 1}}}},
                              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens", {{bos, {{"id", bos}, {"ids", json::array({0})}, {"tokens", json::array({bos})}}}}}};
  } else {
    j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  }
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  json vocab = json::object();
  for (size_t i = 0; i < tok_str.size(); ++i) vocab[tok_str[i]] = (int32_t)i;
  json mj = json::array();
  for (auto [a, b] : merges) mj.push_back(json::array({tok_str[a], tok_str[b]}));
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", mj}};
  if (stats) {
    stats->words = total_words;
    stats->unique_words = (int64_t)words.size();
    stats->merges = (int64_t)merges.size();
    stats->vocab_size = (int32_t)tok_str.size();
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return j.dump(1);
}

TrainStats train_bpe(const std::vector<std::string>& texts, int32_t vocab_size, const std::string& out_path,
                     const TrainOptions& opts) {
  TrainStats st;
  std::string text = train_bpe_json(texts, vocab_size, opts, &st);
  std::ofstream f(out_path, std::ios::binary);
  if (!f) fail("{}: cannot write the trained tokenizer", out_path);
  f << text << "\n";
  if (!f) fail("{}: write failed", out_path);
  return st;
}

}  // namespace dsmoe::tok
