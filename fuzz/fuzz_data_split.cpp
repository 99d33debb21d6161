// Surface: a prepared dataset's split file (DIR/train.safetensors: the "tokens" tensor and its
// metadata: vocab_size, tokenizer, bos_id, eos_id; the optional domain labels doc_ends, doc_domains,
// domains) through load_split, then what training does with a split it accepted: batches,
// evaluation windows, the unigram baseline, and each domain's documents (per-domain evaluation).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fuzz_support.h"
#include "train/data.h"

using namespace dsmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::reset_scratch();
  fuzz::write_scratch("train.safetensors", {reinterpret_cast<const char*>(data), size});
  fuzz::refuse_ok([&] {
    const TokenSplit s = load_split(fuzz::scratch_dir(), "train", /*model_vocab_size=*/1000);
    std::vector<int32_t> in, tg;
    fuzz::refuse_ok([&] {
      BatchSampler b(s, 2, 4, 1);
      b.next(in, tg);
    });
    fuzz::refuse_ok([&] { eval_batch(s, 2, 4, 0, 2, in, tg); });
    fuzz::refuse_ok([&] { unigram_baseline(s, s); });
    for (size_t d = 0; d < s.domains.size(); ++d) {
      const TokenSplit sub = s.domain_subset((int32_t)d);
      fuzz::refuse_ok([&] { eval_batch(sub, 2, 4, 0, 2, in, tg); });
    }
  });
  return 0;
}
