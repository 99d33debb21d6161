#include "ops/bf16_gemm.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <omp.h>
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
  static const bool ok = __builtin_cpu_supports("avx512bf16") && std::getenv("DSMOE_NO_AVX512_BF16") == nullptr;
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

// oneDNN matmul primitives, one per shape, layout and (alpha, beta), kept per thread (creating one
// costs far more than a small product; MoE prefill and training see one shape per distinct expert
// row count).
struct OnednnMatmul {
  dnnl::matmul mm;
  dnnl::memory::desc a, b, c;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

using MatmulKey = std::array<int64_t, 10>;

std::atomic<int64_t> primitives_made{0};

// alpha as oneDNN's output scale, beta as its sum post-op (C = alpha A B + beta C).
dnnl::primitive_attr scale_and_sum(float alpha, float beta) {
  dnnl::primitive_attr attr;
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  return attr;
}


const OnednnMatmul& onednn_matmul(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, int64_t lda,
                                  int64_t ldb, float beta, int64_t ldc) {
  thread_local std::map<MatmulKey, OnednnMatmul> cache;
  uint32_t ab, bb;
  std::memcpy(&ab, &alpha, 4);
  std::memcpy(&bb, &beta, 4);
  const MatmulKey key{ta, tb, M, N, K, lda, ldb, ldc, (int64_t)ab, (int64_t)bb};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  if (cache.size() >= 4096) cache.clear();  // bounded: shapes come from prompt and expert row counts
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  OnednnMatmul m;
  // Strides express the transposes: op(A) [M, K] is A [M, K] (strides lda, 1) or A [K, M] read
  // transposed (strides 1, lda); likewise B.
  m.a = dnnl::memory::desc({M, K}, dt::bf16, ta ? dims{1, lda} : dims{lda, 1});
  m.b = dnnl::memory::desc({K, N}, dt::bf16, tb ? dims{1, ldb} : dims{ldb, 1});
  m.c = dnnl::memory::desc({M, N}, dt::f32, dims{ldc, 1});
  m.mm = dnnl::matmul(
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(m.a, m.b, m.c), scale_and_sum(alpha, beta), cpu_engine()));
  primitives_made.fetch_add(1, std::memory_order_relaxed);
  return cache.emplace(key, std::move(m)).first->second;
}

}  // namespace

int64_t bf16_gemm_primitives_made() { return primitives_made.load(std::memory_order_relaxed); }

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

bool bf16_gemm_on_amx() {
  return bf16_gemm_available() && std::string(bf16_gemm_implementation()).find("amx") != std::string::npos;
}

void bf16_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
               int64_t lda, const uint16_t* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  DSMOE_ASSERT(bf16_gemm_available(), "bf16_gemm called on a CPU without AVX512_BF16");
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {  // an empty sum: C = beta C (oneDNN refuses zero-sized reductions)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  try {
    const OnednnMatmul& m = onednn_matmul(trans_a, trans_b, M, N, K, alpha, lda, ldb, beta, ldc);
    thread_local dnnl::stream stream(cpu_engine());
    dnnl::memory a(m.a, cpu_engine(), const_cast<uint16_t*>(A)), b(m.b, cpu_engine(), const_cast<uint16_t*>(B)),
        c(m.c, cpu_engine(), C);
    m.mm.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    stream.wait();
  } catch (const dnnl::error& e) {
    fail("oneDNN bf16 matmul [{} x {}]{} x [{} x {}]{} failed: {}", trans_a ? K : M, trans_a ? M : K,
         trans_a ? "^T" : "", trans_b ? N : K, trans_b ? K : N, trans_b ? "^T" : "", e.what());
  }
}

// --- packed weights ---

namespace {

using dims = dnnl::memory::dims;
using dt = dnnl::memory::data_type;

// The layout oneDNN picks for B [K, N] of a bf16 matmul ("any"): asked of a primitive of 256 rows,
// the row count the kernel blocks by; the products of other row counts then take B in that layout
// (checked: a primitive that cannot is refused below and the product runs unpacked).
dnnl::memory::desc packed_desc(int64_t N, int64_t K) {
  const dnnl::memory::desc a({256, K}, dt::bf16, dims{K, 1});
  const dnnl::memory::desc b({K, N}, dt::bf16, dnnl::memory::format_tag::any);
  const dnnl::memory::desc c({256, N}, dt::f32, dims{N, 1});
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), cpu_engine()).weights_desc();
}

struct PackedMatmul {
  bool ok = false;  // oneDNN runs it with its brgemm kernel (else: refused, unpacked product)
  dnnl::matmul mm;
  dnnl::memory::desc a, c;
};

}  // namespace

