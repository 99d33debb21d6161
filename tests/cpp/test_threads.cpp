// Results against the thread count, inside one process (omp_set_num_threads): at 1, 2 and 3 threads
// (3 oversubscribes a 2-core runner and splits unevenly) the GEMM split and a whole MoE model's
// forward and backward must be bit-identical when repeated at the same count, and agree across
// counts within the reduction-order tolerance:
//
//   Changing the thread count changes only the ORDER of fp32 sums (GEMM row/column bands and K
//   slices, per-expert scheduling, per-thread partial reductions), never which terms are summed.
//   Each order's result lies within the fp32 error bound of the exact value: for a dot product of K
//   terms, (K + 2) u sum|a_k b_k| for any order (the bound test_gemm checks against fp64), and for
//   the model kRel = 2e-5 of each tensor's scale (derived in test_model.cpp and checked there against
//   the fp64 oracle, on models of this size: sums of <= ~256 terms). Two orders therefore differ by at
//   most twice that (triangle inequality): that is the tolerance here. A thread-count-dependent bug
//   (a lost or doubled band, a K slice summed twice, an expert skipped by an uneven split) moves
//   results by O(1) of their scale, far outside it.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/gemm.h"
#include "core/rng.h"
#include "model/model.h"
#include "test_util.h"

using namespace dsmoe;

namespace {

constexpr int kThreads[] = {1, 2, 3};
constexpr double kU = 5.9604644775390625e-8;  // 2^-24
constexpr double kRel = 2e-5;                 // test_model.cpp's fp32 budget

// Runs f() with n OpenMP threads, restoring the previous count.
template <class F>
auto with_threads(int n, const F& f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(n);
  auto r = f();
  omp_set_num_threads(saved);
  return r;
}

bool bit_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(Threads, GemmSplitsAgreeAcrossThreadCounts) {
  Rng rng(test::test_seed() + 31);
  // Above the split threshold: row bands (M >= N), column bands, K slices (M N <= 2^16, K >= 8 max(M, N)),
  // band lengths that are not whole 16-row tiles and K not a multiple of 16.
  const int64_t shapes[][3] = {{1000, 300, 40}, {75, 1000, 40}, {128, 96, 4096}, {15, 128, 4001}, {200, 30, 2000}};
  for (const auto& s : shapes) {
    const int64_t M = s[0], N = s[1], K = s[2];
    std::vector<float> A((size_t)(M * K)), B((size_t)(K * N)), C0((size_t)(M * N));
    for (auto& x : A) x = (float)rng.normal();
    for (auto& x : B) x = (float)rng.normal();
    for (auto& x : C0) x = (float)rng.normal();
    const float alpha = 0.75f, beta = 1.0f;
    auto run = [&] {
      std::vector<float> C = C0;
      gemm(false, false, M, N, K, alpha, A.data(), K, B.data(), N, beta, C.data(), N);
      return C;
    };
    // Per element: 2 ((K + 2) u alpha sum|a b| + 2 u |beta c|).
    std::vector<double> tol((size_t)(M * N));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double mag = 0;
        for (int64_t k = 0; k < K; ++k) mag += std::fabs((double)A[i * K + k] * B[k * N + j]);
        tol[i * N + j] = 2 * ((double)(K + 2) * kU * alpha * mag + 2 * kU * std::fabs(beta * C0[i * N + j]));
      }
    const std::string shape = "[" + std::to_string(M) + "x" + std::to_string(N) + "x" + std::to_string(K) + "]";
    const std::vector<float> ref = with_threads(1, run);
    for (int n : kThreads) {
      const auto a = with_threads(n, run), b = with_threads(n, run);
      EXPECT_TRUE(bit_equal(a, b)) << shape << ": two runs at " << n << " threads differ";
      EXPECT_TRUE(test::all_close_each(shape + " at " + std::to_string(n) + " threads vs 1", a.data(), ref.data(),
                                       tol.data(), M * N, {M, N}));
    }
  }
}

struct ModelRun {
  double lm = 0, expert_aux = 0, device_aux = 0;
  std::vector<float> logits, grads;
};

TEST(Threads, ModelForwardBackwardAgreesAcrossThreadCounts) {
  // MoE with shared experts, 16 routed top-3, device groups (both aux losses live), a dense first
  // layer; 4 x 64 tokens so the lm_head and expert GEMMs are above the split threshold.
  ModelConfig m;
  m.vocab_size = 256;
  m.hidden_size = 32;
  m.intermediate_size = 64;
  m.moe_intermediate_size = 16;
  m.num_hidden_layers = 3;
  m.num_attention_heads = 4;
  m.num_key_value_heads = 2;
  m.n_shared_experts = 1;
  m.n_routed_experts = 16;
  m.num_experts_per_tok = 3;
  m.first_k_dense_replace = 1;
  m.n_device_groups = 4;
  m.aux_loss_alpha = 0.01;
  m.device_aux_alpha = 0.05;
  m.max_position_embeddings = 64;
  const int64_t B = 4, T = 64;
  Model model(m);
  Rng rng(test::test_seed() + 32);
  model.init_weights(rng, 0.1);
  const auto x = test::random_tokens(rng, B * T, m.vocab_size), y = test::random_tokens(rng, B * T, m.vocab_size);
  auto run = [&] {
    ModelRun r;
    ForwardResult f = model.forward(x.data(), y.data(), B, T, true);
    r.lm = f.lm_loss;
    r.expert_aux = f.expert_aux;
    r.device_aux = f.device_aux;
    r.logits.assign(model.logits(), model.logits() + B * T * m.vocab_size);
    model.zero_grads();
    model.backward(1.0f / (float)(B * T), true);
    r.grads = model.grads();
    return r;
  };
  auto max_abs = [](const float* v, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s = std::max(s, (double)std::fabs(v[i]));
    return s;
  };
  const ModelRun ref = with_threads(1, run);
  for (int n : kThreads) {
    const ModelRun a = with_threads(n, run), b = with_threads(n, run);
    const std::string at = " at " + std::to_string(n) + " threads";
    EXPECT_TRUE(bit_equal(a.logits, b.logits)) << "logits differ between two runs" << at;
    EXPECT_TRUE(bit_equal(a.grads, b.grads)) << "gradients differ between two runs" << at;
    EXPECT_EQ(std::memcmp(&a.lm, &b.lm, 8), 0) << "lm loss differs between two runs" << at;
    // Across counts: twice the fp32 budget (header). The losses are means of O(1) terms: 2 x 1e-5.
    EXPECT_NEAR(a.lm, ref.lm, 2e-5 * std::fabs(ref.lm)) << at;
    EXPECT_NEAR(a.expert_aux, ref.expert_aux, 2e-5 * std::fabs(ref.expert_aux) + 1e-9) << at;
    EXPECT_NEAR(a.device_aux, ref.device_aux, 2e-5 * std::fabs(ref.device_aux) + 1e-9) << at;
    const int64_t nl = (int64_t)ref.logits.size();
    EXPECT_TRUE(test::all_close("logits" + at + " vs 1", a.logits.data(), ref.logits.data(), nl, {B, T, m.vocab_size},
                                2 * kRel * max_abs(ref.logits.data(), nl), 2 * kRel));
    for (const auto& t : model.layout().hf_tensors()) {
      const float* g = ref.grads.data() + t.offset;
      EXPECT_TRUE(test::all_close("grad " + t.name + at + " vs 1", a.grads.data() + t.offset, g, t.numel, t.shape,
                                  2 * kRel * max_abs(g, t.numel) + 1e-12, 2 * kRel));
    }
  }
}

}  // namespace
