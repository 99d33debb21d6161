// Text <-> token ids for the CLI and corpus preparation. "bytes" is the byte-level codec (ids are the
// UTF-8 bytes, vocab 256) used until a BPE tokenizer is configured.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsmoe {

class TextCodec {
 public:
  // "bytes" (the only codec so far; tokenizer.json support arrives with the tokenizer module).
  static TextCodec load(const std::string& spec);
  std::vector<int32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  int64_t vocab_size() const { return vocab_size_; }
  const std::string& spec() const { return spec_; }

 private:
  std::string spec_;
  int64_t vocab_size_ = 256;
};

}  // namespace dsmoe
