#include "infer/text_codec.h"

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace dsmoe {

TextCodec TextCodec::load(const std::string& spec) {
  TextCodec c;
  c.spec_ = spec;
  if (spec == "bytes") return c;
  c.tokenizer_ = std::make_shared<const tok::Tokenizer>(tok::Tokenizer::load(spec));
  c.vocab_size_ = c.tokenizer_->vocab_size();
  return c;
}

std::vector<int32_t> TextCodec::encode(const std::string& text) const {
  if (tokenizer_) return tokenizer_->encode(text, false);
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = (uint8_t)text[i];
  return ids;
}

std::string TextCodec::decode(const std::vector<int32_t>& ids) const {
  if (tokenizer_) return tokenizer_->decode(ids);
  std::string s;
  for (int32_t id : ids)
    if (id >= 0 && id < 256) s += (char)id;
  return s;
}

}  // namespace dsmoe
