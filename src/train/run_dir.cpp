#include "train/run_dir.h"

#include <filesystem>

#include "core/error.h"
#include "io/output_dir.h"
#include "train/checkpoint.h"

namespace dsmoe {

namespace fs = std::filesystem;

namespace {

// What training (and its charts) write into a run folder: all that --force may remove.
bool written_by_training(const std::string& name) {
  static const char* kFiles[] = {"checkpoint.safetensors", "config.json", "metrics.jsonl", "tokenizer.json",
                                 "tokenizer_config.json", "loss.svg", "lr.svg", "load_balance.svg",
                                 "expert_load.svg", "routing_entropy.svg", kOutputMarker};
  for (const char* f : kFiles)
    if (name == f) return true;
  // temporary files of atomic writes killed mid-way ("checkpoint.safetensors.tmp.1234")
  return name.find(".tmp.") != std::string::npos;
}

}  // namespace

bool is_run_dir(const std::string& dir) {
  if (output_marker_command(dir) == "train") return true;
  const fs::path d(dir);
  return fs::exists(d / "config.json") && (fs::exists(d / "checkpoint.safetensors") || fs::exists(d / "metrics.jsonl"));
}

RunStart open_run_dir(const std::string& dir, const std::string& data_dir, bool resume, bool force) {
  if (resume && force)
    usage_error("--resume and --force contradict each other: --resume continues the run in {}, --force replaces it",
                dir);
  check_disjoint(dir, {data_dir}, "--out");
  std::error_code ec;
  const bool exists = fs::exists(dir, ec);
  if (exists && !fs::is_directory(dir, ec)) usage_error("--out {} exists and is not a folder", dir);
  const bool empty = !exists || fs::is_empty(dir, ec);
  if (resume) {
    if (!checkpoint_exists(dir))
      usage_error("--resume: {} holds no checkpoint.safetensors, so there is nothing to resume; drop --resume to start "
                  "a new run there",
                  dir);
    if (!is_run_dir(dir)) usage_error("--resume: {} is not a dsmoe training run folder", dir);
    return RunStart::Resume;
  }
  if (!empty) {
    if (!is_run_dir(dir))
      usage_error("--out {} exists and holds files that are not a dsmoe training run; choose a new or empty folder "
                  "(nothing was written)",
                  dir);
    if (!force)
      usage_error("--out {} already holds a training run; add --resume to continue it, or --force to start over "
                  "(replaces its checkpoint and metrics; nothing was written)",
                  dir);
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file() && written_by_training(e.path().filename().string())) fs::remove(e.path());
  }
  fs::create_directories(dir);
  write_output_marker(dir, "train");
  return RunStart::Fresh;
}

}  // namespace dsmoe
