// OpenBLAS kernel selection. OpenBLAS picks its kernels when the library loads, from
// $OPENBLAS_CORETYPE or its own CPU detection — and the detection of Debian 12's OpenBLAS (0.3.21)
// does not know newer CPUs (AMD Zen 5, recent Xeons such as this project's machines) and falls back
// to the SSE "Prescott" kernels: ~5x slower SGEMM than the AVX-512 ones (measured 21 vs 110
// GFLOP/s on one core). Since the choice happens before main(),
// a process that finds the variable unset sets it from the CPU's features and re-executes itself
// once. An explicit user setting is always respected.
#pragma once

namespace dsmoe {

// The kernel set this CPU should use: "Cooperlake" (AVX-512 + BF16), "SkylakeX" (AVX-512),
// "Haswell" (AVX2), or "" to leave OpenBLAS's detection alone.
const char* preferred_blas_coretype();

// Call first in main(). Returns normally when nothing needed changing (or re-exec failed);
// otherwise the process is replaced by itself with OPENBLAS_CORETYPE set.
void ensure_blas_kernels(char** argv);

// The kernel set OpenBLAS is actually using, e.g. "Cooperlake".
const char* blas_kernel_name();

}  // namespace dsmoe
