#include "ops/balance_loss.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace dsmoe::ops {

namespace {

constexpr int64_t kChunk = 256;  // fixed token chunk: the reduction order never depends on thread count

void check_devices(int64_t n_experts, int64_t D) {
  DSMOE_ASSERT(D >= 1 && n_experts % D == 0, "{} routed experts cannot be split into {} device groups", n_experts,
               D);
}

}  // namespace

// Tokens are summed per fixed chunk in parallel, then the chunk sums are added in order.
std::vector<double> balance_prob_means(const float* probs, const BalanceShape& s) {
  const int64_t G = s.groups(), T = s.group_tokens(), N = s.n_experts;
  const int64_t chunks_per_group = (T + kChunk - 1) / kChunk;
  const int64_t C = G * chunks_per_group;
  std::vector<double> part((size_t)(C * N), 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const int64_t g = c / chunks_per_group, ci = c % chunks_per_group;
    const int64_t t0 = g * T + ci * kChunk, t1 = g * T + std::min(T, (ci + 1) * kChunk);
    double* acc = part.data() + c * N;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t i = 0; i < N; ++i) acc[i] += probs[t * N + i];
  }
  std::vector<double> P((size_t)(G * N), 0.0);
  for (int64_t g = 0; g < G; ++g) {
    double* p = P.data() + g * N;
    for (int64_t ci = 0; ci < chunks_per_group; ++ci) {
      const double* a = part.data() + (g * chunks_per_group + ci) * N;
      for (int64_t i = 0; i < N; ++i) p[i] += a[i];
    }
    for (int64_t i = 0; i < N; ++i) p[i] /= (double)T;
  }
  return P;
}

void balance_frequencies_from_counts(float* f, const int64_t* counts, int64_t N, int64_t K, int64_t tokens) {
  const double scale = (double)N / ((double)K * (double)tokens);
  for (int64_t i = 0; i < N; ++i) f[i] = (float)(scale * (double)counts[i]);
}

void balance_frequencies(float* f, const int32_t* ids, const BalanceShape& s) {
  const int64_t G = s.groups(), T = s.group_tokens(), N = s.n_experts, K = s.top_k;
  const double scale = (double)N / ((double)K * (double)T);
  // Validate before the parallel region (an exception must not escape an OpenMP region).
  for (int64_t q = 0; q < G * T * K; ++q)
    DSMOE_ASSERT(ids[q] >= 0 && ids[q] < N, "expert id {} of slot {} out of range [0, {})", ids[q], q, N);
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < G; ++g) {
    std::vector<int64_t> cnt((size_t)N, 0);
    const int32_t* id = ids + g * T * K;
    for (int64_t q = 0; q < T * K; ++q) ++cnt[(size_t)id[q]];
    for (int64_t i = 0; i < N; ++i) f[g * N + i] = (float)(scale * (double)cnt[(size_t)i]);
  }
}

float expert_balance_loss(const float* f, const double* P, int64_t G, int64_t N, float alpha) {
  double loss = 0.0;
  for (int64_t g = 0; g < G; ++g) {
    double l = 0.0;
    for (int64_t i = 0; i < N; ++i) l += (double)f[g * N + i] * P[(size_t)(g * N + i)];
    loss += l;
  }
  return (float)((double)alpha * loss / (double)G);
}

float expert_balance_forward(const float* f, const float* probs, const BalanceShape& s, float alpha) {
  return expert_balance_loss(f, balance_prob_means(probs, s).data(), s.groups(), s.n_experts, alpha);
}

void expert_balance_backward(float* dprobs, const float* f, const BalanceShape& s, float alpha, float dloss) {
  if (!dprobs) return;
  const int64_t G = s.groups(), T = s.group_tokens(), N = s.n_experts;
  const double c = (double)dloss * (double)alpha / ((double)T * (double)G);
  std::vector<float> coef((size_t)(G * N));
  for (int64_t i = 0; i < G * N; ++i) coef[(size_t)i] = (float)(c * (double)f[i]);
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < G * T; ++t) {
    const float* cg = coef.data() + (t / T) * N;
    float* d = dprobs + t * N;
    for (int64_t i = 0; i < N; ++i) d[i] += cg[i];
  }
}

