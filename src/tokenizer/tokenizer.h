// Hugging Face tokenizer.json byte-level BPE tokenizers, id-exact with the `tokenizers` library.
//
//   auto tok = dsmoe::tok::Tokenizer::load("tokenizer.json");
//   std::vector<int32_t> ids = tok.encode("Hello world");   // no BOS/EOS
//   std::string text = tok.decode(ids);                    // == "Hello world"
//
// Supported components (anything else is rejected with an error naming it and its path in the file):
//   normalizer:     Sequence, NFC, NFD, NFKC, NFKD, Lowercase, Prepend, Replace, Strip, StripAccents
//   pre_tokenizer:  Sequence, Split (String/Regex pattern, every behaviour, invert), ByteLevel,
//                   Digits, Whitespace, WhitespaceSplit, Punctuation
//   model:          BPE (merges as "a b" strings or [a, b] pairs, ignore_merges, unk_token, fuse_unk,
//                   byte_fallback, continuing_subword_prefix, end_of_word_suffix)
//   added_tokens:   matched before pre-tokenisation, with single_word / lstrip / rstrip / normalized
//   post_processor: ByteLevel, TemplateProcessing, RobertaProcessing, BertProcessing, Sequence
//   decoder:        ByteLevel, Sequence, Replace, Strip, Fuse, ByteFallback
// tokenizer_config.json beside tokenizer.json: add_bos_token / add_eos_token (with bos_token /
// eos_token) replace the post-processor the way transformers' fast Llama tokenizer does; they apply
// only when special tokens are requested.
//
// Thread safety: a Tokenizer is immutable after load; encode/decode may run concurrently.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dsmoe::tok {

struct TokenizerImpl;

class Tokenizer {
 public:
  // Loads a tokenizer.json. tokenizer_config.json is read from `config_path`, or when that is empty
  // from the same folder if it exists there; pass use_config=false to ignore it.
  static Tokenizer load(const std::string& path, const std::string& config_path = "", bool use_config = true);
  // Parses tokenizer.json text; `origin` names it in error messages.
  static Tokenizer from_json(const std::string& json_text, const std::string& origin = "tokenizer.json");

  // Token ids of `text` (valid UTF-8; dsmoe::Error otherwise). add_special_tokens runs the
  // post-processor (BOS/EOS templates), as HF's encode(text, add_special_tokens=True).
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = false) const;
  // encode() over many texts on `threads` threads (0: hardware concurrency).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts, int threads = 0,
                                                 bool add_special_tokens = false) const;
  // The text of `ids`: HF's decode (ids unknown to the vocabulary are skipped; invalid UTF-8 from
  // byte tokens becomes U+FFFD).
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  // One more than the largest id (model vocabulary and added tokens): the embedding table size.
  int32_t vocab_size() const;
  std::optional<int32_t> token_to_id(std::string_view token) const;
  std::optional<std::string> id_to_token(int32_t id) const;
  bool is_special(int32_t id) const;
  // BOS / EOS from tokenizer_config.json (bos_token / eos_token), if any.
  std::optional<int32_t> bos_id() const;
  std::optional<int32_t> eos_id() const;

 private:
  std::shared_ptr<const TokenizerImpl> impl_;
};

}  // namespace dsmoe::tok
