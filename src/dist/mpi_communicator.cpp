#include "dist/mpi_communicator.h"

#include <mpi.h>

#include <sched.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <vector>

#include "core/error.h"

namespace dsmoe {

namespace {

// MPI takes int counts and displacements: a count past INT_MAX is an error, not a silent wrap.
int as_int(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX) fail("MPI {}: {} elements is outside [0, {}] (MPI counts are int)", what, v, INT_MAX);
  return (int)v;
}

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("{} failed: {}", call, std::string(msg, (size_t)len));
}

// Initialised once, on first use; finalised when the process exits normally.
void ensure_mpi() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;
  int provided = 0;
  // Only the main thread calls MPI (OpenMP workers and the HTTP server's threads never do).
  check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  // Errors come back as codes (then dsmoe::Error naming the call) instead of MPI's default abort.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit([] {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  });
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(MPI_Comm c, bool owned) : comm_(c), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void all_reduce_sum(float* d, int64_t n) override { reduce(d, n, MPI_FLOAT); }
  void all_reduce_sum(double* d, int64_t n) override { reduce(d, n, MPI_DOUBLE); }
  void all_reduce_sum(int64_t* d, int64_t n) override { reduce(d, n, MPI_INT64_T); }
  void all_to_all(const int64_t* send, int64_t* recv, int64_t per_rank) override {
    const int c = as_int(per_rank, "all_to_all");
    run("MPI_Alltoall", [&](MPI_Request* req) {
      check(MPI_Ialltoall(send, c, MPI_INT64_T, recv, c, MPI_INT64_T, comm_, req), "MPI_Ialltoall");
    });
  }
  void all_to_allv(const float* send, const int64_t* send_counts, float* recv, const int64_t* recv_counts) override {
    std::vector<int> sc((size_t)size_), sd((size_t)size_), rc((size_t)size_), rd((size_t)size_);
    int64_t so = 0, ro = 0;
    for (int r = 0; r < size_; ++r) {
      sc[(size_t)r] = as_int(send_counts[r], "all_to_allv send count");
      rc[(size_t)r] = as_int(recv_counts[r], "all_to_allv receive count");
      sd[(size_t)r] = as_int(so, "all_to_allv send offset");
      rd[(size_t)r] = as_int(ro, "all_to_allv receive offset");
      so += send_counts[r];
      ro += recv_counts[r];
    }
    run("MPI_Alltoallv", [&](MPI_Request* req) {
      check(MPI_Ialltoallv(send, sc.data(), sd.data(), MPI_FLOAT, recv, rc.data(), rd.data(), MPI_FLOAT, comm_, req),
            "MPI_Ialltoallv");
    });
  }
  void broadcast(void* data, int64_t bytes, int root) override {
    const int c = as_int(bytes, "broadcast");
    run("MPI_Bcast", [&](MPI_Request* req) { check(MPI_Ibcast(data, c, MPI_BYTE, root, comm_, req), "MPI_Ibcast"); });
  }
  void all_gather(const int64_t* send, int64_t* recv, int64_t n) override {
    const int c = as_int(n, "all_gather");
    run("MPI_Allgather", [&](MPI_Request* req) {
      check(MPI_Iallgather(send, c, MPI_INT64_T, recv, c, MPI_INT64_T, comm_, req), "MPI_Iallgather");
    });
  }
  void barrier() override {
    const double t = barrier_wait();
    add_collective_time(t, t);
  }
  void start_all_reduce_sum(float* d, int64_t n) override {
    for (int64_t o = 0; o < n; o += kPiece) {
      pending_.emplace_back();
      check(MPI_Iallreduce(MPI_IN_PLACE, d + o, (int)std::min(kPiece, n - o), MPI_FLOAT, MPI_SUM, comm_,
                           &pending_.back()),
            "MPI_Iallreduce");
    }
  }
  void progress() override {
    if (pending_.empty()) return;
    int done = 0;
    check(MPI_Testall((int)pending_.size(), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Iallreduce");
    if (done) pending_.clear();
  }
  void wait_started() override {
    if (pending_.empty()) return;
    add_collective_time(poll(pending_, "MPI_Allreduce (started)"));
    pending_.clear();
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    MPI_Comm sub;
    check(MPI_Comm_split(comm_, color, key, &sub), "MPI_Comm_split");
    MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN);
    return std::make_unique<MpiCommunicator>(sub, true);
  }

 private:
  // Large buffers go in pieces: MPI's count is an int.
  static constexpr int64_t kPiece = int64_t(1) << 28;

  // Every collective is started non-blocking and polled here, so that a rank whose peers died or
  // hang gives up after collective_timeout() with an error instead of blocking forever (a blocking
  // MPI call cannot be interrupted). Polling yields the core (ranks may outnumber cores) and, once a
  // wait is long, sleeps between polls. Returns the seconds it took.
  double poll(std::vector<MPI_Request>& reqs, const char* call) {
    using clock = std::chrono::steady_clock;
    const auto t0 = clock::now();
    const double limit = collective_timeout();
    int done = 0;
    for (int64_t polls = 0;; ++polls) {
      check(MPI_Testall((int)reqs.size(), reqs.data(), &done, MPI_STATUSES_IGNORE), call);
      if (done) break;
      const double waited = std::chrono::duration<double>(clock::now() - t0).count();
      if (limit > 0 && waited > limit)
        fail("rank {} of {}: {} did not complete within {} s (--comm-timeout): another rank died, hangs, or is busy "
             "for longer than that (a long checkpoint save or evaluation needs a larger --comm-timeout)",
             rank_, size_, call, limit);
      if (waited > 0.01) {
        const timespec nap{0, 100000};  // 0.1 ms: at most 1% of a wait this long
        nanosleep(&nap, nullptr);
      } else if (polls > 64) {
        sched_yield();
      }
    }
    return std::chrono::duration<double>(clock::now() - t0).count();
  }
  double barrier_wait() {
    std::vector<MPI_Request> req(1);
    check(MPI_Ibarrier(comm_, &req[0]), "MPI_Ibarrier");
    return poll(req, "MPI_Barrier");
  }
  // One blocking collective: `start` starts it into the request; with split_collective_waiting() a
  // barrier first, whose time is the waiting for the last rank (CollectiveClock).
  template <class Start>
  void run(const char* call, Start&& start) {
    const double waiting = split_collective_waiting() && size_ > 1 ? barrier_wait() : 0;
    std::vector<MPI_Request> req(1);
    start(&req[0]);
    add_collective_time(waiting + poll(req, call), waiting);
  }
  void reduce(void* d, int64_t n, MPI_Datatype t) {
    int size = 0;
    MPI_Type_size(t, &size);
    for (int64_t o = 0; o < n; o += kPiece) {
      const int cnt = (int)std::min(kPiece, n - o);
      run("MPI_Allreduce", [&](MPI_Request* req) {
        check(MPI_Iallreduce(MPI_IN_PLACE, static_cast<char*>(d) + o * size, cnt, t, MPI_SUM, comm_, req),
              "MPI_Iallreduce");
      });
    }
  }
  std::vector<MPI_Request> pending_;  // started by start_all_reduce_sum
  MPI_Comm comm_;
  bool owned_;
  int rank_ = 0, size_ = 1;
};

}  // namespace

bool launched_by_mpi() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMIX_RANK") != nullptr;
}

std::unique_ptr<Communicator> world_communicator() {
  if (!launched_by_mpi()) return std::make_unique<SingleProcessCommunicator>();
  ensure_mpi();
  return std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false);
}

void abort_job_if_parallel(int code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace dsmoe
