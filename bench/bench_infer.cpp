// Inference speed on a model with deepseek-moe-16b's expert shapes (hidden 2048, 16 heads of 128,
// 2 shared + 64 routed experts of width 1408, top-6, first layer dense with width 10944), 4 layers,
// vocab 32000, random weights, in bf16 / q8 / q4 storage:
//   Infer_Decode/<type>   batch-1 decode steps after a 16-token prompt: tokens/s, and the weight
//                         bytes one token reads (attention + dense FFN + router + shared experts +
//                         the 6 routed experts it picked + lm_head + norms + its embedding row) and
//                         the bandwidth that implies; compare with Ceiling_ReadBandwidth of the same
//                         run (bench/infer_bench.sh prints the ratio).
//   Infer_Prefill/<type>/<compute>  one prompt of 128 tokens: tokens/s, per --compute mode.
//   Infer_Product/<type>/<compute>/<rows>  one routed expert's gate_up product ([2816, 2048]) of a few
//                         to a few hundred activation rows, weights from DRAM: where int8 stops being
//                         faster than bf16 (the row limit of --compute mixed, ops/qlinear.h).
//   Infer_DecodeLongContext/kv:<0|1>  q8 decode steps at 2048 to 2303 tokens of context with an
//                         f32 (0) or bf16 (1) KV cache (--kv-cache): tokens/s and the cache bytes
//                         a step reads (keys and values of every position, every layer).
// Weights are random bytes of the right format (not quantized from fp32: that would take longer
// than the measurement and the kernels' speed does not depend on the values).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"
#include "core/huge_buffer.h"
#include "core/rng.h"
#include "infer/engine.h"
#include "infer/infer_weights.h"
#include "ops/bf16_gemm.h"
#include "ops/int8_gemm.h"
#include "bench_model.h"

namespace {

using namespace dsmoe;
using bench::bench_config;
using bench::fill_random;
using ops::WType;

// One weight set at a time (bf16 is 3.9 GB).
InferenceWeights& weights(WType t) {
  static std::unique_ptr<InferenceWeights> w;
  if (!w || w->type() != t) {
    w.reset();
    w = std::make_unique<InferenceWeights>(InferenceWeights::allocate(bench_config(), t));
    fill_random(*w, 1);
  }
  return *w;
}

// Weight bytes read by one token whose MoE layers picked `k` routed experts each.
double bytes_per_token(const InferenceWeights& w) {
  const ModelConfig& m = w.config();
  double b = (double)w.embed().row_bytes() + (double)w.lm_head().bytes() + m.hidden_size * 4.0;  // + final norm
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    const auto& L = w.layer(l);
    b += L.attn.q.bytes() + L.attn.k.bytes() + L.attn.v.bytes() + L.attn.o.bytes() + 2.0 * m.hidden_size * 4;
    if (!m.is_moe_layer(l)) {
      b += L.mlp_gate_up.bytes() + L.mlp_down.bytes();
      continue;
    }
    const double per_expert = (L.moe.experts_gate_up.bytes() + L.moe.experts_down.bytes()) / (double)m.n_routed_experts;
    b += m.n_routed_experts * m.hidden_size * 4.0 + L.moe.shared_gate_up.bytes() + L.moe.shared_down.bytes() +
         m.num_experts_per_tok * per_expert;
  }
  return b;
}

const WType kTypes[] = {WType::BF16, WType::Q8, WType::Q4};

