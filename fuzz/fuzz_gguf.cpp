// Surface: the bytes of a .gguf file (header, key/values, tensor directory, data), opened the way
// `--model FILE.gguf` opens it: GgufFile, then the deepseek mapping (config, tokenizer rebuild, and
// for small models the weights into f32 storage).
#include <cstddef>
#include <cstdint>

#include "fuzz_support.h"
#include "infer/gguf_checkpoint.h"
#include "infer/gguf_vocab.h"
#include "io/gguf.h"
#include "model/params.h"
#include "tokenizer/tokenizer.h"

using namespace dsmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_scratch("in.gguf", {reinterpret_cast<const char*>(data), size});
  fuzz::refuse_ok([&] {
    const GgufFile f(path);
    std::vector<float> row;
    for (const GgufTensor& t : f.tensors()) {  // the first row of each tensor (bounded work)
      if (t.ne[0] > 4096) continue;
      row.resize((size_t)t.ne[0]);
      if (t.numel > 0) dequantize_row(t.type, t.data, t.ne[0], row.data());
    }
    fuzz::refuse_ok([&] {
      const GgufTokenizer tk = gguf_tokenizer_json(f);
      const tok::Tokenizer t = tok::Tokenizer::from_json(tk.json, "fuzz");
      (void)t.encode("hello world 123", true);
    });
    const Config c = load_gguf_config(f);
    if (ParamLayout(c.model).total() > 1'000'000) return;  // weights of small models only
    InferenceWeights w = InferenceWeights::allocate(c.model, ops::WType::F32);
    load_gguf_weights_into(f, w);
  });
  return 0;
}
