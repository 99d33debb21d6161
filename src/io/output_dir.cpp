#include "io/output_dir.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/version.h"
#include "io/safetensors.h"

namespace dsmoe {

namespace fs = std::filesystem;

namespace {

fs::path canonical_path(const std::string& p) { return fs::weakly_canonical(fs::absolute(p)); }

// a lies inside b (or is b).
bool within(const fs::path& a, const fs::path& b) {
  return std::mismatch(b.begin(), b.end(), a.begin(), a.end()).first == b.end();
}

std::string join_names(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " or ") + std::string("`") + x + "`";
  return s;
}

bool pid_alive(long pid) { return pid > 0 && (::kill((pid_t)pid, 0) == 0 || errno == EPERM); }

// `.NAME.staging-PID` / `.NAME.old-PID` beside DIR: the PID, or -1 when `entry` is not one of DIR's.
long leftover_pid(const std::string& entry, const std::string& name, const std::string& kind) {
  const std::string prefix = "." + name + "." + kind + "-";
  if (entry.rfind(prefix, 0) != 0) return -1;
  const std::string digits = entry.substr(prefix.size());
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 9) return -1;
  return std::stol(digits);
}

// A killed command may have left a staging folder (removed: it was never complete), or a previous
// output moved aside just before the new one was renamed in (put back, when DIR is missing).
void recover_leftovers(const fs::path& dir) {
  const fs::path parent = dir.parent_path();
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) return;
  const std::string name = dir.filename().string();
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string n = e.path().filename().string();
    const long staging = leftover_pid(n, name, "staging"), old = leftover_pid(n, name, "old");
    if (staging > 0 && !pid_alive(staging)) {
      fs::remove_all(e.path(), ec);
    } else if (old > 0 && !pid_alive(old)) {
      if (!fs::exists(dir)) fs::rename(e.path(), dir, ec);
      else fs::remove_all(e.path(), ec);
    }
  }
}

}  // namespace

std::string output_marker_command(const std::string& dir) {
  const fs::path p = fs::path(dir) / kOutputMarker;
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return "";
  try {
    const auto j = nlohmann::json::parse(read_text_file(p.string()));
    if (j.is_object() && j.contains("command") && j["command"].is_string()) return j["command"].get<std::string>();
  } catch (const std::exception&) {
  }
  return "";
}

void write_output_marker(const std::string& dir, const std::string& command) {
  const nlohmann::json j = {{"command", command}, {"dsmoe_version", kVersion},
                            {"note", "written by dsmoe; a later `dsmoe " + command + " --force` may replace this folder"}};
  write_file_atomic((fs::path(dir) / kOutputMarker).string(), j.dump(1) + "\n");
}

void check_disjoint(const std::string& dir, const std::vector<std::string>& inputs, const std::string& flag) {
  if (dir.empty()) usage_error("{}: an output folder is required", flag);
  const fs::path out = canonical_path(dir);
  for (const auto& in : inputs) {
    if (in.empty()) continue;
    const fs::path ip = canonical_path(in);
    if (ip == out) usage_error("{} {}: the output would replace the input {}; choose another folder", flag, dir, in);
    if (within(out, ip)) usage_error("{} {} lies inside the input {}; choose a folder outside it", flag, dir, in);
    if (within(ip, out))
      usage_error("{} {} contains the input {}: writing it would destroy the input; choose another folder", flag, dir,
                  in);
  }
}

OutputState check_output_dir(const OutputRequest& r) {
  check_disjoint(r.dir, r.inputs, r.flag);
  const fs::path out = canonical_path(r.dir);
  recover_leftovers(out);
  std::error_code ec;
  if (!fs::exists(out, ec)) return OutputState::Missing;
  if (!fs::is_directory(out, ec)) usage_error("{} {} exists and is not a folder; choose another path", r.flag, r.dir);
  if (fs::is_empty(out, ec)) return OutputState::Empty;
  const std::string by = output_marker_command(out.string());
  const bool ours = !by.empty() && std::find(r.replaces.begin(), r.replaces.end(), by) != r.replaces.end();
  if (!ours) {
    if (!by.empty())
      usage_error("{} {} holds the output of `dsmoe {}`, not of {}; choose another folder (nothing was written)", r.flag,
                  r.dir, by, join_names(r.replaces));
    usage_error("{} {} exists and holds files dsmoe did not write; choose a new or empty folder (nothing was written)",
                r.flag, r.dir);
  }
  if (!r.force)
    usage_error("{} {} already holds a previous `dsmoe {}` output; add --force to replace it (nothing was written)", r.flag,
                r.dir, by);
  return OutputState::Replaceable;
}

StagedOutput::StagedOutput(const OutputRequest& r) : req_(r) {
  check_output_dir(r);
  const fs::path out = canonical_path(r.dir);
  final_ = out.string();
  staging_ = (out.parent_path() / ("." + out.filename().string() + ".staging-" + std::to_string(::getpid()))).string();
  fs::create_directories(out.parent_path());
  fs::remove_all(staging_);
  fs::create_directories(staging_);
}

StagedOutput::~StagedOutput() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(staging_, ec);
}

void StagedOutput::commit() {
  DSMOE_ASSERT(!committed_, "{} committed twice", final_);
  write_output_marker(staging_, req_.command);
  // Checked again: the folder may have appeared since the constructor ran.
  const OutputState st = check_output_dir(req_);
  const fs::path out(final_);
  const fs::path old = out.parent_path() / ("." + out.filename().string() + ".old-" + std::to_string(::getpid()));
  const bool had = st != OutputState::Missing;
  if (had) fs::rename(out, old);
  try {
    fs::rename(staging_, out);
  } catch (...) {
    if (had) fs::rename(old, out);  // put the previous output back
    throw;
  }
  committed_ = true;
  if (had) fs::remove_all(old);
}

}  // namespace dsmoe
