#include "infer/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>


namespace dsmoe {

int32_t sample_token(const float* logits, int64_t V, const SamplingOptions& o, Rng& rng) {
  if (o.temperature <= 0) return (int32_t)(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = o.top_k > 0 ? std::min<int64_t>(o.top_k, V) : V;
  std::vector<double> p(keep);
  const double mx = logits[idx[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += p[i] = std::exp(((double)logits[idx[i]] - mx) / o.temperature);
  if (o.top_p < 1.0) {  // smallest prefix whose mass reaches top_p
    double c = 0;
    for (int64_t i = 0; i < keep; ++i) {
      c += p[i] / sum;
      if (c >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
    sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += p[i];
  }
  double u = rng.uniform() * sum;
  for (int64_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u < 0) return idx[i];
  }
  return idx[keep - 1];
}

LogSoftmax log_softmax(const float* logits, int64_t V) {
  LogSoftmax r;
  r.max = logits[0];
  for (int64_t j = 1; j < V; ++j) r.max = std::max(r.max, (double)logits[j]);
  double sum = 0;
  for (int64_t j = 0; j < V; ++j) sum += std::exp((double)logits[j] - r.max);
  r.log_sum = std::log(sum);
  return r;
}

std::vector<int32_t> top_tokens(const float* logits, int64_t V, int64_t k) {
  k = std::min(k, V);
  std::vector<int32_t> idx(V);
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  idx.resize(k);
  return idx;
}

}  // namespace dsmoe
