// The collectives of dsmoe's parallel training, timed through the Communicator interface the trainer
// uses (dist/mpi_communicator.h), to give `dsmoe scaling` its intra-node latency and bandwidth:
//   mpirun -np 2 build/comm_bench [--max-mb 64] [--reps 20]
// For each message size (floats a rank sends to each peer): the all-to-allv time (median over reps),
// and the ring all-reduce of the same total; then the latency (smallest size) and bandwidth (largest
// size: bytes a rank sends to others / time) as `dsmoe scaling` takes them. Rank 0 prints.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dist/mpi_communicator.h"

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
double time_median(dsmoe::Communicator& world, int reps, F&& op) {
  std::vector<double> t;
  op();  // warm-up: buffers registered, pages touched
  for (int r = 0; r < reps; ++r) {
    world.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    op();
    const auto t1 = std::chrono::steady_clock::now();
    // The collective ends when its slowest rank ends: the max over ranks, as the step waits for it.
    double dt = std::chrono::duration<double>(t1 - t0).count();
    world.all_reduce_sum(&dt, 1);
    t.push_back(dt);  // a sum over ranks, divided below
  }
  return median(t) / world.size();
}

}  // namespace

int main(int argc, char** argv) {
  double max_mb = 64;
  int reps = 20;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--max-mb")) max_mb = std::atof(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--reps")) reps = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: mpirun -np P comm_bench [--max-mb MB] [--reps N]\n");
      return 2;
    }
  }
  if (!(max_mb > 0 && max_mb <= 4096) || reps < 1 || reps > 10000) {
    std::fprintf(stderr, "comm_bench: --max-mb in (0, 4096], --reps in [1, 10000]\n");
    return 2;
  }
  auto world = dsmoe::world_communicator();
  const int P = world->size(), me = world->rank();
  if (me == 0)
    std::printf("comm_bench: %d ranks, median of %d, times are the mean over ranks of each rank's wall time\n"
                "| floats per peer | bytes a rank sends to others | all-to-allv s | GB/s | all-reduce s (same total) |\n"
                "|---|---|---|---|---|\n",
                P, reps);
  double latency = 0, bandwidth = 0;
  const int64_t max_floats = (int64_t)(max_mb * 1e6 / 4 / std::max(P, 1));
  for (int64_t n = 1; n <= max_floats; n *= 8) {
    std::vector<float> send((size_t)(n * P), 1.0f), recv((size_t)(n * P));
    std::vector<int64_t> counts((size_t)P, n);
    const double a2a = time_median(*world, reps, [&] { world->all_to_allv(send.data(), counts.data(), recv.data(), counts.data()); });
    const double ar = time_median(*world, reps, [&] { world->all_reduce_sum(send.data(), n * P); });
    const double bytes = 4.0 * (double)n * (double)(P - 1);
    if (n == 1) latency = a2a;
    bandwidth = bytes / a2a;
    if (me == 0)
      std::printf("| %lld | %.0f | %.3g | %.3g | %.3g |\n", (long long)n, bytes, a2a, bytes / a2a / 1e9, ar);
  }
  if (me == 0)
    std::printf("\nlatency (1 float per peer) %.2f us, bandwidth (largest size) %.2f GB/s: "
                "dsmoe scaling --intra-latency-us %.2f --intra-gbs %.2f\n",
                latency * 1e6, bandwidth / 1e9, latency * 1e6 / std::max(P - 1, 1), bandwidth / 1e9);
  return 0;
}
