// The benchmark model: deepseek-moe-16b's expert shapes (hidden 2048, 16 heads of 128, 2 shared +
// 64 routed experts of width 1408, top-6, first layer dense with width 10944), 4 layers, with
// random weights of the right format (bench_infer.cpp's decode and prefill; make_bench_model.cpp's
// folder for the server benchmark).
#pragma once
#include <cstdint>

#include "infer/infer_weights.h"
#include "model/config.h"

namespace dsmoe::bench {

ModelConfig bench_config(int64_t vocab_size = 32000);

// Random bytes of the storage's format (not quantized from fp32: that would take longer than the
// measurement, and the kernels' speed does not depend on the values): norms 1, routers small
// normal (the routing spread of trained models), matrices small values.
void fill_random(InferenceWeights& w, uint64_t seed);

}  // namespace dsmoe::bench