#ifdef DSMOE_BF16_GEMM
// GCC 12's unpack intrinsics start from an undefined vector, which it then reports as maybe
// uninitialized wherever they are inlined (a false positive, fixed in GCC 13; core/gemm_kernel.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
// A full 32 x 64 block of B = W^T (below): 16 x 16 transposes of 32-bit words, rows n of W (16
// pairs each) becoming rows p of the block. Without this vector path the general loop packs it.
static void pack_block_transposed(uint32_t* out, const uint16_t* w, int64_t ldw, int64_t n0, int64_t k0) {
  for (int64_t nq = 0; nq < 64; nq += 16) {
    __m512i r[16], a[16], b[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(w + (n0 + nq + i) * ldw + k0);
    for (int i = 0; i < 16; i += 2) {
      a[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
      a[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    // b[4q + c], lane L: rows 4q..4q+3 of column 4L + c.
    for (int q = 0; q < 16; q += 4) {
      b[q] = _mm512_unpacklo_epi64(a[q], a[q + 2]);
      b[q + 1] = _mm512_unpackhi_epi64(a[q], a[q + 2]);
      b[q + 2] = _mm512_unpacklo_epi64(a[q + 1], a[q + 3]);
      b[q + 3] = _mm512_unpackhi_epi64(a[q + 1], a[q + 3]);
    }
    for (int c = 0; c < 4; ++c) {
      const __m512i d0 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0x44), d1 = _mm512_shuffle_i32x4(b[c], b[4 + c], 0xEE);
      const __m512i e0 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0x44),
                    e1 = _mm512_shuffle_i32x4(b[8 + c], b[12 + c], 0xEE);
      _mm512_storeu_si512(out + (0 + c) * 64 + nq, _mm512_shuffle_i32x4(d0, e0, 0x88));
      _mm512_storeu_si512(out + (4 + c) * 64 + nq, _mm512_shuffle_i32x4(d0, e0, 0xDD));
      _mm512_storeu_si512(out + (8 + c) * 64 + nq, _mm512_shuffle_i32x4(d1, e1, 0x88));
      _mm512_storeu_si512(out + (12 + c) * 64 + nq, _mm512_shuffle_i32x4(d1, e1, 0xDD));
    }
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

void pack_bf16_ba16a64b2a(uint16_t* dst, const uint16_t* w, int64_t ldw, bool trans_b, int64_t K, int64_t N) {
  const int64_t KB = (K + 31) / 32, NB = (N + 63) / 64;
  // One 32 x 64 block: 16 rows of 64 32-bit words, word (p, n) = the pair B[2p][n], B[2p + 1][n]
  // (low half first). A pair of B^T (trans_b) is two neighbours in a row of W: one 32-bit load.
  auto block = [&](int64_t nb, int64_t kb) {
    uint32_t* out = reinterpret_cast<uint32_t*>(dst + (nb * KB + kb) * 2048);
    const int64_t k0 = kb * 32, n0 = nb * 64;
    const bool full = k0 + 32 <= K && n0 + 64 <= N;
#ifdef DSMOE_BF16_GEMM
    if (full && trans_b) return pack_block_transposed(out, w, ldw, n0, k0);
#endif
    if (full && !trans_b) {
      for (int64_t p = 0; p < 16; ++p) {
        const uint16_t* lo = w + (k0 + 2 * p) * ldw + n0;
        const uint16_t* hi = lo + ldw;
        for (int64_t n = 0; n < 64; ++n) out[p * 64 + n] = (uint32_t)lo[n] | ((uint32_t)hi[n] << 16);
      }
      return;
    }
    {  // an edge block (what lies past K or N is zero, as oneDNN pads it), or B = W^T without AVX-512
      auto at = [&](int64_t k, int64_t n) -> uint32_t {
        if (k >= K || n >= N) return 0;
        return trans_b ? w[n * ldw + k] : w[k * ldw + n];
      };
      for (int64_t p = 0; p < 16; ++p)
        for (int64_t n = 0; n < 64; ++n)
          out[p * 64 + n] = at(k0 + 2 * p, n0 + n) | (at(k0 + 2 * p + 1, n0 + n) << 16);
    }
  };
  // A pass over memory: split over the threads when called outside a parallel region (the
  // attention and lm_head weights; the experts pack theirs on their own threads).
#pragma omp parallel for collapse(2) schedule(static) if (!omp_in_parallel() && KB * NB >= 64)
  for (int64_t nb = 0; nb < NB; ++nb)
    for (int64_t kb = 0; kb < KB; ++kb) block(nb, kb);
}

namespace {

// Whether oneDNN's pack layout is the one pack_bf16_ba16a64b2a writes.
bool is_ba16a64b2a(const dnnl::memory::desc& d, int64_t K, int64_t N) {
  return d == dnnl::memory::desc({K, N}, dt::bf16, dnnl::memory::format_tag::BA16a64b2a);
}

}  // namespace

struct Bf16WeightPacks::Impl {
  struct Pack {
    std::mutex mu;           // held while the pack is (re)made: one thread packs, the others wait
    uint64_t generation = 0;  // the Impl generation whose values it holds (0: none yet)
    dnnl::memory::desc desc;
    dnnl::memory mem;
  };
  mutable std::mutex mu;
  uint64_t generation = 1;
  std::map<std::array<int64_t, 5>, std::unique_ptr<Pack>> packs;  // (w, trans_b, N, K, ldw)
};

Bf16WeightPacks::Bf16WeightPacks() : impl_(new Impl) {}
Bf16WeightPacks::~Bf16WeightPacks() { delete impl_; }

void Bf16WeightPacks::clear() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->packs.clear();
}

void Bf16WeightPacks::invalidate() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  ++impl_->generation;
}

int64_t Bf16WeightPacks::packs() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  int64_t current = 0;
  for (const auto& [key, pack] : impl_->packs) {
    std::lock_guard<std::mutex> pack_lock(pack->mu);
    current += pack->generation == impl_->generation;
  }
  return current;
}

bool Bf16WeightPacks::gemm(bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const uint16_t* A,
                           int64_t lda, const uint16_t* w, int64_t ldw, float beta, float* C, int64_t ldc) {
  DSMOE_ASSERT(bf16_gemm_available(), "bf16 packed product on a CPU without AVX512_BF16");
  if (M <= 0 || N <= 0 || K <= 0) return false;
  try {
    const std::array<int64_t, 5> pack_key{(int64_t)(uintptr_t)w, trans_b, N, K, ldw};
    Impl::Pack* pack = nullptr;
    uint64_t generation = 0;
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      auto& slot = impl_->packs[pack_key];
      if (!slot) slot = std::make_unique<Impl::Pack>();
      pack = slot.get();
      generation = impl_->generation;
    }
    {
      // Each weight packs under its own lock (the experts of a layer pack theirs in parallel). A stale
      // pack is redone in place: its memory stays allocated across optimizer steps, since a fresh
      // allocation of every pack each step (gigabytes at the paper-2B shape) page-faulted at every
      // first touch.
      std::lock_guard<std::mutex> pack_lock(pack->mu);
      if (pack->generation != generation) {
        if (!pack->mem) {
          pack->desc = packed_desc(N, K);
          pack->mem = dnnl::memory(pack->desc, cpu_engine());
        }
        if (is_ba16a64b2a(pack->desc, K, N)) {
          // The layout of oneDNN's bf16 kernels on AVX512_BF16 and AMX, packed here: oneDNN's reorder
          // into it took a fifth of the AMX bf16 step's oneDNN time and runs at 1/1.5-1/2.1 of this
          // speed (bench/RESULTS.md "bf16 weight packs").
          pack_bf16_ba16a64b2a(static_cast<uint16_t*>(pack->mem.get_data_handle()), w, ldw, trans_b, K, N);
        } else {
          const dnnl::memory::desc plain({K, N}, dt::bf16, trans_b ? dims{1, ldw} : dims{ldw, 1});
          dnnl::memory src(plain, cpu_engine(), const_cast<uint16_t*>(w));
          thread_local dnnl::stream pack_stream(cpu_engine());
          dnnl::reorder(src, pack->mem).execute(pack_stream, src, pack->mem);
          pack_stream.wait();
        }
        pack->generation = generation;
      }
    }
    uint32_t ab, bb;
    std::memcpy(&ab, &alpha, 4);
    std::memcpy(&bb, &beta, 4);
    thread_local std::map<std::array<int64_t, 7>, PackedMatmul> cache;  // one layout per (N, K)
    const std::array<int64_t, 7> key{M, N, K, lda, ldc, (int64_t)ab, (int64_t)bb};
    auto it = cache.find(key);
    if (it == cache.end()) {
      if (cache.size() >= 4096) cache.clear();
      PackedMatmul m;
      m.a = dnnl::memory::desc({M, K}, dt::bf16, dims{lda, 1});
      m.c = dnnl::memory::desc({M, N}, dt::f32, dims{ldc, 1});
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(m.a, pack->desc, m.c), scale_and_sum(alpha, beta),
                                            cpu_engine());
      m.ok = std::string(pd.impl_info_str()).rfind("brg", 0) == 0;
      if (m.ok) {
        m.mm = dnnl::matmul(pd);
        primitives_made.fetch_add(1, std::memory_order_relaxed);
      }
      it = cache.emplace(key, std::move(m)).first;
    }
    if (!it->second.ok) return false;
    thread_local dnnl::stream stream(cpu_engine());
    dnnl::memory a(it->second.a, cpu_engine(), const_cast<uint16_t*>(A)), c(it->second.c, cpu_engine(), C);
    it->second.mm.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, pack->mem}, {DNNL_ARG_DST, c}});
    stream.wait();
    return true;
  } catch (const dnnl::error& e) {
    fail("oneDNN packed bf16 matmul [{} x {}] x [{} x {}]{} failed: {}", M, K, trans_b ? N : K, trans_b ? K : N,
         trans_b ? "^T" : "", e.what());
  }
}

void bf16_gemm(float* y, int64_t ldy, const uint16_t* xb, const uint16_t* w, int64_t n, int64_t R, int64_t K) {
  bf16_gemm(false, true, n, R, K, 1.0f, xb, K, w, K, 0.0f, y, ldy);
}

}  // namespace dsmoe::ops
