// Writes the benchmark model (bench_model.h: deepseek-moe-16b's expert shapes, 4 layers) with
// random q8 weights as a quantized model folder every dsmoe command loads, for the end-to-end
// server benchmark (bench/serve_bench.sh):
//   build/make_bench_model OUT_DIR [--force]
// Its vocabulary is byte-level (256 ids, no tokenizer file) instead of bench_infer's 32000, so the
// server's text paths work without a tokenizer; the expert shapes, which dominate the bytes a step
// reads, are deepseek-moe-16b's. Written through StagedOutput (atomic; --force replaces an earlier
// output of this tool only).
#include <cstdio>
#include <cstring>
#include <string>

#include "bench_model.h"
#include "core/error.h"
#include "infer/hf_checkpoint.h"
#include "infer/model_files.h"
#include "infer/text_codec.h"
#include "io/output_dir.h"
#include "model/config.h"

int main(int argc, char** argv) {
  using namespace dsmoe;
  if (argc < 2 || argc > 3 || (argc == 3 && std::strcmp(argv[2], "--force") != 0)) {
    std::fprintf(stderr, "usage: %s OUT_DIR [--force]\n", argv[0]);
    return 2;
  }
  try {
    Config cfg;
    cfg.model = bench::bench_config(256);
    validate(cfg, "bench model");
    OutputRequest r;
    r.dir = argv[1];
    r.command = "make_bench_model";
    r.replaces = {"make_bench_model"};
    r.force = argc == 3;
    StagedOutput out(r);
    InferenceWeights w = InferenceWeights::allocate(cfg.model, ops::WType::Q8);
    bench::fill_random(w, 1);
    const int64_t shards = write_quantized(out.path(), cfg, w, ExportOptions{});
    write_model_text_files(out.path(), TextCodec::load("bytes"), cfg.model);
    out.commit();
    std::printf("wrote %s: %.3f GB of q8 weights, %lld shard(s)\n", argv[1], w.bytes() / 1e9, (long long)shards);
    return 0;
  } catch (const UsageError& e) {
    std::fprintf(stderr, "make_bench_model: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_bench_model: %s\n", e.what());
    return 1;
  }
}
