// Checked integer arithmetic for sizes formed from input (config keys, safetensors shapes, cache
// capacities). A wrapped product would otherwise be taken for a real size: a tensor of shape [2^62]
// "needing" 0 bytes, a model of 2^62 x 4 parameters counted as a negative number. Every overflow is a
// dsmoe::Error naming what was being computed and both operands.
#pragma once
#include <concepts>
#include <cstdint>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace dsmoe {

template <std::integral T>
T checked_mul(T a, T b, std::string_view what) {
  T r;
  if (__builtin_mul_overflow(a, b, &r)) fail("{}: {} * {} overflows a {}-bit integer", what, a, b, 8 * sizeof(T));
  return r;
}

template <std::integral T>
T checked_add(T a, T b, std::string_view what) {
  T r;
  if (__builtin_add_overflow(a, b, &r)) fail("{}: {} + {} overflows a {}-bit integer", what, a, b, 8 * sizeof(T));
  return r;
}

// Product of a shape's dimensions (1 for a scalar); a negative dimension is an error too, since a
// negative size has no meaning and would turn into a huge one as size_t.
inline int64_t checked_numel(const std::vector<int64_t>& shape, std::string_view what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail("{}: negative dimension {}", what, d);
    n = checked_mul(n, d, what);
  }
  return n;
}

}  // namespace dsmoe
