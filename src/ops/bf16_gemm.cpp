#include "ops/bf16_gemm.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <map>
#include <string>
#include <oneapi/dnnl/dnnl.hpp>

#include "core/bf16.h"
#include "core/error.h"

// The rounding's vector path; the matmul itself is oneDNN's, which dispatches on the CPU at run time.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define DSMOE_BF16_GEMM 1
#endif

namespace dsmoe::ops {

bool bf16_gemm_available() {
#ifdef DSMOE_BF16_GEMM
  static const bool ok = __builtin_cpu_supports("avx512bf16");
  return ok;
#else
  return false;
#endif
}

void round_to_bf16(uint16_t* out, const float* x, int64_t count) {
  int64_t i = 0;
#ifdef DSMOE_BF16_GEMM
  if (bf16_gemm_available())
    for (; i + 32 <= count; i += 32) {
      // cvtne2ps: element j of the result is from the SECOND operand for j < 16.
      const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
      _mm512_storeu_si512(out + i, (__m512i)v);
    }
#endif
  for (; i < count; ++i) out[i] = round_to_bf16(x[i]);
}

namespace {

// oneDNN matmul primitives, one per shape, kept per thread (creating one costs far more than a
// small product; MoE prefill sees one shape per distinct expert row count).
struct OnednnMatmul {
  dnnl::matmul mm;
  dnnl::memory::desc a, b, c;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

const OnednnMatmul& onednn_matmul(int64_t n, int64_t R, int64_t K, int64_t ldy) {
  thread_local std::map<std::array<int64_t, 4>, OnednnMatmul> cache;
  const std::array<int64_t, 4> key{n, R, K, ldy};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 4096) cache.clear();  // bounded: shapes come from prompt and expert row counts
  using dt = dnnl::memory::data_type;
  OnednnMatmul m;
  m.a = dnnl::memory::desc({n, K}, dt::bf16, dnnl::memory::dims{K, 1});
  m.b = dnnl::memory::desc({K, R}, dt::bf16, dnnl::memory::dims{1, K});  // W [R, K] row-major is B^T
  m.c = dnnl::memory::desc({n, R}, dt::f32, dnnl::memory::dims{ldy, 1});
  m.mm = dnnl::matmul(dnnl::matmul::primitive_desc(dnnl::matmul::desc(m.a, m.b, m.c), cpu_engine()));
  return cache.emplace(key, std::move(m)).first->second;
}

}  // namespace

const char* bf16_gemm_implementation() {
  static const std::string impl = [] {
    if (!bf16_gemm_available()) return std::string("none (no AVX512_BF16)");
    using dt = dnnl::memory::data_type;
    const dnnl::memory::desc a({128, 2048}, dt::bf16, dnnl::memory::dims{2048, 1});
    const dnnl::memory::desc b({2048, 2048}, dt::bf16, dnnl::memory::dims{1, 2048});
    const dnnl::memory::desc c({128, 2048}, dt::f32, dnnl::memory::dims{2048, 1});
    return std::string("oneDNN ") + dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), cpu_engine()).impl_info_str();
  }();
  return impl.c_str();
}

void bf16_gemm(float* y, int64_t ldy, const uint16_t* xb, const uint16_t* w, int64_t n, int64_t R, int64_t K) {
  DSMOE_ASSERT(bf16_gemm_available(), "bf16_gemm called on a CPU without AVX512_BF16");
  if (n <= 0 || R <= 0) return;
  try {
    const OnednnMatmul& m = onednn_matmul(n, R, K, ldy);
    thread_local dnnl::stream stream(cpu_engine());
    dnnl::memory A(m.a, cpu_engine(), const_cast<uint16_t*>(xb)), B(m.b, cpu_engine(), const_cast<uint16_t*>(w)),
        C(m.c, cpu_engine(), y);
    m.mm.execute(stream, {{DNNL_ARG_SRC, A}, {DNNL_ARG_WEIGHTS, B}, {DNNL_ARG_DST, C}});
    stream.wait();
  } catch (const dnnl::error& e) {
    fail("oneDNN bf16 matmul [{} x {}] x [{} x {}]^T failed: {}", n, K, R, K, e.what());
  }
}

}  // namespace dsmoe::ops
