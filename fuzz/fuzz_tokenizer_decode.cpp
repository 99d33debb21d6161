// Surface: arbitrary token ids to decode (negative, past the vocabulary, special, byte tokens that
// form invalid UTF-8): the input's bytes read as little-endian int32s.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_support.h"
#include "small_tokenizer.h"

using namespace dsmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const tok::Tokenizer& t = fuzz::small_tokenizer();
  std::vector<int32_t> ids(size / 4);
  if (!ids.empty()) std::memcpy(ids.data(), data, ids.size() * 4);
  // Small ids are the interesting ones: fold most values into the vocabulary, keep a few raw.
  for (int32_t& id : ids)
    if ((id & 0xff000000) == 0) id %= t.vocab_size() + 4;
  fuzz::refuse_ok([&] { t.decode(ids, false); });
  fuzz::refuse_ok([&] { t.decode(ids, true); });
  return 0;
}
