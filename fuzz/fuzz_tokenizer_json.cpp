// Surface: a tokenizer.json (normalizer, pre-tokenizer, model, added tokens, post-processor,
// decoder) through Tokenizer::from_json. A tokenizer it accepts then encodes a fixed text and
// decodes its first ids, so the components the JSON configured run, not only their parsing.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_support.h"
#include "tokenizer/tokenizer.h"

using namespace dsmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::refuse_ok([&] {
    const tok::Tokenizer t = tok::Tokenizer::from_json(std::string(reinterpret_cast<const char*>(data), size));
    fuzz::refuse_ok([&] {
      t.encode("Hello, world! 123 <s> caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87\n  end", true);
    });
    std::vector<int32_t> ids;
    for (int32_t i = 0; i < std::min<int32_t>(t.vocab_size(), 64); ++i) ids.push_back(i);
    ids.push_back(-1);
    ids.push_back(t.vocab_size());
    fuzz::refuse_ok([&] { t.decode(ids, false); });
    fuzz::refuse_ok([&] { t.decode(ids, true); });
    for (int32_t id : ids) {
      if (auto s = t.id_to_token(id)) t.token_to_id(*s);
      t.is_special(id);
    }
  });
  return 0;
}
