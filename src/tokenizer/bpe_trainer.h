// Byte-level BPE training: learns merges from a corpus and writes a Hugging Face tokenizer.json
// that dsmoe::tok::Tokenizer and Hugging Face's tokenizers library both load and encode identically.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsmoe::tok {

struct TrainOptions {
  // Special tokens, given the first ids (0, 1, ...) in this order; never produced by merges.
  std::vector<std::string> special_tokens = {"<|begin_of_text|>", "<|end_of_text|>"};
  // Pre-tokenizer regex (HF Split, Isolated) applied before the byte-level mapping. The default is
  // GPT-4's / Llama 3's: contractions, letters, 1-3 digit groups, punctuation runs, newlines, spaces.
  std::string split_pattern =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  int64_t min_frequency = 2;  // a pair seen fewer times is never merged
  int threads = 0;            // word counting threads (0: hardware concurrency)
  bool verbose = false;       // progress on stderr
  // Post-processor: a TemplateProcessing that puts the first special token (BOS) before every
  // sequence when special tokens are requested; false: ByteLevel (adds nothing).
  bool bos_template = true;
};

struct TrainStats {
  int64_t words = 0;         // pre-tokenised words in the corpus
  int64_t unique_words = 0;  // distinct words
  int64_t merges = 0;        // merges learnt
  int32_t vocab_size = 0;    // ids in the written vocabulary
  double seconds = 0;
};

// Learns a byte-level BPE of `vocab_size` ids (256 bytes + specials + merges; fewer merges when the
// corpus runs out of pairs) and writes it to `out_path` as tokenizer.json. Throws dsmoe::Error when
// vocab_size is too small to hold the byte alphabet and the special tokens.
TrainStats train_bpe(const std::vector<std::string>& texts, int32_t vocab_size, const std::string& out_path,
                     const TrainOptions& opts = {});

// The tokenizer.json text of a trained tokenizer (what train_bpe writes).
std::string train_bpe_json(const std::vector<std::string>& texts, int32_t vocab_size, const TrainOptions& opts,
                           TrainStats* stats = nullptr);

}  // namespace dsmoe::tok
