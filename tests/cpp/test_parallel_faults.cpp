// Faults of multi-process runs: ranks started differently refuse to start, naming the difference; a
// rank killed (SIGKILL) or stopped (SIGSTOP) in the middle of training ends the job non-zero with a
// message within a bounded time, and the last checkpoint still loads; the replica check names a
// tensor whose copies differ; metrics.jsonl's per-rank traffic and communication time are
// consistent.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "cli_runner.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/parallel_groups.h"
#include "model/params.h"
#include "test_util.h"
#include "train/replica_check.h"

namespace dsmoe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace test::cli;
using Clock = std::chrono::steady_clock;

std::vector<std::string> mpirun_prefix() {
  std::vector<std::string> p = {"/usr/bin/mpirun", "--allow-run-as-root", "--oversubscribe"};
  for (const std::string& o : mpirun_options()) p.push_back(o);
  return p;
}

struct FaultSetup {
  std::string data, config;
};

const FaultSetup& setup() {
  static FaultSetup s;
  if (!s.data.empty()) return s;
  const std::string dir = test::tmp_path("parallel_faults_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  s.data = make_dataset((fs::path(dir) / "data").string());
  s.config = write_config(dir, "config.json", json{{"training", {{"batch_size", 4}, {"seq_len", 16}}}});
  return s;
}

// Ranks started with different arguments (mpirun's MPMD form: one command per rank) refuse to
// start, every rank naming the first line of the config that differs and both values.
TEST(ParallelFaults, RanksWithDifferentConfigsRefuseToStart) {
  const FaultSetup& s = setup();
  const std::string run = scratch("differ");
  auto rank_cmd = [&](const std::string& steps) {
    std::vector<std::string> a = {"-np", "1", DSMOE_BINARY};
    for (const auto& x : train_args(s.config, s.data, run)) a.push_back(x);
    a.insert(a.end(), {"--steps", steps});
    return a;
  };
  std::vector<std::string> argv = mpirun_prefix();
  for (const auto& x : rank_cmd("4")) argv.push_back(x);
  argv.push_back(":");
  for (const auto& x : rank_cmd("5")) argv.push_back(x);
  const Proc p = run_program(argv, 120);
  EXPECT_FALSE(p.ok()) << p.describe();
  EXPECT_TRUE(contains(p.err, "the ranks disagree on config, layout, data and run folder: rank 1's differs from rank 0's"))
      << p.err;
  EXPECT_TRUE(contains(p.err, "rank 0 has '    \"steps\": 4,', rank 1 has '    \"steps\": 5,'")) << p.err;
  EXPECT_FALSE(fs::exists(fs::path(run) / "checkpoint.safetensors"));
}

// The same for inference: one rank given another --ctx.
TEST(ParallelFaults, InferenceRanksWithDifferentSettingsRefuse) {
  const FaultSetup& s = setup();
  const std::string run = scratch("model");
  ASSERT_TRUE(run_cli(train_args(s.config, s.data, run)).ok());
  const std::string ids = (fs::path(run) / "ids.jsonl").string();
  std::ofstream(ids) << "[1,2,3,4,5,6,7,8]\n";
  std::vector<std::string> argv = mpirun_prefix();
  for (const char* ctx : {"4", "8"}) {
    if (std::string(ctx) == "8") argv.push_back(":");
    for (const std::string& x : std::vector<std::string>{"-np", "1", DSMOE_BINARY, "score", "--model", run,
                                                         "--ids-jsonl", ids, "--ctx", ctx})
      argv.push_back(x);
  }
  const Proc p = run_program(argv, 120);
  EXPECT_FALSE(p.ok()) << p.describe();
  EXPECT_TRUE(contains(p.err, "the ranks disagree on model, settings and input")) << p.err;
  EXPECT_TRUE(contains(p.err, "rank 0 has 'ctx 4', rank 1 has 'ctx 8'")) << p.err;
}

// The parent of process `pid` (0 if it is gone).
pid_t parent_of(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const size_t close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 2));
  char state;
  pid_t ppid = 0;
  rest >> state >> ppid;
  return ppid;
}

