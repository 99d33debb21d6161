// The collective operations dsmoe's parallel training needs, behind one interface, so that the
// training and MoE code never name a runtime: SingleProcessCommunicator (one process, the default),
// MpiCommunicator (dist/mpi_communicator.h, Open MPI) and later an NCCL one for GPUs implement it.
// Every call is collective over the communicator's ranks (all must call it, in the same order);
// counts and displacements are in elements, not bytes.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dsmoe {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // In place: data[i] = sum over ranks of data[i]. The order of the sum is the runtime's, the same on
  // every rank (so all ranks hold the same bits afterwards).
  virtual void all_reduce_sum(float* data, int64_t n) = 0;
  virtual void all_reduce_sum(double* data, int64_t n) = 0;
  virtual void all_reduce_sum(int64_t* data, int64_t n) = 0;
  // send [size * per_rank]: block r goes to rank r; recv [size * per_rank]: block r came from rank r.
  virtual void all_to_all(const int64_t* send, int64_t* recv, int64_t per_rank) = 0;
  // Variable blocks: send_counts[r] floats from send + sum_{q<r} send_counts[q] go to rank r;
  // recv_counts[r] floats from rank r land at recv + sum_{q<r} recv_counts[q]. recv_counts must be
  // what the senders send (exchange them first with all_to_all).
  virtual void all_to_allv(const float* send, const int64_t* send_counts, float* recv,
                           const int64_t* recv_counts) = 0;
  // root's `bytes` bytes at data into every rank's data.
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // recv [size * n] = every rank's n int64 values, in rank order.
  virtual void all_gather(const int64_t* send, int64_t* recv, int64_t n) = 0;
  virtual void barrier() = 0;
  // Non-blocking sum (the same arithmetic as all_reduce_sum of the same n, so the same bits): starts
  // it and returns; data must stay untouched until wait_started. Every rank starts the same sums in
  // the same order (they are collectives like the rest).
  virtual void start_all_reduce_sum(float* data, int64_t n) = 0;
  // Lets the started collectives advance: MPI moves their data only inside its calls.
  virtual void progress() = 0;
  // Returns when every collective started on this communicator has completed.
  virtual void wait_started() = 0;
  // The ranks that pass the same `color` form a new communicator, ordered by `key` (then by rank).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
};

// The one-process communicator: size 1, every collective is a copy or nothing.
class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void all_reduce_sum(float*, int64_t) override {}
  void all_reduce_sum(double*, int64_t) override {}
  void all_reduce_sum(int64_t*, int64_t) override {}
  void all_to_all(const int64_t* send, int64_t* recv, int64_t per_rank) override;
  void all_to_allv(const float* send, const int64_t* send_counts, float* recv, const int64_t* recv_counts) override;
  void broadcast(void*, int64_t, int) override {}
  void all_gather(const int64_t* send, int64_t* recv, int64_t n) override;
  void barrier() override {}
  void start_all_reduce_sum(float*, int64_t) override {}
  void progress() override {}
  void wait_started() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<SingleProcessCommunicator>(); }
};

// Every rank passes its own `text` (e.g. its config as JSON); throws dsmoe::Error on every rank, naming
// `what`, the first rank whose text differs from rank 0's and the first differing line, unless all agree.
// Ranks that would train different models or data must not start (they would deadlock or diverge).
void check_same_on_all_ranks(Communicator& comm, const std::string& text, const std::string& what);

// How long one collective may wait for the other ranks before this rank gives up (dsmoe::Error naming
// the call, the rank and the limit; the CLI then ends the job): a rank that died or hangs must not
// hang the others forever. Seconds; 0 = wait forever. Process-wide, for every communicator
// (`--comm-timeout`); the default is kDefaultCollectiveTimeout.
inline constexpr double kDefaultCollectiveTimeout = 300;
void set_collective_timeout(double seconds);
double collective_timeout();

// Wall time this process has spent inside collectives of every communicator, and how many it ran
// (the communication share of a step is a difference of two readings). Implementations add to it.
// `waiting` is the part of `seconds` spent waiting for the other ranks to arrive (load imbalance, not
// data moving): with set_split_collective_waiting(true) every blocking collective first passes a
// barrier, whose time is waiting; barriers count as waiting whatever the setting; seconds - waiting
// is then the transfer (the collective proper, entered by all ranks within a barrier's latency).
struct CollectiveClock {
  double seconds = 0, waiting = 0;
  int64_t calls = 0;
};
CollectiveClock collective_clock();
void add_collective_time(double seconds, double waiting = 0);
// Process-wide, off by default (a barrier's latency per collective); every rank must set the same.
void set_split_collective_waiting(bool on);
bool split_collective_waiting();

}  // namespace dsmoe