float device_balance_loss(const float* f, const double* P, int64_t G, int64_t N, int64_t n_groups_D,
                          float alpha) {
  check_devices(N, n_groups_D);
  const int64_t D = n_groups_D, per = N / D;
  double loss = 0.0;
  for (int64_t g = 0; g < G; ++g) {
    double l = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      double fd = 0.0, pd = 0.0;
      for (int64_t i = d * per; i < (d + 1) * per; ++i) {
        fd += (double)f[g * N + i];
        pd += P[(size_t)(g * N + i)];
      }
      l += (fd / (double)per) * pd;
    }
    loss += l;
  }
  return (float)((double)alpha * loss / (double)G);
}

float device_balance_forward(const float* f, const float* probs, const BalanceShape& s, int64_t n_groups_D,
                             float alpha) {
  return device_balance_loss(f, balance_prob_means(probs, s).data(), s.groups(), s.n_experts, n_groups_D, alpha);
}

namespace {

// dprobs[t, i] += c * per_device[g(t), d(i)]: the gradient of a loss sum_d w_d P'_d (P'_d a sum of the
// group's mean probs) for per-device weights w [groups, D].
void add_per_device(float* dprobs, const std::vector<double>& per_device, const BalanceShape& s, int64_t D,
                    double c) {
  const int64_t G = s.groups(), T = s.group_tokens(), N = s.n_experts, per = N / D;
  std::vector<float> coef((size_t)(G * N));
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) {
      const float v = (float)(c * per_device[(size_t)(g * D + d)]);
      for (int64_t i = d * per; i < (d + 1) * per; ++i) coef[(size_t)(g * N + i)] = v;
    }
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < G * T; ++t) {
    const float* cg = coef.data() + (t / T) * N;
    float* d = dprobs + t * N;
    for (int64_t i = 0; i < N; ++i) d[i] += cg[i];
  }
}

}  // namespace

void device_balance_backward(float* dprobs, const float* f, const BalanceShape& s, int64_t n_groups_D, float alpha,
                             float dloss) {
  if (!dprobs) return;
  check_devices(s.n_experts, n_groups_D);
  const int64_t G = s.groups(), T = s.group_tokens(), N = s.n_experts, D = n_groups_D, per = N / D;
  std::vector<double> fd((size_t)(G * D), 0.0);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t i = d * per; i < (d + 1) * per; ++i) fd[(size_t)(g * D + d)] += (double)f[g * N + i];
      fd[(size_t)(g * D + d)] /= (double)per;
    }
  add_per_device(dprobs, fd, s, D, (double)dloss * (double)alpha / ((double)T * (double)G));
}

void comm_sent_counts(int64_t* sent, const int32_t* ids, const BalanceShape& s, int64_t n_groups_D) {
  check_devices(s.n_experts, n_groups_D);
  const int64_t G = s.groups(), T = s.group_tokens(), N = s.n_experts, K = s.top_k, D = n_groups_D, per = N / D;
  std::fill(sent, sent + G * D, 0);
  std::vector<uint8_t> hit((size_t)D);
  for (int64_t t = 0; t < G * T; ++t) {
    std::fill(hit.begin(), hit.end(), 0);
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = ids[t * K + j];
      DSMOE_ASSERT(e >= 0 && e < N, "expert id {} of token {} out of range [0, {})", e, t, N);
      hit[(size_t)(e / per)] = 1;
    }
    for (int64_t d = 0; d < D; ++d) sent[(t / T) * D + d] += hit[(size_t)d];
  }
}

void comm_frequencies(float* f2, const int64_t* sent, int64_t G, int64_t D, int64_t M, int64_t tokens) {
  const double scale = (double)D / ((double)M * (double)tokens);
  for (int64_t i = 0; i < G * D; ++i) f2[i] = (float)(scale * (double)sent[i]);
}

float comm_balance_loss(const float* f2, const double* P, int64_t G, int64_t N, int64_t n_groups_D, float alpha) {
  check_devices(N, n_groups_D);
  const int64_t D = n_groups_D, per = N / D;
  double loss = 0.0;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) {
      double pd = 0.0;
      for (int64_t i = d * per; i < (d + 1) * per; ++i) pd += P[(size_t)(g * N + i)];
      loss += (double)f2[g * D + d] * pd;
    }
  return (float)((double)alpha * loss / (double)G);
}

void comm_balance_backward(float* dprobs, const float* f2, const BalanceShape& s, int64_t n_groups_D, float alpha,
                           float dloss) {
  if (!dprobs) return;
  check_devices(s.n_experts, n_groups_D);
  const int64_t G = s.groups(), T = s.group_tokens(), D = n_groups_D;
  const std::vector<double> w(f2, f2 + G * D);
  add_per_device(dprobs, w, s, D, (double)dloss * (double)alpha / ((double)T * (double)G));
}

}  // namespace dsmoe::ops