void Infer_Decode(benchmark::State& state) {
  const WType t = kTypes[state.range(0)];
  state.SetLabel(ops::wtype_name(t));
  const InferenceWeights& w = weights(t);
  InferenceEngine eng(w);
  const int64_t prompt = 16, max_steps = 512;
  KvCache cache(w.config(), prompt + max_steps + 8);
  std::vector<int32_t> toks(prompt);
  for (int64_t i = 0; i < prompt; ++i) toks[i] = (int32_t)(i * 977 % 32000);
  std::vector<float> logits;
  Segment seg{&cache, toks.data(), prompt};
  eng.step(std::span<const Segment>(&seg, 1), false, logits);
  int32_t next = 7;
  for (auto _ : state) {
    if (cache.len + 1 >= cache.capacity) {  // keep the context short and the same for every type
      state.PauseTiming();
      cache.clear();
      seg = Segment{&cache, toks.data(), prompt};
      eng.step(std::span<const Segment>(&seg, 1), false, logits);
      state.ResumeTiming();
    }
    seg = Segment{&cache, &next, 1};
    eng.step(std::span<const Segment>(&seg, 1), false, logits);
    next = (int32_t)((next * 31 + 11) % 32000);
  }
  const double bpt = bytes_per_token(w);
  state.counters["tokens/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["MB/token"] = bpt / 1e6;
  state.counters["GB/s"] = benchmark::Counter(bpt, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(Infer_Decode)->DenseRange(0, 2)->ArgName("type")->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);

// type 0..2: the storages above; compute 0: fp32 activations (the exact path), 1: bf16 (activations
// rounded to bf16, oneDNN: ops/bf16_gemm.h), 2: int8 (activations quantized per 32, AVX512-VNNI:
// ops/int8_gemm.h; q8 / q4 only), 3: mixed (int8 for products of few rows, bf16 for many). All combinations run in one invocation, so they share its load.
const ops::Compute kComputes[] = {ops::Compute::F32, ops::Compute::BF16, ops::Compute::INT8, ops::Compute::MIXED};

void Infer_Prefill(benchmark::State& state) {
  const WType t = kTypes[state.range(0)];
  const ops::Compute c = kComputes[state.range(1)];
  const bool int8 = c == ops::Compute::INT8 || c == ops::Compute::MIXED;
  if (int8 && t == WType::BF16) return state.SkipWithError("compute int8 / mixed needs q8 or q4 weights");
  if (c != ops::Compute::F32 && !ops::bf16_gemm_available()) return state.SkipWithError("no AVX512_BF16 on this CPU");
  if (int8 && !ops::int8_gemm_available()) return state.SkipWithError("no AVX512-VNNI on this CPU");
  state.SetLabel(std::string(ops::wtype_name(t)) + ", compute " + ops::compute_name(c));
  InferenceWeights& w = weights(t);
  w.set_compute(c);
  InferenceEngine eng(w);
  const int64_t n = 128;
  KvCache cache(w.config(), n);
  std::vector<int32_t> toks(n);
  for (int64_t i = 0; i < n; ++i) toks[i] = (int32_t)(i * 7919 % 32000);
  std::vector<float> logits;
  for (auto _ : state) {
    cache.clear();
    Segment seg{&cache, toks.data(), n};
    eng.step(std::span<const Segment>(&seg, 1), false, logits);
  }
  w.set_compute(ops::Compute::F32);
  state.counters["tokens/s"] = benchmark::Counter((double)n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(Infer_Prefill)
    ->ArgsProduct({{0, 1, 2}, {0, 1, 2, 3}})
    ->ArgNames({"type", "compute"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(3.0);

// The cache is filled with random keys and values of the right scale instead of a 2048-token
// prefill (minutes on this model, and attention's speed does not depend on the values); the
// context cycles over 2048..2303 so every step attends to about the same number of positions.
void Infer_DecodeLongContext(benchmark::State& state) {
  const KvType kv = state.range(0) == 1 ? KvType::BF16 : KvType::F32;
  state.SetLabel(std::string("q8, kv ") + kv_type_name(kv));
  const InferenceWeights& w = weights(WType::Q8);
  InferenceEngine eng(w, kv);
  const int64_t context = 2048, steps = 256;
  KvCache cache = eng.new_cache(context + steps + 8);
  Rng rng(3);
  const size_t n = (size_t)(cache.layers * cache.capacity * cache.kv_dim);
  for (size_t i = 0; i < n; ++i) {
    const float kv_value = (float)rng.normal();
    if (kv == KvType::BF16) cache.kh[i] = f32_to_bf16(kv_value), cache.vh[i] = f32_to_bf16(kv_value * 0.5f);
    else cache.k[i] = kv_value, cache.v[i] = kv_value * 0.5f;
  }
  cache.len = context;
  std::vector<float> logits;
  int32_t next = 7;
  for (auto _ : state) {
    if (cache.len + 1 >= cache.capacity) cache.len = context;
    Segment seg{&cache, &next, 1};
    eng.step(std::span<const Segment>(&seg, 1), false, logits);
    next = (int32_t)((next * 31 + 11) % 32000);
  }
  state.counters["tokens/s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["cache MB/token"] = (double)KvCache::bytes_per_token(w.config(), kv) * (context + steps / 2) / 1e6;
}
BENCHMARK(Infer_DecodeLongContext)->DenseRange(0, 1)->ArgName("kv")->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(3.0);

// [R, K] matrices of storage t (constant bytes, scales 0.01: the kernels' speed does not depend on
// the values) filling 1 GiB, at least 2, so that cycling over them reads the weights from DRAM and
// not from the last-level cache (260 MiB on the machine of bench/RESULTS.md), as a decode step or a
// prefill's experts do.
struct MatrixRing {
  std::vector<HugeBuffer> data, scales;
  std::vector<ops::WeightMat> mats;
  MatrixRing(WType t, int64_t R, int64_t K, ops::Compute c = ops::Compute::F32) {
    const int64_t rb = ops::WeightMat::row_bytes_of(t, K), blocks = (K + 31) / 32;
    const int64_t n = std::max<int64_t>(2, (int64_t(1) << 30) / (R * rb));
    for (int64_t i = 0; i < n; ++i) {
      data.emplace_back((size_t)(R * rb));
      std::memset(data.back().data(), 0x11, data.back().size());
      scales.emplace_back((size_t)(R * blocks * 2));
      uint16_t* sc = (uint16_t*)scales.back().data();
      std::fill(sc, sc + R * blocks, f32_to_bf16(0.01f));
      mats.push_back({t, R, K, data.back().data(), ops::WeightMat::has_scales(t) ? sc : nullptr, c});
    }
  }
};

// One [2816, 2048] q8 or q4 matrix (a routed expert's gate_up at the 16B's shapes) times `rows`
// activation rows, cycling over a MatrixRing, so the weights come from DRAM as each expert's do in a
// prefill or a batched decode step. compute 1: bf16, 2: int8, 3: mixed.
void Infer_Product(benchmark::State& state) {
  const WType t = kTypes[state.range(0)];
  const ops::Compute c = kComputes[state.range(1)];
  const int64_t n = state.range(2), R = 2816, K = 2048;
  if (c != ops::Compute::F32 && !ops::bf16_gemm_available()) return state.SkipWithError("no AVX512_BF16 on this CPU");
  if (c != ops::Compute::F32 && c != ops::Compute::BF16 && !ops::int8_gemm_available())
    return state.SkipWithError("no AVX512-VNNI on this CPU");
  state.SetLabel(std::string(ops::wtype_name(t)) + ", compute " + ops::compute_name(c));
  const MatrixRing ring(t, R, K, c);
  Rng rng(7);
  std::vector<float> x((size_t)(n * K)), y((size_t)(n * R));
  for (float& v : x) v = (float)rng.normal();
  int64_t i = 0;
  for (auto _ : state) {
    ops::qlinear_forward(y.data(), x.data(), ring.mats[i], n);
    i = (i + 1) % (int64_t)ring.mats.size();
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * n * R * K, benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}
BENCHMARK(Infer_Product)
    ->ArgsProduct({{1, 2}, {1, 2, 3}, {16, 32, 48, 64, 96, 128, 256}})
    ->ArgNames({"type", "compute", "rows"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

namespace {

// One projection at a time, [16384, 2048] (64 MiB in bf16), times one activation row, cycling over a
// MatrixRing: the GEMV's streaming rate per storage from DRAM, without the rest of a decode step.
void Infer_Gemv(benchmark::State& state) {
  const WType t = kTypes[state.range(0)];
  state.SetLabel(ops::wtype_name(t));
  const int64_t R = 16384, K = 2048;
  const MatrixRing ring(t, R, K);
  std::vector<float> x(K, 0.5f), y(R);
  int64_t i = 0;
  for (auto _ : state) {
    ops::qlinear_forward(y.data(), x.data(), ring.mats[i], 1);
    i = (i + 1) % (int64_t)ring.mats.size();
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["GB/s"] = benchmark::Counter((double)ring.mats[0].bytes(), benchmark::Counter::kIsIterationInvariantRate,
                                              benchmark::Counter::kIs1000);
}
BENCHMARK(Infer_Gemv)->DenseRange(0, 2)->ArgName("type")->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
