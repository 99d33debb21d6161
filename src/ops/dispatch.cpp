#include "ops/dispatch.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"

namespace dsmoe::ops {

void build_dispatch(DispatchPlan& plan, const int32_t* ids, const uint8_t* keep, int64_t n, int64_t k, int64_t E) {
  const int64_t slots = n * k;
  plan.n_tokens = n;
  plan.top_k = k;
  plan.n_experts = E;
  plan.offsets.assign((size_t)E + 1, 0);
  // Count the kept slots of every expert.
  for (int64_t s = 0; s < slots; ++s) {
    if (keep && !keep[s]) continue;
    int32_t e = ids[s];
    DSMOE_ASSERT(e >= 0 && e < E, "expert id {} of slot {} out of range [0, {})", e, s, E);
    ++plan.offsets[(size_t)e + 1];
  }
  for (int64_t e = 0; e < E; ++e) plan.offsets[(size_t)e + 1] += plan.offsets[(size_t)e];
  const int64_t rows = plan.offsets[(size_t)E];
  plan.row_token.assign((size_t)rows, 0);
  plan.row_slot.assign((size_t)rows, 0);
  plan.slot_row.assign((size_t)slots, -1);
  // Stable scatter in slot (= token) order.
  std::vector<int64_t> cursor(plan.offsets.begin(), plan.offsets.end() - 1);
  for (int64_t s = 0; s < slots; ++s) {
    if (keep && !keep[s]) continue;
    int64_t r = cursor[(size_t)ids[s]]++;
    plan.row_token[(size_t)r] = (int32_t)(s / k);
    plan.row_slot[(size_t)r] = (int32_t)s;
    plan.slot_row[(size_t)s] = (int32_t)r;
  }
}

void capacity_keep_mask(uint8_t* keep, const int32_t* ids, const float* scores, int64_t n, int64_t k, int64_t E,
                        int64_t capacity) {
  const int64_t slots = n * k;
  std::memset(keep, 0, (size_t)slots);
  // Slots grouped by expert, in slot order (counting sort), then each group ranked by score.
  std::vector<int64_t> off((size_t)E + 1, 0);
  for (int64_t s = 0; s < slots; ++s) {
    DSMOE_ASSERT(ids[s] >= 0 && ids[s] < E, "expert id {} of slot {} out of range [0, {})", ids[s], s, E);
    ++off[(size_t)ids[s] + 1];
  }
  for (int64_t e = 0; e < E; ++e) off[(size_t)e + 1] += off[(size_t)e];
  std::vector<int64_t> order((size_t)slots), cur(off.begin(), off.end() - 1);
  for (int64_t s = 0; s < slots; ++s) order[(size_t)cur[(size_t)ids[s]]++] = s;
  const int64_t cap = std::max<int64_t>(capacity, 0);
#pragma omp parallel for schedule(static)
  for (int64_t e = 0; e < E; ++e) {
    auto b = order.begin() + off[(size_t)e], en = order.begin() + off[(size_t)e + 1];
    int64_t cnt = en - b;
    int64_t m = std::min(cnt, cap);
    // Highest score first; ties by the lower slot index, i.e. the lower token index first.
    std::partial_sort(b, b + m, en, [scores](int64_t a, int64_t c) {
      return scores[a] > scores[c] || (scores[a] == scores[c] && a < c);
    });
    for (auto it = b; it != b + m; ++it) keep[*it] = 1;
  }
}

void dispatch_gather(float* xs, const float* x, const DispatchPlan& p, int64_t dim) {
  const int64_t rows = p.rows();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(xs + r * dim, x + (int64_t)p.row_token[(size_t)r] * dim, sizeof(float) * (size_t)dim);
}

void dispatch_gather_backward(float* dx, const float* dxs, const DispatchPlan& p, int64_t dim) {
  if (!dx) return;
  const int64_t n = p.n_tokens, k = p.top_k;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    float* d = dx + t * dim;
    for (int64_t j = 0; j < k; ++j) {
      int32_t r = p.slot_row[(size_t)(t * k + j)];
      if (r < 0) continue;
      const float* g = dxs + (int64_t)r * dim;
      for (int64_t i = 0; i < dim; ++i) d[i] += g[i];
    }
  }
}

void combine_forward(float* y, const float* ys, const float* gates, const DispatchPlan& p, int64_t dim) {
  const int64_t n = p.n_tokens, k = p.top_k;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    float* o = y + t * dim;
    std::fill(o, o + dim, 0.0f);
    for (int64_t j = 0; j < k; ++j) {
      int32_t r = p.slot_row[(size_t)(t * k + j)];
      if (r < 0) continue;
      const float g = gates[t * k + j];
      const float* v = ys + (int64_t)r * dim;
      for (int64_t i = 0; i < dim; ++i) o[i] += g * v[i];
    }
  }
}

void combine_backward(float* dys, float* dgates, const float* dy, const float* ys, const float* gates,
                      const DispatchPlan& p, int64_t dim) {
  const int64_t n = p.n_tokens, k = p.top_k, rows = p.rows();
  if (dys) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float g = gates[p.row_slot[(size_t)r]];
      const float* d = dy + (int64_t)p.row_token[(size_t)r] * dim;
      float* o = dys + r * dim;
      for (int64_t i = 0; i < dim; ++i) o[i] += g * d[i];
    }
  }
  if (dgates) {
#pragma omp parallel for schedule(static)
    for (int64_t s = 0; s < n * k; ++s) {
      int32_t r = p.slot_row[(size_t)s];
      if (r < 0) continue;  // a dropped slot does not influence y: zero gradient
      const float* d = dy + (s / k) * dim;
      const float* v = ys + (int64_t)r * dim;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t i = 0; i < dim; ++i) acc += d[i] * v[i];
      dgates[s] += acc;
    }
  }
}

}  // namespace dsmoe::ops
