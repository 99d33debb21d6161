#include "infer/text_codec.h"

#include "core/error.h"

namespace dsmoe {

TextCodec TextCodec::load(const std::string& spec) {
  if (spec != "bytes") fail("tokenizer '{}': unsupported (expected \"bytes\")", spec);
  TextCodec c;
  c.spec_ = spec;
  c.vocab_size_ = 256;
  return c;
}

std::vector<int32_t> TextCodec::encode(const std::string& text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = (uint8_t)text[i];
  return ids;
}

std::string TextCodec::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids)
    if (id >= 0 && id < 256) s += (char)id;
  return s;
}

}  // namespace dsmoe
