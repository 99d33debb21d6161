// Internals of the tokenizer pipeline (not a public API): the pieces a text is cut into, and the
// components of tokenizer.json (normalizers, pre-tokenizers, the BPE model, added tokens,
// post-processors, decoders), each reproducing what Hugging Face's tokenizers library does.
#pragma once
#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tokenizer/regex.h"

namespace dsmoe::tok::detail {

// Transparent string hash: unordered_map<std::string, ...> looked up with a string_view.
struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, SvHash, std::equal_to<>>;

// A stretch of the text on its way through the pipeline.
struct Piece {
  std::string_view s;
  int32_t id = -1;         // >= 0: an added token, already final
  bool raw_bytes = false;  // the ByteLevel mapping is pending: the piece's text is the byte-level
                           // characters of the bytes in s (mapped lazily, the BPE reads bytes)
};

// Owns the strings that pieces point into when a step rewrites text.
struct Arena {
  std::deque<std::string> strs;
  std::string_view keep(std::string&& s) {
    strs.push_back(std::move(s));
    return strs.back();
  }
  void clear() { strs.clear(); }
};

// ---- normalizers ------------------------------------------------------------------------------
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Writes the normalised text to out and returns true, or returns false when it is unchanged.
  virtual bool apply(std::string_view in, std::string& out) const = 0;
};

// ---- pre-tokenizers ---------------------------------------------------------------------------
class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their pre-tokenisation (pieces with an id pass through untouched).
  virtual void apply(std::vector<Piece>& pieces, Arena& arena) const = 0;
};

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

// HF's NormalizedString::split over a pattern's matches: cuts s into pieces by `behavior`,
// dropping empty ones. matches: [start, end) of every match, in order.
void split_by_matches(std::string_view s, const std::vector<std::pair<size_t, size_t>>& matches, SplitBehavior b,
                      bool invert, std::vector<std::string_view>& out);

// The text of a piece with any pending ByteLevel mapping applied.
std::string_view materialize(const Piece& p, Arena& arena);

std::unique_ptr<PreTokenizer> make_split(std::shared_ptr<const Regex> re, SplitBehavior b, bool invert);
std::unique_ptr<PreTokenizer> make_byte_level(bool add_prefix_space, bool use_regex);
std::unique_ptr<PreTokenizer> make_sequence(std::vector<std::unique_ptr<PreTokenizer>> items);

// The regex of GPT-2 that ByteLevel uses when use_regex is set.
extern const char* const kGpt2Pattern;

// ---- BPE model ----------------------------------------------------------------------------------
// (a, b) -> (rank, merged id): open addressing on the packed pair.
class MergeMap {
 public:
  void build(const std::vector<std::pair<uint64_t, std::pair<uint32_t, int32_t>>>& entries);
  // Returns false when (a, b) has no merge.
  bool find(int32_t a, int32_t b, uint32_t& rank, int32_t& merged) const {
    if (slots_.empty()) return false;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = mix(key) & mask_;
    while (true) {
      const Slot& s = slots_[i];
      if (s.rank == kEmpty) return false;
      if (s.key == key) {
        rank = s.rank;
        merged = s.merged;
        return true;
      }
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    uint64_t key;
    uint32_t rank;
    int32_t merged;
  };
  static size_t mix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Per-thread state of the BPE: a word cache and work arrays.
struct BpeScratch;

class BpeModel {
 public:
  Vocab vocab;
  std::vector<std::string> id_to_token;  // "" where the id is unused
  std::vector<uint8_t> id_used;
  MergeMap merges;
  std::optional<std::string> unk_token;
  bool fuse_unk = false, byte_fallback = false, ignore_merges = false;
  std::string continuing_subword_prefix, end_of_word_suffix;

  // Call once vocab, merges and options are set.
  void finish();
  // Appends the ids of one pre-tokenised word.
  void tokenize(const Piece& p, std::vector<int32_t>& out, BpeScratch& scratch) const;
  // The merge loop on initial symbols (exposed for tests: scan and heap variants must agree).
  void merge_symbols(std::vector<int32_t>& syms, bool force_heap = false) const;

  uint64_t serial = 0;  // identifies this model to the per-thread caches

 private:
  void tokenize_chars(std::string_view word, std::vector<int32_t>& syms) const;
  std::array<int32_t, 256> byte_ids_{};
  bool byte_fast_ = false;
};

BpeScratch& bpe_scratch(const BpeModel& m);

// ---- added tokens -------------------------------------------------------------------------------
struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest multi-pattern matcher (the Aho-Corasick MatchKind::LeftmostLongest of HF).
class TokenTrie {
 public:
  void add(std::string_view pattern, int32_t value);
  bool empty() const { return nodes_.size() <= 1; }
  // Longest pattern starting at s[pos]: its length and value, or length 0.
  size_t longest_at(std::string_view s, size_t pos, int32_t& value) const;
  bool may_start(unsigned char b) const { return first_[b]; }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
    int32_t value = -1;
  };
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_{};
};

class AddedVocab {
 public:
  std::unordered_map<int32_t, AddedToken> by_id;  // the token each added id stands for
  TokenTrie raw_trie, norm_trie;                   // values are ids
  // Cuts text around the added tokens of `trie` (HF's AddedVocabulary::find_matches).
  void split(std::string_view text, const TokenTrie& trie, std::vector<Piece>& out) const;
};

// ---- post-processors and decoders ---------------------------------------------------------------
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual void apply(std::vector<int32_t>& ids) const = 0;  // single sequence, special tokens on
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void apply(std::vector<std::string>& tokens) const = 0;  // HF's decode_chain
};

}  // namespace dsmoe::tok::detail
