// Writes the benchmark model (bench_model.h: deepseek-moe-16b's expert shapes, 4 layers) with
// random q8 weights as a quantized model folder every dsmoe command loads, for the end-to-end
// server benchmark (bench/serve_bench.sh) and the side-by-side benchmark with llama.cpp
// (bench/llama_side_by_side.sh, which exports it to GGUF):
//   build/make_bench_model OUT_DIR [--force] [--layers N] [--routed-experts E]
// --layers / --routed-experts shrink the model (same layer shapes) for the benchmarks' quick modes.
// Its vocabulary is byte-level (256 ids, no tokenizer file) instead of bench_infer's 32000, so the
// server's text paths work without a tokenizer; the expert shapes, which dominate the bytes a step
// reads, are deepseek-moe-16b's. Written through StagedOutput (atomic; --force replaces an earlier
// output of this tool only).
#include <cstdio>
#include <cstdlib>
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
  const auto usage = [&] {
    std::fprintf(stderr, "usage: %s OUT_DIR [--force] [--layers N (2..64)] [--routed-experts E (6..64)]\n", argv[0]);
    return 2;
  };
  if (argc < 2) return usage();
  bool force = false;
  int64_t layers = 0, experts = 0;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    const auto number = [&](int64_t lo, int64_t hi, int64_t& v) {
      if (i + 1 >= argc) return false;
      char* end = nullptr;
      const long long x = std::strtoll(argv[++i], &end, 10);
      if (*end != 0 || x < lo || x > hi) return false;
      v = x;
      return true;
    };
    if (a == "--force") force = true;
    else if (a == "--layers") {
      if (!number(2, 64, layers)) return usage();
    } else if (a == "--routed-experts") {
      if (!number(6, 64, experts)) return usage();
    } else return usage();
  }
  try {
    Config cfg;
    cfg.model = bench::bench_config(256);
    if (layers > 0) cfg.model.num_hidden_layers = layers;
    if (experts > 0) cfg.model.n_routed_experts = experts;
    validate(cfg, "bench model");
    OutputRequest r;
    r.dir = argv[1];
    r.command = "make_bench_model";
    r.replaces = {"make_bench_model"};
    r.force = force;
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
