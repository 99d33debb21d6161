#include "small_tokenizer.h"

#include <string>
#include <vector>

#include "tokenizer/bpe_trainer.h"

namespace dsmoe::fuzz {

const tok::Tokenizer& small_tokenizer() {
  static const tok::Tokenizer t = [] {
    const std::vector<std::string> texts = {
        "the quick brown fox jumps over the lazy dog, then the dog sleeps.",
        "Numbers 12 345 6789 and punctuation!? (yes) -- they're tokens too.\n\nNew paragraph.",
        "caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 mixed scripts repeat repeat repeat",
    };
    tok::TrainOptions o;
    o.threads = 1;
    return tok::Tokenizer::from_json(tok::train_bpe_json(texts, 320, o), "small_tokenizer");
  }();
  return t;
}

}  // namespace dsmoe::fuzz
