#include "ops/router.h"

#include "core/vmath.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"

namespace dsmoe::ops {

void softmax_forward(float* probs, const float* logits, int64_t n, int64_t E) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* x = logits + t * E;
    float* p = probs + t * E;
    const float mx = vmax(x, E);
    vexp(p, x, mx, E);
    float sum = 0.0f;
    for (int64_t e = 0; e < E; ++e) sum += p[e];
    float inv = 1.0f / sum;
    for (int64_t e = 0; e < E; ++e) p[e] *= inv;
  }
}

double routing_entropy_sum(const float* probs, int64_t n, int64_t E) {
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> part((size_t)blocks, 0.0);
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < blocks; ++b) {
    double h = 0;
    const int64_t end = std::min(n, (b + 1) * kBlock);
    for (int64_t t = b * kBlock; t < end; ++t) {
      const float* p = probs + t * E;
      for (int64_t e = 0; e < E; ++e)
        if (p[e] > 0) h -= (double)p[e] * std::log((double)p[e]);
    }
    part[(size_t)b] = h;
  }
  double sum = 0;
  for (double h : part) sum += h;
  return sum;
}

void softmax_backward(float* dlogits, const float* dprobs, const float* probs, int64_t n, int64_t E) {
  if (!dlogits) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* dp = dprobs + t * E;
    const float* p = probs + t * E;
    float* dl = dlogits + t * E;
    float dot = 0.0f;
    for (int64_t e = 0; e < E; ++e) dot += dp[e] * p[e];
    for (int64_t e = 0; e < E; ++e) dl[e] += p[e] * (dp[e] - dot);
  }
}

namespace {

// Inserts (v, id) into the sorted best `end` (tv, ti hold cnt entries). Order: larger value first,
// equal values by the lower id; ids arrive in increasing order, so a newcomer goes after every kept
// value >= its own. (A partial_sort of E ids cost ~2% of a small model's step.)
inline void insert_sorted(float* tv, int32_t* ti, int64_t& cnt, int64_t end, float v, int32_t id) {
  if (cnt == end && !(v > tv[end - 1])) return;
  int64_t j = cnt < end ? cnt++ : end - 1;
  for (; j > 0 && tv[j - 1] < v; --j) {
    tv[j] = tv[j - 1];
    ti[j] = ti[j - 1];
  }
  tv[j] = v;
  ti[j] = id;
}

}  // namespace

void topk_forward(int32_t* ids, float* vals, const float* probs, int64_t n, int64_t E, int64_t k, int64_t skip,
                  int64_t n_group, int64_t topk_group) {
  DSMOE_ASSERT(n_group >= 1 && E % n_group == 0 && topk_group >= 1 && topk_group <= n_group,
               "{} experts in {} groups, {} kept", E, n_group, topk_group);
  const int64_t per_group = E / n_group, eligible = topk_group * per_group;
  DSMOE_ASSERT(k >= 1 && skip >= 0 && skip + k <= eligible,
               "top_k {} after skipping {} must fit in the {} experts of {} kept groups", k, skip, eligible, topk_group);
  const int64_t end = skip + k;  // ranks [0, skip) are excluded, [skip, end) returned
#pragma omp parallel
  {
    std::vector<float> tv((size_t)end), gv((size_t)topk_group);
    std::vector<int32_t> ti((size_t)end), gi((size_t)topk_group);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n; ++t) {
      const float* p = probs + t * E;
      int64_t cnt = 0;
      if (n_group == 1) {
        for (int64_t e = 0; e < E; ++e) insert_sorted(tv.data(), ti.data(), cnt, end, p[e], (int32_t)e);
      } else {
        int64_t gcnt = 0;
        for (int64_t g = 0; g < n_group; ++g)
          insert_sorted(gv.data(), gi.data(), gcnt, topk_group, vmax(p + g * per_group, per_group), (int32_t)g);
        // The kept groups in increasing id order, so experts still arrive in id order.
        std::sort(gi.begin(), gi.end());
        for (int64_t q = 0; q < topk_group; ++q)
          for (int64_t e = gi[(size_t)q] * per_group; e < (gi[(size_t)q] + 1) * per_group; ++e)
            insert_sorted(tv.data(), ti.data(), cnt, end, p[e], (int32_t)e);
      }
      for (int64_t j = 0; j < k; ++j) {
        ids[t * k + j] = ti[(size_t)(skip + j)];
        vals[t * k + j] = tv[(size_t)(skip + j)];
      }
    }
  }
}

void topk_backward(float* dprobs, const float* dvals, const int32_t* ids, int64_t n, int64_t E, int64_t k) {
  if (!dprobs) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t)
    for (int64_t j = 0; j < k; ++j) dprobs[t * E + ids[t * k + j]] += dvals[t * k + j];
}

void gate_norm_forward(float* gates, const float* vals, int64_t n, int64_t k, bool normalize) {
  if (!normalize) {
    std::copy(vals, vals + n * k, gates);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* v = vals + t * k;
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += v[j];
    float den = sum + 1e-20f;
    for (int64_t j = 0; j < k; ++j) gates[t * k + j] = v[j] / den;
  }
}

// g_j = v_j / S, S = sum v + 1e-20:  dv_j = dg_j / S - sum_i dg_i v_i / S^2
void gate_norm_backward(float* dvals, const float* dgates, const float* vals, int64_t n, int64_t k, bool normalize) {
  if (!dvals) return;
  if (!normalize) {
    for (int64_t i = 0; i < n * k; ++i) dvals[i] += dgates[i];
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* v = vals + t * k;
    const float* dg = dgates + t * k;
    float sum = 0.0f;
    for (int64_t j = 0; j < k; ++j) sum += v[j];
    float den = sum + 1e-20f;
    float dot = 0.0f;
    for (int64_t j = 0; j < k; ++j) dot += dg[j] * v[j];
    float c = dot / den;
    for (int64_t j = 0; j < k; ++j) dvals[t * k + j] += (dg[j] - c) / den;
  }
}

int32_t hash_expert(int32_t token_id, int64_t E) {
  uint32_t h = (uint32_t)token_id;
  h ^= h >> 16;
  h *= 0x7feb352dU;
  h ^= h >> 15;
  h *= 0x846ca68bU;
  h ^= h >> 16;
  return (int32_t)(h % (uint64_t)E);
}

void hash_route(int32_t* ids, float* gates, const int32_t* token_ids, int64_t n, int64_t E) {
  DSMOE_ASSERT(E >= 1, "hash routing needs at least one expert, got {}", E);
  for (int64_t t = 0; t < n; ++t) {
    ids[t] = hash_expert(token_ids[t], E);
    gates[t] = 1.0f;
  }
}

}  // namespace dsmoe::ops
