// main() of every test executable: picks the OpenBLAS kernels like the dsmoe CLI does (see
// core/blas_env.h), then runs GoogleTest.
#include <gtest/gtest.h>

#include "core/blas_env.h"

int main(int argc, char** argv) {
  dsmoe::ensure_blas_kernels(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
