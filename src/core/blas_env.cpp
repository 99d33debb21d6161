#include "core/blas_env.h"

#include <cblas.h>
#include <unistd.h>

#include <cstdlib>

namespace dsmoe {

const char* preferred_blas_coretype() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return "";
}

void ensure_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the user's choice (or already re-executed)
  const char* core = preferred_blas_coretype();
  if (!*core) return;
  setenv("OPENBLAS_CORETYPE", core, 1);
  execv("/proc/self/exe", argv);  // only returns on failure: carry on with OpenBLAS's own choice
}

const char* blas_kernel_name() { return openblas_get_corename(); }

}  // namespace dsmoe