// The ids of the `dsmoe` processes of an mpirun, by world rank (its descendants carrying
// OMPI_COMM_WORLD_RANK); waits up to 30 s for `ranks` of them.
std::map<int, pid_t> rank_pids(pid_t mpirun, int ranks) {
  std::map<int, pid_t> found;
  for (int tries = 0; tries < 300 && (int)found.size() < ranks; ++tries) {
    found.clear();
    for (const auto& e : fs::directory_iterator("/proc")) {
      const std::string name = e.path().filename().string();
      if (name.find_first_not_of("0123456789") != std::string::npos) continue;
      const pid_t pid = (pid_t)std::stoi(name);
      bool below = false;
      for (pid_t a = parent_of(pid); a > 1 && !below; a = parent_of(a)) below = a == mpirun;
      if (!below) continue;
      std::ifstream env(e.path() / "environ");
      std::string var;
      while (std::getline(env, var, '\0'))
        if (var.rfind("OMPI_COMM_WORLD_RANK=", 0) == 0) found[std::stoi(var.substr(21))] = pid;
    }
    if ((int)found.size() < ranks) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return found;
}

// Starts a long 2-process training run that checkpoints every 2 steps; returns once its first
// checkpoint and 3 metrics rows exist.
struct LongRun {
  std::string run, out, err, cmd;
  pid_t mpirun = -1;
};

LongRun start_long_run(const std::string& what, const std::vector<std::string>& extra) {
  const FaultSetup& s = setup();
  LongRun r;
  r.run = scratch(what);
  const std::string cfg = write_config(
      fs::path(r.run).parent_path().string(), what + "_config.json",
      json{{"training", {{"batch_size", 4}, {"seq_len", 16}, {"steps", 100000}, {"warmup_steps", 1},
                         {"checkpoint_interval", 2}}}});
  std::vector<std::string> argv = mpirun_prefix();
  argv.insert(argv.end(), {"-np", "2", DSMOE_BINARY});
  for (const auto& x : train_args(cfg, s.data, r.run)) argv.push_back(x);
  argv.insert(argv.end(), {"--ep", "2"});
  argv.insert(argv.end(), extra.begin(), extra.end());
  r.out = r.run + ".out";
  r.err = r.run + ".err";
  r.cmd = quote_args(argv);
  r.mpirun = spawn_program(argv, r.out, r.err);
  for (int i = 0; i < 1200; ++i) {
    if (fs::exists(fs::path(r.run) / "checkpoint.safetensors") && read_metrics(r.run).size() >= 3) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return r;
}

void expect_checkpoint_loads(const std::string& run) {
  const Proc e = run_cli({"eval", "--model", run, "--data", setup().data, "--batches", "1"});
  EXPECT_TRUE(e.ok()) << e.describe();
  EXPECT_TRUE(contains(e.out, "\"loss\"")) << e.out;
}

// True if `pid` is still rank `rank` of a dsmoe job (not a process that took over a freed id).
bool still_rank(pid_t pid, int rank) {
  std::ifstream env("/proc/" + std::to_string(pid) + "/environ");
  std::string var;
  while (std::getline(env, var, '\0'))
    if (var == "OMPI_COMM_WORLD_RANK=" + std::to_string(rank)) return true;
  return false;
}

// Sends `sig` to rank 1 of a long run once it has a checkpoint, then waits for mpirun (at most 120 s,
// then it is killed). `took`: seconds from the signal to mpirun's end.
struct Outcome {
  bool started = false;
  Proc p;
  double took = 0;
};
Outcome signal_rank_1(const LongRun& r, int sig) {
  Outcome o;
  const auto pids = rank_pids(r.mpirun, 2);
  if (!fs::exists(fs::path(r.run) / "checkpoint.safetensors") || pids.size() != 2) {
    ADD_FAILURE() << "no checkpoint after 2 minutes, or not 2 rank processes of mpirun " << r.mpirun;
    ::kill(r.mpirun, SIGTERM);  // the job this test started, which would otherwise train for a long time
    ADD_FAILURE() << finish(r.mpirun, r.cmd, r.out, r.err, 30).describe();
    return o;
  }
  o.started = true;
  const auto t0 = Clock::now();
  ::kill(pids.at(1), sig);
  o.p = finish(r.mpirun, r.cmd, r.out, r.err, 120);
  o.took = std::chrono::duration<double>(Clock::now() - t0).count();
  if (still_rank(pids.at(1), 1)) ::kill(pids.at(1), SIGKILL);  // a stopped rank mpirun left behind
  EXPECT_FALSE(o.p.ok()) << o.p.describe();
  EXPECT_FALSE(o.p.signaled) << "mpirun itself was killed after the 120 s limit: " << o.p.describe();
  EXPECT_LT(o.took, 60.0) << o.p.describe();
  return o;
}

// SIGKILL of rank 1 mid-training: Open MPI notices the lost process and ends the job; the bound is
// generous for a loaded 2-core machine (measured: about 2 s).
TEST(ParallelFaults, KilledRankEndsTheJobAndTheCheckpointLoads) {
  const LongRun r = start_long_run("killed", {});
  const Outcome o = signal_rank_1(r, SIGKILL);
  ASSERT_TRUE(o.started);
  EXPECT_TRUE(contains(o.p.err, "exited on signal 9")) << o.p.err;  // mpirun's own report
  std::printf("[ stats    ] the job ended %.2f s after rank 1 was killed\n", o.took);
  expect_checkpoint_loads(r.run);
}

// SIGSTOP of rank 1: it never dies, so only the other rank's collective timeout can end the job:
// within --comm-timeout (5 s) plus the time to abort (bounded here by 60 s in all).
TEST(ParallelFaults, HungRankTimesOutWithAMessage) {
  const LongRun r = start_long_run("hung", {"--comm-timeout", "5"});
  const Outcome o = signal_rank_1(r, SIGSTOP);
  ASSERT_TRUE(o.started);
  EXPECT_GE(o.took, 5.0) << o.p.describe();
  EXPECT_TRUE(contains(o.p.err, "rank 0 of 2:")) << o.p.err;
  EXPECT_TRUE(contains(o.p.err, "did not complete within 5 s (--comm-timeout)")) << o.p.err;
  std::printf("[ stats    ] the job ended %.2f s after rank 1 was stopped\n", o.took);
  expect_checkpoint_loads(r.run);
}

TEST(ParallelFaults, CommTimeoutIsRangeChecked) {
  const FaultSetup& s = setup();
  for (const char* bad : {"-1", "nan", "1e9"}) {
    auto a = train_args(s.config, s.data, scratch("timeout"));
    a.insert(a.end(), {"--comm-timeout", bad});
    const Proc p = run_cli(a);
    EXPECT_EQ(p.exit_code, 2) << p.describe();
    EXPECT_TRUE(contains(p.err, "--comm-timeout")) << p.err;
  }
}

// A stand-in for rank 0 of two ranks whose rank 1 holds the same values, except that element
// `differ` of every gathered block differs (a tensor whose copies drifted).
class MirrorOfTwo final : public Communicator {
 public:
  explicit MirrorOfTwo(int64_t differ) : differ_(differ) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void all_reduce_sum(float*, int64_t) override {}
  void all_reduce_sum(double*, int64_t) override {}
  void all_reduce_sum(int64_t*, int64_t) override {}
  void all_to_all(const int64_t*, int64_t*, int64_t) override {}
  void all_to_allv(const float*, const int64_t*, float*, const int64_t*) override {}
  void broadcast(void*, int64_t, int) override {}
  void all_gather(const int64_t* send, int64_t* recv, int64_t n) override {
    std::copy(send, send + n, recv);
    std::copy(send, send + n, recv + n);
    if (differ_ >= 0 && differ_ < n) recv[n + differ_] ^= 1;
  }
  void barrier() override {}
  void start_all_reduce_sum(float*, int64_t) override {}
  void progress() override {}
  void wait_started() override {}
  std::unique_ptr<Communicator> split(int, int) override { return std::make_unique<MirrorOfTwo>(differ_); }

 private:
  int64_t differ_;
};

TEST(ReplicaCheck, NamesTheTensorWhoseCopiesDiffer) {
  const Config cfg = load_config(setup().config);
  const ParamLayout layout(cfg.model);
  const std::vector<float> params((size_t)layout.total(), 0.5f);
  {
    MirrorOfTwo same(-1);
    ParallelGroups g = make_parallel_groups(same, 1);
    EXPECT_NO_THROW(check_replicas_identical(layout, params.data(), g, "parameters"));
  }
  MirrorOfTwo differ(3);  // the 4th replicated tensor in layout order
  ParallelGroups g = make_parallel_groups(differ, 1);
  std::string name;
  int64_t seen = 0;
  for (const auto& t : layout.tensors())
    if (!t.routed_experts && seen++ == 3) name = t.name;
  try {
    check_replicas_identical(layout, params.data(), g, "parameters");
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "the ranks' parameters have diverged: tensor '" + name +
                                       "' differs between rank 0 and rank 1 of the world"))
        << e.what();
  }
}

