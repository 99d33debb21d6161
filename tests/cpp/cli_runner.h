// Running the real `dsmoe` binary (DSMOE_BINARY) from tests, with fork/exec so the exit status is
// exact (a crash shows as a signal, not as an exit code), and the small configs and datasets the CLI
// tests share.
#pragma once
#include <sys/types.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace dsmoe::test::cli {

struct Proc {
  int exit_code = -1;  // valid when !signaled
  int signal = 0;      // the terminating signal, when signaled
  bool signaled = false;
  std::string out, err, cmd;
  bool ok() const { return !signaled && exit_code == 0; }
  std::string describe() const;
};

std::string slurp(const std::string& path);
// "Suite_Name" of the running test, as a file-name-safe string.
std::string test_name();
// A fresh folder for the current test (unique per test, so ctest -j can run tests side by side).
std::string scratch(const std::string& what);
std::string quote_args(const std::vector<std::string>& args);

// Starts dsmoe with args; stdout/stderr go to the files, stdin from stdin_path ("" = /dev/null).
pid_t spawn(const std::vector<std::string>& args, const std::string& out_path, const std::string& err_path,
            const std::string& stdin_path = "");
// Starts any program (argv[0] a path) the same way.
pid_t spawn_program(std::vector<std::string> argv, const std::string& out_path, const std::string& err_path,
                    const std::string& stdin_path = "");
// Runs a program to its end (killed after timeout_s), its output collected.
Proc run_program(const std::vector<std::string>& argv, double timeout_s);
// Waits for pid (killing it after timeout_s) and collects its output files.
Proc finish(pid_t pid, const std::string& cmd, const std::string& out_path, const std::string& err_path,
            double timeout_s);
Proc run_cli(const std::vector<std::string>& args, double timeout_s = 120, const std::string& stdin_text = "");

// `mpirun -np np dsmoe args...` on this machine: oversubscribed, allowed as root, one OpenMP thread
// per rank.
Proc run_mpi(int np, const std::vector<std::string>& args, double timeout_s = 120);
// The mpirun options every test's ranks get: one OpenMP thread, a passive wait policy and, in a
// sanitized run (ASAN_OPTIONS set), ASan's full unwinder at malloc. Open MPI leaves allocations
// of MPI_Init unfreed in plugins it unloads at MPI_Finalize; the fast unwinder stops at those
// unloaded frames, and only a whole stack reaches the libmpi frame fuzz/lsan.supp names.
std::vector<std::string> mpirun_options();

bool contains(const std::string& hay, const std::string& needle);

// A 2-layer MoE (vocab 256) with a 4-step training object.
nlohmann::json tiny_config_json();
std::string write_config(const std::string& dir, const std::string& name,
                         const nlohmann::json& patch = nlohmann::json::object());
std::string make_dataset(const std::string& dir);  // test::make_word_dataset, 12000 + 2000 tokens
std::vector<std::string> train_args(const std::string& cfg, const std::string& data, const std::string& out);
std::vector<nlohmann::json> read_metrics(const std::string& out_dir);

}  // namespace dsmoe::test::cli
