// Streams generated text as tokens arrive, holding back what could still change: a trailing U+FFFD
// (an incomplete UTF-8 sequence split across byte tokens) and any suffix that may begin a stop
// string. Shared by the CLI's generate/chat and anything else that streams text.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "infer/text_codec.h"

namespace dsmoe {

class TextStream {
 public:
  TextStream(const TextCodec& codec, std::vector<std::string> stops) : codec_(codec), stops_(std::move(stops)) {}
  // Appends a token; sets `out` to the newly safe text. Returns false when a stop string appeared
  // (the text up to it has then been emitted).
  bool push(int32_t t, std::string& out);
  // What is left to emit at the end.
  std::string flush();
  // The whole text so far (up to a stop string, which is not included).
  const std::string& text() const { return final_; }
  bool stopped() const { return stopped_; }

 private:
  const TextCodec& codec_;
  std::vector<std::string> stops_;
  std::vector<int32_t> ids_;
  size_t emitted_ = 0;
  std::string final_;
  bool stopped_ = false;
};

}  // namespace dsmoe
