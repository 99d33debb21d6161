// Pre-tokenizers, the pattern split they share, and the added-token matcher.
#include <algorithm>

#include "core/error.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace dsmoe::tok::detail {

const char* const kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

void split_by_matches(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior b,
                      bool invert, std::vector<std::string_view>& out) {
  if (s.empty()) return;
  struct Ev {
    size_t start, end;
    bool match;
  };
  thread_local std::vector<Ev> ev, acc;
  ev.clear();
  size_t prev = 0;
  for (auto [ms, me] : matches) {
    if (prev != ms) ev.push_back({prev, ms, invert});
    ev.push_back({ms, me, !invert});
    prev = me;
  }
  if (prev != s.size()) ev.push_back({prev, s.size(), invert});

  auto emit = [&](size_t a, size_t e) {
    if (e > a) out.push_back(s.substr(a, e - a));
  };
  switch (b) {
    case SplitBehavior::Isolated:
      for (const Ev& e : ev) emit(e.start, e.end);
      return;
    case SplitBehavior::Removed:
      for (const Ev& e : ev)
        if (!e.match) emit(e.start, e.end);
      return;
    case SplitBehavior::Contiguous: {
      acc.clear();
      bool prev_match = false;
      for (const Ev& e : ev) {
        if (e.match == prev_match && !acc.empty()) acc.back().end = e.end;
        else acc.push_back(e);
        prev_match = e.match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      acc.clear();
      bool prev_match = false;
      for (const Ev& e : ev) {
        if (e.match && !prev_match && !acc.empty()) acc.back().end = e.end;
        else acc.push_back(e);
        prev_match = e.match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      acc.clear();
      bool prev_match = false;
      for (size_t k = ev.size(); k-- > 0;) {
        const Ev& e = ev[k];
        if (e.match && !prev_match && !acc.empty()) acc.back().start = e.start;
        else acc.push_back(e);
        prev_match = e.match;
      }
      std::reverse(acc.begin(), acc.end());
      break;
    }
  }
  for (const Ev& e : acc) emit(e.start, e.end);
}

std::string_view materialize(const Piece& p, Arena& arena) {
  if (!p.raw_bytes) return p.s;
  std::string m;
  m.reserve(p.s.size() * 2);
  byte_level_map(p.s, m);
  return arena.keep(std::move(m));
}

namespace {

thread_local std::vector<std::pair<size_t, size_t>> t_matches;
thread_local std::vector<std::string_view> t_views;

class SplitPre final : public PreTokenizer {
 public:
  SplitPre(std::shared_ptr<const Regex> re, SplitBehavior b, bool invert) : re_(std::move(re)), b_(b), inv_(invert) {}
  void apply(std::vector<Piece>& pieces, Arena& arena) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 2);
    for (const Piece& p : pieces) {
      if (p.id >= 0) {
        out.push_back(p);
        continue;
      }
      std::string_view s = materialize(p, arena);
      re_->find_all(s, t_matches);
      t_views.clear();
      split_by_matches(s, t_matches, b_, inv_, t_views);
      for (std::string_view v : t_views) out.push_back(Piece{v, -1, false});
    }
    pieces.swap(out);
  }

 private:
  std::shared_ptr<const Regex> re_;
  SplitBehavior b_;
  bool inv_;
};

class ByteLevelPre final : public PreTokenizer {
 public:
  ByteLevelPre(bool add_prefix_space, bool use_regex) : prefix_(add_prefix_space) {
    if (use_regex) re_ = std::make_unique<Regex>(kGpt2Pattern, "ByteLevel pre-tokenizer");
  }
  void apply(std::vector<Piece>& pieces, Arena& arena) const override {
    std::vector<Piece> out;
    out.reserve(pieces.size() * 2);
    for (const Piece& p : pieces) {
      if (p.id >= 0) {
        out.push_back(p);
        continue;
      }
      std::string_view s = materialize(p, arena);
      if (prefix_ && s[0] != ' ') {
        std::string t;
        t.reserve(s.size() + 1);
        t += ' ';
        t += s;
        s = arena.keep(std::move(t));
      }
      if (!re_) {
        out.push_back(Piece{s, -1, true});
        continue;
      }
      re_->find_all(s, t_matches);
      t_views.clear();
      split_by_matches(s, t_matches, SplitBehavior::Isolated, false, t_views);
      for (std::string_view v : t_views) out.push_back(Piece{v, -1, true});
    }
    pieces.swap(out);
  }

 private:
  bool prefix_;
  std::unique_ptr<Regex> re_;
};

class SequencePre final : public PreTokenizer {
 public:
  explicit SequencePre(std::vector<std::unique_ptr<PreTokenizer>> items) : items_(std::move(items)) {}
  void apply(std::vector<Piece>& pieces, Arena& arena) const override {
    for (const auto& p : items_) p->apply(pieces, arena);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> items_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_split(std::shared_ptr<const Regex> re, SplitBehavior b, bool invert) {
  return std::make_unique<SplitPre>(std::move(re), b, invert);
}
std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex) {
  return std::make_unique<ByteLevelPre>(add_prefix_space, use_regex);
}
std::unique_ptr<PreTokenizer> make_sequence(std::vector<std::unique_ptr<PreTokenizer>> items) {
  return std::make_unique<SequencePre>(std::move(items));
}

// ---- added tokens -------------------------------------------------------------------------------

void TokenTrie::add(std::string_view pattern, int32_t value) {
  if (pattern.empty()) return;
  int32_t node = 0;
  for (unsigned char b : pattern) {
    auto& nx = nodes_[node].next;
    auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(b, (int32_t)-1),
                               [](const auto& x, const auto& y) { return x.first < y.first; });
    if (it != nx.end() && it->first == b) {
      node = it->second;
    } else {
      int32_t child = (int32_t)nodes_.size();
      nx.insert(it, {b, child});
      nodes_.emplace_back();
      node = child;
    }
  }
  // A pattern given twice: the first one wins (as with Aho-Corasick's pattern order).
  if (nodes_[node].value < 0) nodes_[node].value = value;
  first_[(unsigned char)pattern[0]] = true;
}

size_t TokenTrie::longest_at(std::string_view s, size_t pos, int32_t& value) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < s.size(); ++i) {
    const auto& nx = nodes_[node].next;
    unsigned char b = (unsigned char)s[i];
    auto it = std::lower_bound(nx.begin(), nx.end(), std::make_pair(b, (int32_t)-1),
                               [](const auto& x, const auto& y) { return x.first < y.first; });
    if (it == nx.end() || it->first != b) break;
    node = it->second;
    if (nodes_[node].value >= 0) {
      best = i + 1 - pos;
      value = nodes_[node].value;
    }
  }
  return best;
}

