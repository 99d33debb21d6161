// Surface: arbitrary bytes as text to encode (valid UTF-8 or not), with and without special tokens.
// The fixed tokenizer is byte-level, so decoding what it encoded must give the text back exactly.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "fuzz_support.h"
#include "small_tokenizer.h"

using namespace dsmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const tok::Tokenizer& t = fuzz::small_tokenizer();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::refuse_ok([&] {
    const auto ids = t.encode(text, false);  // refuses invalid UTF-8
    for (int32_t id : ids)
      if (id < 0 || id >= t.vocab_size()) std::abort();
    if (t.decode(ids, false) != text) std::abort();  // byte-level BPE loses nothing
    t.encode(text, true);
  });
  return 0;
}
