// The inference weight storages (ops/qlinear.h): quantization error per element, and the one linear
// kernel per storage (GEMV for few rows, dequantized tiles + SGEMM for many) against an fp64
// reference computed from the stored values, decoded here independently from the documented format.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/bf16.h"
#include "core/rng.h"
#include "ops/qlinear.h"
#include "test_util.h"

using namespace dsmoe;
using ops::WeightMat;
using ops::WType;

namespace {

struct Stored {
  std::vector<uint8_t> data;
  std::vector<uint16_t> scales;
  WeightMat mat;
};

Stored quantize(WType t, const std::vector<float>& w, int64_t rows, int64_t cols) {
  Stored s;
  s.data.resize((size_t)(rows * WeightMat::row_bytes_of(t, cols)));
  const int64_t nb = (cols + 31) / 32;
  s.scales.resize((size_t)(rows * nb));
  ops::quantize_rows(t, w.data(), rows, cols, s.data.data(), s.scales.data());
  s.mat = WeightMat{t, rows, cols, s.data.data(), WeightMat::has_scales(t) ? s.scales.data() : nullptr};
  return s;
}

// Element (r, c) of the stored matrix, decoded from the format documented in ops/qlinear.h (not
// through the code under test), in double.
double decode(const Stored& s, int64_t r, int64_t c) {
  const WeightMat& m = s.mat;
  const int64_t nb = (m.cols + 31) / 32;
  switch (m.type) {
    case WType::F32: {
      float f;
      std::memcpy(&f, s.data.data() + 4 * (r * m.cols + c), 4);
      return f;
    }
    case WType::BF16: {
      uint16_t h;
      std::memcpy(&h, s.data.data() + 2 * (r * m.cols + c), 2);
      uint32_t u = (uint32_t)h << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case WType::Q8: return (double)(int8_t)s.data[r * m.cols + c] * bf16_to_f32(s.scales[r * nb + c / 32]);
    case WType::Q4: {
      const int64_t b = c / 32, j = c % 32;
      const uint8_t byte = s.data[r * nb * 16 + b * 16 + (j % 16)];
      const int q = (j < 16 ? byte & 15 : byte >> 4) - 8;
      return (double)q * bf16_to_f32(s.scales[r * nb + b]);
    }
  }
  return 0;
}

// Rows of very different magnitudes (each block gets its own scale), an all-zero block and a block
// of tiny values (an f16 scale would underflow there; bf16 has fp32's range).
std::vector<float> test_matrix(Rng& rng, int64_t rows, int64_t cols) {
  std::vector<float> w((size_t)(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    const double mag = std::pow(10.0, (double)(r % 7) - 3);
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] = (float)(mag * rng.normal());
  }
  if (rows > 2 && cols >= 32) {
    for (int64_t c = 0; c < 32; ++c) w[1 * cols + c] = 0.0f;
    for (int64_t c = 0; c < 32; ++c) w[2 * cols + c] = (float)(1e-30 * rng.normal());
  }
  return w;
}

TEST(QLinear, QuantizationErrorIsAtMostHalfAScale) {
  Rng rng(test::test_seed());
  for (int64_t cols : {2048, 80}) {  // 80: a short last block of 16
    const int64_t rows = 21, nb = (cols + 31) / 32;
    const auto w = test_matrix(rng, rows, cols);
    for (WType t : {WType::BF16, WType::Q8, WType::Q4}) {
      const Stored s = quantize(t, w, rows, cols);
      const int qmax = t == WType::Q8 ? 127 : 7;
      int64_t bad = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t b = 0; b < nb; ++b) {
          double amax = 0;
          for (int64_t c = b * 32; c < std::min(cols, b * 32 + 32); ++c) amax = std::max(amax, std::fabs((double)w[r * cols + c]));
          const double d = t == WType::BF16 ? 0 : bf16_to_f32(s.scales[r * nb + b]);
          if (t != WType::BF16) {
            // d is absmax / qmax rounded to nearest bf16 (8 significant bits, unit roundoff 2^-8).
            EXPECT_NEAR(d, amax / qmax, amax / qmax * std::ldexp(1.0, -8) + 1e-45) << "scale of row " << r << " block " << b;
          }
          for (int64_t c = b * 32; c < std::min(cols, b * 32 + 32); ++c) {
            const double x = w[r * cols + c], err = std::fabs(decode(s, r, c) - x);
            // q = round(x / d) exactly (the quantizer divides in double, and |x/d| <= qmax / (1 - 2^-8) =
            // qmax * 256/255 < qmax + 1/2 needs no clamping), so |x - q d| <= d / 2. bf16: round to
            // nearest with 8 significant bits, |err| <= 2^-8 |x|.
            const double bound = t == WType::BF16 ? std::ldexp(std::fabs(x), -8) : d / 2;
            if (err > bound) {
              if (bad++ < 5) ADD_FAILURE() << ops::wtype_name(t) << " cols " << cols << " (" << r << ", " << c << "): x " << x
                                           << " stored " << decode(s, r, c) << " error " << err << " > bound " << bound;
            }
          }
        }
      EXPECT_EQ(bad, 0) << ops::wtype_name(t) << " cols " << cols;
      // dequantize_rows (the embedding lookup and the prefill tiles) decodes exactly the same values.
      std::vector<float> deq((size_t)(rows * cols));
      ops::dequantize_rows(deq.data(), s.mat, 0, rows);
      for (int64_t i = 0; i < rows * cols; ++i)
        ASSERT_EQ((double)deq[i], decode(s, i / cols, i % cols)) << ops::wtype_name(t) << " element " << i;
    }
  }
}

TEST(QLinear, KernelsMatchFp64ReferenceOfTheStoredWeights) {
  Rng rng(test::test_seed() + 1);
  struct Shape {
    int64_t rows, cols;
  };
  // 2048: the 16B model's hidden size; 80 and 40: short last blocks (scalar tail); 300 rows: several
  // prefill tiles and an uneven split of rows over the threads.
  for (Shape sh : {Shape{300, 2048}, Shape{37, 80}, Shape{9, 40}}) {
    const int64_t R = sh.rows, K = sh.cols;
    std::vector<float> w((size_t)(R * K));
    for (auto& e : w) e = (float)(0.05 * rng.normal());
    for (WType t : {WType::F32, WType::BF16, WType::Q8, WType::Q4}) {
      const Stored s = quantize(t, w, R, K);
      std::vector<double> wd((size_t)(R * K));
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < K; ++c) wd[r * K + c] = decode(s, r, c);
      // n <= kGemvMaxRows: GEMV (1..4 activation rows per pass, and a remainder); more: tiles + SGEMM.
      for (int64_t n : {1, 2, 3, 4, 5, 8, 9, 33}) {
        std::vector<float> x((size_t)(n * K)), y((size_t)(n * R), NAN);
        for (auto& e : x) e = (float)rng.normal();
        ops::qlinear_forward(y.data(), x.data(), s.mat, n);
        int64_t bad = 0;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t r = 0; r < R; ++r) {
            double ref = 0, mag = 0;
            for (int64_t c = 0; c < K; ++c) {
              ref += (double)x[i * K + c] * wd[r * K + c];
              mag += std::fabs((double)x[i * K + c] * wd[r * K + c]);
            }
            // fp32 accumulation of K products in any order (and one scaling per block): the classic
            // bound |error| <= (K + 2) u sum|x w|, u = 2^-24; independent of the kernel's summation order.
            const double tol = (double)(K + 2) * std::ldexp(1.0, -24) * mag + 1e-30;
            const double err = std::fabs((double)y[i * R + r] - ref);
            if (!(err <= tol) && bad++ < 5)
              ADD_FAILURE() << ops::wtype_name(t) << " [" << R << "x" << K << "] n=" << n << " row " << i << " out " << r
                            << ": got " << y[i * R + r] << " want " << ref << " (error " << err << " > " << tol << ")";
          }
        EXPECT_EQ(bad, 0) << ops::wtype_name(t) << " [" << R << "x" << K << "] n=" << n;
      }
    }
  }
}

TEST(QLinear, SliceRowsAddressesOneExpert) {
  Rng rng(test::test_seed() + 2);
  const int64_t E = 4, rows = 6, K = 64;
  std::vector<float> w((size_t)(E * rows * K));
  for (auto& e : w) e = (float)rng.normal();
  for (WType t : {WType::BF16, WType::Q8, WType::Q4}) {
    const Stored s = quantize(t, w, E * rows, K);
    for (int64_t e = 0; e < E; ++e) {
      std::vector<float> a((size_t)(rows * K)), b((size_t)(rows * K));
      ops::dequantize_rows(a.data(), s.mat.slice_rows(e * rows, rows), 0, rows);
      ops::dequantize_rows(b.data(), s.mat, e * rows, rows);
      EXPECT_EQ(a, b) << ops::wtype_name(t) << " expert " << e;
    }
  }
}

}  // namespace
