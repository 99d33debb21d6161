// Text <-> token ids for the CLI and corpus preparation: either the byte-level codec ("bytes": ids
// are the UTF-8 bytes, vocab 256) or a Hugging Face tokenizer.json (src/tokenizer).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsmoe {

namespace tok {
class Tokenizer;
}

class TextCodec {
 public:
  // "bytes" or the path of a tokenizer.json.
  static TextCodec load(const std::string& spec);
  std::vector<int32_t> encode(const std::string& text) const;  // no BOS/EOS
  std::string decode(const std::vector<int32_t>& ids) const;
  int64_t vocab_size() const { return vocab_size_; }
  const std::string& spec() const { return spec_; }

 private:
  std::string spec_;
  int64_t vocab_size_ = 256;
  std::shared_ptr<const tok::Tokenizer> tokenizer_;  // null for "bytes"
};

}  // namespace dsmoe
