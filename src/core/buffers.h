// Reusable activation buffers: resize only when the shape changes, so steady-state training does
// not allocate.
#pragma once
#include <cstddef>
#include <vector>

namespace dsmoe {

template <typename T>
inline void fit(std::vector<T>& v, size_t n) {
  if (v.size() != n) v.resize(n);
}

template <typename T>
inline void zero(std::vector<T>& v, size_t n) {
  v.assign(n, T(0));
}

}  // namespace dsmoe