namespace {
bool ends_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = s.size();
  return is_word_char(utf8_prev(s, i));
}
bool starts_with_word(std::string_view s) {
  if (s.empty()) return false;
  size_t i = 0;
  return is_word_char(utf8_next(s, i));
}
}  // namespace

void AddedVocab::split(std::string_view text, const TokenTrie& trie, std::vector<Piece>& out) const {
  if (text.empty()) return;
  if (trie.empty()) {
    out.push_back(Piece{text, -1, false});
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  const size_t n = text.size();
  while (pos < n) {
    if (!trie.may_start((unsigned char)text[pos])) {
      ++pos;
      continue;
    }
    int32_t id = -1;
    size_t len = trie.longest_at(text, pos, id);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the matcher goes on after the match, whatever lstrip/rstrip do below
    const AddedToken& t = by_id.find(id)->second;
    if (t.single_word) {
      bool start_space = start == 0 || !ends_with_word(text.substr(0, start));
      bool stop_space = stop == n || !starts_with_word(text.substr(stop));
      if (!start_space || !stop_space) continue;
    }
    if (t.lstrip) {
      size_t ns = start;
      while (ns > 0) {
        size_t k = ns;
        if (!is_whitespace(utf8_prev(text, k))) break;
        ns = k;
      }
      start = std::max(ns, start_offset);
    }
    if (t.rstrip) {
      while (stop < n) {
        size_t k = stop;
        if (!is_whitespace(utf8_next(text, k))) break;
        stop = k;
      }
    }
    if (start_offset < start) out.push_back(Piece{text.substr(start_offset, start - start_offset), -1, false});
    out.push_back(Piece{text.substr(start, stop - start), t.id, false});
    start_offset = stop;
  }
  if (start_offset < n) out.push_back(Piece{text.substr(start_offset), -1, false});
}

}  // namespace dsmoe::tok::detail