// metrics.jsonl of a 4-process run (expert-parallel 2 x data-parallel 2): per step and rank, the rows
// sent and received agree (sent by r to s = received by s from r), are zero across expert-parallel
// groups, sum to the routed assignments of the rank's tokens, give the all-to-all bytes, and the
// communication time lies inside the step time and its waiting inside it; the progress line shows
// the communication share and its waiting part.
TEST(ParallelMetrics, PerRankTrafficAndCommTimeAreConsistent) {
  const FaultSetup& s = setup();
  const std::string run = scratch("metrics");
  auto a = train_args(s.config, s.data, run);
  a.erase(std::find(a.begin(), a.end(), "--quiet"));
  a.insert(a.end(), {"--ep", "2"});
  const Proc p = run_mpi(4, a);
  ASSERT_TRUE(p.ok()) << p.describe();
  // the progress line's communication share, and the part of it spent waiting for the other ranks
  EXPECT_TRUE(contains(p.err, " | comm ") && contains(p.err, "% (wait ")) << p.err;
  const Config cfg = load_config(s.config);
  const ModelConfig& m = cfg.model;
  int64_t moe_layers = 0;
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) moe_layers += m.is_moe_layer(l);
  const int P = 4, E = 2;
  // Each rank's tokens per step (its slice of every micro-batch) times k routed experts per token
  // and MoE layer: every assignment is a row of a forward dispatch (dropless).
  const int64_t per_rank = cfg.train.batch_size / P * cfg.train.seq_len * cfg.train.grad_accum * m.num_experts_per_tok *
                           moe_layers * cfg.train.log_interval;
  const auto rows = read_metrics(run);
  ASSERT_EQ((int64_t)rows.size(), cfg.train.steps);
  for (const auto& row : rows) {
    const std::string at = "step " + std::to_string(row["step"].get<int64_t>());
    ASSERT_TRUE(row.contains("rows_sent") && row.contains("rows_received") && row.contains("comm_s") &&
                row.contains("step_s") && row.contains("expert_rows"))
        << at << ": " << row.dump();
    const auto sent = row["rows_sent"].get<std::vector<std::vector<int64_t>>>();
    const auto recv = row["rows_received"].get<std::vector<std::vector<int64_t>>>();
    const auto expert_rows = row["expert_rows"].get<std::vector<int64_t>>();
    ASSERT_EQ(sent.size(), (size_t)P);
    for (int r = 0; r < P; ++r) {
      int64_t total = 0;
      for (int q = 0; q < P; ++q) {
        EXPECT_EQ(sent[r][q], recv[q][r]) << at << ": rank " << r << " -> " << q;
        if (r / E != q / E) {
          EXPECT_EQ(sent[r][q], 0) << at << ": across groups, " << r << " -> " << q;
        }
        total += sent[r][q];
      }
      EXPECT_EQ(total, per_rank) << at << ": rows sent by rank " << r;
      int64_t computed = 0;
      for (int q = 0; q < P; ++q) computed += recv[r][q];
      EXPECT_EQ(expert_rows[r], computed) << at << ": rank " << r;
      const double c = row["comm_s"][r].get<double>(), t = row["step_s"][r].get<double>();
      EXPECT_GE(c, 0) << at;
      EXPECT_LE(c, t) << at << ": rank " << r;
      // The waiting (in the barrier before each collective) is part of the time in collectives, and
      // every step has some: the dispatches and the gradient all-reduce each pass one.
      const double w = row["comm_wait_s"][r].get<double>();
      EXPECT_GT(w, 0) << at << ": rank " << r;
      EXPECT_LE(w, c) << at << ": rank " << r;
      // The bytes on the wire, from these rows: each row leaving rank r (sent to another rank) and each
      // row arriving from another rank travels once each way in forward and again in backward.
      int64_t out = 0, in = 0;
      for (int q = 0; q < P; ++q)
        if (q != r) {
          out += sent[r][q];
          in += recv[r][q];
        }
      EXPECT_EQ(row["a2a_slots_leaving"][r].get<int64_t>(), out) << at << ": rank " << r;
      EXPECT_EQ(row["a2a_bytes_sent"][r].get<int64_t>(), 8 * m.hidden_size * (out + in)) << at << ": rank " << r;
    }
  }
}

}  // namespace
}  // namespace dsmoe
