// Token embedding lookup and its scatter-add backward.
#include "ops/embedding.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

namespace dsmoe::ops {

void embedding_forward(float* out, const int32_t* ids, const float* table, int64_t n, int64_t dim) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i)
    std::memcpy(out + i * dim, table + (int64_t)ids[i] * dim, (size_t)dim * sizeof(float));
}

void embedding_backward(float* dtable, const float* dout, const int32_t* ids, int64_t n, int64_t dim) {
  if (!dtable || n == 0 || dim == 0) return;
  // Each thread owns a contiguous slice of the columns and walks every token in index order, so
  // rows with the same id are summed in index order (no races, and the result does not even depend
  // on the thread count). Slices are multiples of 16 floats (one cache line).
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t chunks = (dim + 15) / 16;
    const int64_t c0 = chunks * t / nt, c1 = chunks * (t + 1) / nt;
    const int64_t j0 = c0 * 16, j1 = std::min(dim, c1 * 16);
    if (j0 < j1) {
      for (int64_t i = 0; i < n; ++i) {
        float* dst = dtable + (int64_t)ids[i] * dim;
        const float* src = dout + i * dim;
#pragma omp simd
        for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
      }
    }
  }
}

}  // namespace dsmoe::ops
