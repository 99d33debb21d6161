#include "core/sgemm_ceiling.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace dsmoe {

double measure_sgemm_flops(int64_t n, double min_seconds) {
  using Clock = std::chrono::steady_clock;
  std::vector<float> a((size_t)(n * n), 0.5f), b((size_t)(n * n), 0.25f), c((size_t)(n * n));
  auto once = [&] {
    const auto t0 = Clock::now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)n, (int)n, 1.0f, a.data(), (int)n, b.data(),
                (int)n, 0.0f, c.data(), (int)n);
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  once();  // warm-up: page faults, OpenBLAS's thread start
  double best = 1e30, total = 0;
  int reps = 0;
  while (reps < 3 || total < min_seconds) {
    const double t = once();
    best = std::min(best, t);
    total += t;
    if (++reps >= 50) break;
  }
  return 2.0 * (double)n * (double)n * (double)n / best;
}

}  // namespace dsmoe
