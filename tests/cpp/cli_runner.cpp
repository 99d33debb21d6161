#include "cli_runner.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "test_util.h"

namespace dsmoe::test::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- running the binary

std::string Proc::describe() const {
  {
    std::ostringstream os;
    os << "`" << cmd << "` " << (signaled ? "killed by signal " + std::to_string(signal) : "exited " + std::to_string(exit_code))
       << "\n--- stderr ---\n" << err << "\n--- stdout (first 2000 bytes) ---\n" << out.substr(0, 2000);
    return os.str();
  }
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string test_name() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string n = std::string(info->test_suite_name()) + "_" + info->name();
  for (auto& c : n)
    if (!std::isalnum((unsigned char)c)) c = '_';
  return n;
}

// A fresh folder for the current test (unique per test, so ctest -j can run tests side by side).
std::string scratch(const std::string& what) {
  std::string d = dsmoe::test::tmp_path("cli_" + test_name() + "_" + what);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string quote_args(const std::vector<std::string>& args) {
  std::string s = "dsmoe";
  for (const auto& a : args) s += " " + a;
  return s;
}

pid_t spawn(const std::vector<std::string>& args, const std::string& out_path, const std::string& err_path,
            const std::string& stdin_path) {
  std::vector<std::string> full = {DSMOE_BINARY};
  full.insert(full.end(), args.begin(), args.end());
  return spawn_program(full, out_path, err_path, stdin_path);
}

pid_t spawn_program(std::vector<std::string> full, const std::string& out_path, const std::string& err_path,
                    const std::string& stdin_path) {
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int o = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int n = ::open(stdin_path.empty() ? "/dev/null" : stdin_path.c_str(), O_RDONLY);
    if (o < 0 || e < 0 || n < 0) _exit(126);
    dup2(o, 1);
    dup2(e, 2);
    dup2(n, 0);
    // Idle OpenMP workers sleep instead of spinning: spinning workers of a tiny model starve each
    // other on a loaded machine (an explicit setting is kept).
    setenv("OMP_WAIT_POLICY", "passive", 0);
    execv(full[0].c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// Waits for pid (killing it after timeout_s) and collects its output files.
Proc finish(pid_t pid, const std::string& cmd, const std::string& out_path, const std::string& err_path,
            double timeout_s) {
  Proc p;
  p.cmd = cmd;
  int status = 0;
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0) {
      ADD_FAILURE() << "waitpid failed for " << cmd << ": " << std::strerror(errno);
      break;
    }
    if (Clock::now() > deadline) {
      ADD_FAILURE() << cmd << ": still running after " << timeout_s << " s; killed";
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  p.signaled = WIFSIGNALED(status);
  p.signal = p.signaled ? WTERMSIG(status) : 0;
  p.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  p.out = slurp(out_path);
  p.err = slurp(err_path);
  return p;
}

Proc run_program(const std::vector<std::string>& argv, double timeout_s) {
  static int counter = 0;
  const std::string base = dsmoe::test::tmp_path("prog_io_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  const std::string out = base + ".out", err = base + ".err";
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  Proc p = finish(spawn_program(argv, out, err), cmd, out, err, timeout_s);
  fs::remove(out);
  fs::remove(err);
  return p;
}

Proc run_cli(const std::vector<std::string>& args, double timeout_s, const std::string& stdin_text) {
  static int counter = 0;
  const std::string base = dsmoe::test::tmp_path("cli_io_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  const std::string out = base + ".out", err = base + ".err", in = stdin_text.empty() ? "" : base + ".in";
  if (!in.empty()) std::ofstream(in, std::ios::binary) << stdin_text;
  Proc p = finish(spawn(args, out, err, in), quote_args(args), out, err, timeout_s);
  fs::remove(out);
  fs::remove(err);
  if (!in.empty()) fs::remove(in);
  return p;
}

Proc run_mpi(int np, const std::vector<std::string>& args, double timeout_s) {
  static int counter = 0;
  const std::string base = dsmoe::test::tmp_path("mpi_io_" + std::to_string(getpid()) + "_" + std::to_string(counter++));
  const std::string out = base + ".out", err = base + ".err";
  // As root Open MPI refuses to start without --allow-run-as-root; --oversubscribe: more ranks than
  // this machine's cores. One OpenMP thread per rank (-x passes the variable to every rank).
  std::vector<std::string> argv = {"mpirun", "--allow-run-as-root", "--oversubscribe", "-np", std::to_string(np)};
  for (const std::string& o : mpirun_options()) argv.push_back(o);
  argv.push_back(DSMOE_BINARY);
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<std::string> path_argv = argv;
  path_argv[0] = "/usr/bin/mpirun";
  Proc p = finish(spawn_program(path_argv, out, err), quote_args(argv), out, err, timeout_s);
  fs::remove(out);
  fs::remove(err);
  return p;
}

std::vector<std::string> mpirun_options() {
  // Open MPI 4.1 creates its session folder /tmp/ompi.HOST.UID at start-up and fails ("mkdir ...
  // File exists") when two mpiruns race to create it, as CTest's parallel jobs do: each test process
  // gets its own base folder.
  static const std::string session_base = [] {
    const std::string d = dsmoe::test::tmp_path("ompi_session_" + std::to_string(getpid()));
    fs::create_directories(d);
    return d;
  }();
  std::vector<std::string> o = {"--mca", "orte_tmpdir_base", session_base,
                                "-x",    "OMP_NUM_THREADS=1", "-x", "OMP_WAIT_POLICY=passive"};
  if (const char* asan = std::getenv("ASAN_OPTIONS"); asan && *asan)
    o.insert(o.end(), {"-x", std::string("ASAN_OPTIONS=") + asan + ":fast_unwind_on_malloc=0"});
  return o;
}

bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

// ---------------------------------------------------------------- configs and data

json tiny_config_json() {
  return json{{"model_type", "deepseek"},
              {"vocab_size", 256},
              {"hidden_size", 32},
              {"intermediate_size", 64},
              {"moe_intermediate_size", 16},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 4},
              {"n_shared_experts", 1},
              {"n_routed_experts", 8},
              {"num_experts_per_tok", 2},
              {"first_k_dense_replace", 1},
              {"moe_layer_freq", 1},
              {"aux_loss_alpha", 0.01},
              {"n_device_groups", 2},
              {"device_aux_alpha", 0.01},
              {"max_position_embeddings", 64},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"training",
               {{"lr", 3e-3},
                {"warmup_steps", 1},
                {"steps", 4},
                {"schedule", "step"},
                {"batch_size", 2},
                {"seq_len", 32},
                {"grad_accum", 1},
                {"seed", 5},
                {"init_std", 0.02},
                {"log_interval", 1},
                {"eval_interval", 0},
                {"eval_batches", 2},
                {"checkpoint_interval", 0}}}};
}

std::string write_config(const std::string& dir, const std::string& name, const json& patch) {
  json j = tiny_config_json();
  j.merge_patch(patch);
  const std::string path = (fs::path(dir) / name).string();
  std::ofstream(path) << j.dump(2) << "\n";
  return path;
}

std::string make_dataset(const std::string& dir) { return dsmoe::test::make_word_dataset(dir, 12000, 2000); }

std::vector<std::string> train_args(const std::string& cfg, const std::string& data, const std::string& out) {
  return {"train", "--config", cfg, "--data", data, "--out", out, "--quiet", "--sample-tokens", "0"};
}

std::vector<json> read_metrics(const std::string& out_dir) {
  std::ifstream f(fs::path(out_dir) / "metrics.jsonl");
  std::vector<json> rows;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}


}  // namespace dsmoe::test::cli
