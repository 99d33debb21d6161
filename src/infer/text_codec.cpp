#include "infer/text_codec.h"

#include <filesystem>
#include <fmt/format.h>

#include "core/error.h"
#include "infer/gguf_checkpoint.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace dsmoe {

namespace fs = std::filesystem;

TextCodec TextCodec::load(const std::string& spec) {
  TextCodec c;
  c.spec_ = spec;
  if (spec == "bytes") return c;
  if (!fs::exists(spec)) fail("{}: tokenizer file not found", spec);
  c.tokenizer_ = std::make_shared<const tok::Tokenizer>(tok::Tokenizer::load(spec));
  c.vocab_size_ = c.tokenizer_->vocab_size();
  if (auto b = c.tokenizer_->bos_id()) c.bos_ = *b;
  if (auto e = c.tokenizer_->eos_id()) c.eos_ = *e;
  return c;
}

std::string TextCodec::tokenizer_json() const {
  if (!tokenizer_) fail("byte-level ids have no tokenizer.json");
  return json_.empty() ? read_text_file(spec_) : json_;
}

TextCodec TextCodec::for_model(const std::string& dir, const std::string& spec, const ModelConfig& m) {
  std::string path = spec;
  if (path.empty() && is_gguf_file(dir)) {
    const GgufFile f(dir);
    const GgufTokenizer t = gguf_tokenizer_json(f);
    TextCodec c;
    c.spec_ = dir;
    c.json_ = t.json;
    c.tokenizer_ = std::make_shared<const tok::Tokenizer>(tok::Tokenizer::from_json(t.json, dir + " (tokenizer.ggml.*)"));
    c.vocab_size_ = c.tokenizer_->vocab_size();
    if (c.vocab_size_ > m.vocab_size)
      fail("{}: the tokenizer has {} ids but the model's vocab_size is {}", dir, c.vocab_size_, m.vocab_size);
    c.bos_ = t.bos;
    c.eos_ = t.eos;
    return c;
  }
  if (path.empty()) {
    const fs::path own = fs::path(dir) / "tokenizer.json";
    if (fs::exists(own)) path = own.string();
    else if (m.vocab_size <= 256) path = "bytes";  // a byte-level model: its ids are the bytes
    else
      fail("{} has no tokenizer.json, and its vocab_size {} is not byte-level (256); give the tokenizer it was "
           "trained with (--tokenizer FILE), or token ids",
           dir, m.vocab_size);
  }
  TextCodec c = load(path);
  auto in_vocab = [&](int64_t id) { return id >= 0 && id < m.vocab_size ? (int32_t)id : -1; };
  if (c.is_bytes()) {
    if (m.vocab_size > 256)
      fail("--tokenizer bytes: byte ids cover 256 tokens but {} has vocab_size {}; give its tokenizer.json", dir,
           m.vocab_size);
    // Byte ids are text, never EOS; a test model with fewer than 256 ids keeps the config's EOS.
    c.eos_ = m.vocab_size < 256 ? in_vocab(m.eos_token_id) : -1;
    c.vocab_size_ = m.vocab_size;
    return c;
  }
  if (c.vocab_size_ > m.vocab_size)
    fail("{}: the tokenizer has {} ids but the model's vocab_size is {}", path, c.vocab_size_, m.vocab_size);
  if (c.bos_ < 0) c.bos_ = in_vocab(m.bos_token_id);
  if (c.eos_ < 0) c.eos_ = in_vocab(m.eos_token_id);
  return c;
}

std::vector<int32_t> TextCodec::encode(const std::string& text, bool add_special) const {
  if (tokenizer_) return tokenizer_->encode(text, add_special);
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    ids[i] = (uint8_t)text[i];
    if (ids[i] >= vocab_size_)
      fail("byte {} of the text is not in the model's vocabulary of {} ids; give token ids instead", ids[i],
           vocab_size_);
  }
  return ids;
}

std::string TextCodec::decode(const std::vector<int32_t>& ids) const {
  if (tokenizer_) return tokenizer_->decode(ids, /*skip_special_tokens=*/true);
  std::string s;
  for (int32_t id : ids) {
    if (id < 0 || id >= 256) fail("token id {} is not a byte (the byte-level codec has ids 0..255)", id);
    if (id == eos_) continue;
    s += (char)id;
  }
  return s;
}

std::string TextCodec::describe() const {
  if (!tokenizer_) return fmt::format("byte-level ids (vocab {})", vocab_size_);
  std::string s = fmt::format("tokenizer {} (vocab {}", spec_, vocab_size_);
  if (bos_ >= 0) s += fmt::format(", BOS {}", bos_);
  if (eos_ >= 0) s += fmt::format(", EOS {}", eos_);
  return s + ")";
}

}  // namespace dsmoe
