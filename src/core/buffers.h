// Reusable activation buffers: resize only when the shape changes, so steady-state training does
// not allocate.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsmoe {

template <typename T>
inline void fit(std::vector<T>& v, size_t n) {
  if (v.size() != n) v.resize(n);
}

// At least n elements, never shrinks: inference scratch, whose size alternates between prefill and
// decode steps and must not be reallocated at every call.
template <typename T>
inline void grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
}

// p[0, n) = 0 with all threads: the gradient buffers zeroed before every backward are tens of MB, and
// a serial memset left the other cores idle (memory bandwidth scales with the cores here).
template <typename T>
inline void zero_span(T* p, size_t n) {
  constexpr size_t kChunk = size_t(1) << 16;  // elements per task; below one chunk, no parallel region
  const int64_t chunks = (int64_t)((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static) if (chunks > 1)
  for (int64_t c = 0; c < chunks; ++c) {
    const size_t b = (size_t)c * kChunk;
    std::fill(p + b, p + std::min(n, b + kChunk), T(0));
  }
}

// v = n zeros (resized if needed).
template <typename T>
inline void zero(std::vector<T>& v, size_t n) {
  fit(v, n);
  zero_span(v.data(), n);
}

}  // namespace dsmoe
