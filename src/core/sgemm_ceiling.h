// The machine's SGEMM rate, measured on the spot: the ceiling against which training reports its
// model FLOP utilisation (MFU), as nanoGPT and llm.c do against a GPU's peak. OpenBLAS's own
// threading on a square product, with the threads OpenMP would use now (bench/bench_ceiling.cpp's
// Ceiling_Sgemm measures the same at 2048^3).
#pragma once
#include <cstdint>

namespace dsmoe {

// FLOP/s of C = A B^T at n x n x n, best of repeats lasting at least min_seconds in all.
double measure_sgemm_flops(int64_t n = 1024, double min_seconds = 0.1);

}  // namespace dsmoe
