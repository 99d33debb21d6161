// Text <-> token ids for every command that reads or writes text: a Hugging Face tokenizer.json
// (src/tokenizer, with the tokenizer_config.json beside it: BOS/EOS, add_bos_token), or dsmoe's
// byte-level codec ("bytes": ids are the UTF-8 bytes, vocab 256, no BOS/EOS).
//
// for_model() is how a model folder's text is read, and it never guesses: the folder's
// tokenizer.json when there is one; byte ids only for a model whose whole vocabulary is bytes (or
// when asked with "bytes"); otherwise an error naming the folder. A 2K-vocabulary model read as bytes
// scores perplexity in the tens of thousands and generates nothing useful.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsmoe {

namespace tok {
class Tokenizer;
}
struct ModelConfig;

class TextCodec {
 public:
  // "bytes" or the path of a tokenizer.json (its folder's tokenizer_config.json applies).
  static TextCodec load(const std::string& spec);
  // The text codec of model folder DIR (see above), or of a GGUF file DIR (its tokenizer.ggml.*,
  // infer/gguf_vocab.h). spec: "" (the model's), "bytes" or a path.
  // Checks that the tokenizer's ids fit the model's vocab_size.
  static TextCodec for_model(const std::string& dir, const std::string& spec, const ModelConfig& m);

  // add_special: BOS (and EOS) the way the tokenizer's post-processor / tokenizer_config.json says,
  // as HF's encode(add_special_tokens=True); byte-level text has none.
  std::vector<int32_t> encode(const std::string& text, bool add_special = false) const;
  // Special tokens are skipped (HF's skip_special_tokens=True). Byte codec: an id >= 256 is an error.
  std::string decode(const std::vector<int32_t>& ids) const;

  // The tokenizer.json text (the file's, or the one rebuilt from a GGUF file's tokenizer.ggml.*).
  std::string tokenizer_json() const;

  int64_t vocab_size() const { return vocab_size_; }
  const std::string& spec() const { return spec_; }
  bool is_bytes() const { return !tokenizer_; }
  bool is_file() const { return tokenizer_ && json_.empty(); }  // spec() is a tokenizer.json (not a GGUF's)
  int32_t bos_id() const { return bos_; }  // -1: none
  int32_t eos_id() const { return eos_; }  // -1: none (generation then stops only at the length limit)
  // "tokenizer DIR/tokenizer.json (vocab 2048, BOS 0, EOS 1)" / "byte-level ids (vocab 256)"
  std::string describe() const;

 private:
  std::string spec_;
  std::string json_;  // tokenizer.json text when not read from the file spec_ (a GGUF's)
  int64_t vocab_size_ = 256;
  int32_t bos_ = -1, eos_ = -1;
  std::shared_ptr<const tok::Tokenizer> tokenizer_;  // null for "bytes"
};

}  // namespace dsmoe
