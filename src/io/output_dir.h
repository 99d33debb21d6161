// Output folders of commands (export, quantize, prepare, train, experiment): the rule that nothing
// a user types destroys what dsmoe did not create.
//
// A folder a command writes carries a marker file, `.dsmoe-output` ({"command": "export", ...}).
// An --out folder that exists is accepted only when it is
//   - empty, or
//   - a previous output of a command in `replaces` (its marker says so), and --force was given.
// Anything else (a folder of the user's files, a parent of the input, another command's output) is
// a UsageError naming the folder and what it holds. --out may never be an input, lie inside one or
// contain one, whatever --force says.
//
// StagedOutput writes a whole folder atomically: everything goes to a staging folder beside DIR
// (`.NAME.staging-PID`), and commit() moves an existing DIR aside, renames the staging folder into
// place and only then removes the old one. A failed or interrupted command leaves DIR as it was;
// its staging folder is removed by the destructor, or (after a SIGKILL) by the next command that
// writes DIR.
#pragma once
#include <string>
#include <vector>

namespace dsmoe {

inline constexpr const char* kOutputMarker = ".dsmoe-output";

struct OutputRequest {
  std::string dir;                    // the --out folder
  std::string command;                // what is writing it: "export", "quantize", "prepare", "train"
  std::vector<std::string> replaces;  // commands whose outputs --force may replace (usually {command})
  bool force = false;
  std::vector<std::string> inputs;    // folders or files the command reads; --out must be disjoint
  std::string flag = "--out";         // named in messages
};

// The command that wrote DIR according to its marker, or "" (no marker, or unreadable).
std::string output_marker_command(const std::string& dir);
// Writes DIR/.dsmoe-output for `command` (atomically).
void write_output_marker(const std::string& dir, const std::string& command);

// UsageError when `out` is one of `inputs`, lies inside one, or contains one (replacing it would
// destroy the input), whatever --force says.
void check_disjoint(const std::string& out, const std::vector<std::string>& inputs, const std::string& flag);

// What exists at r.dir: Missing, Empty, or Replaceable (a previous output the request may replace
// with --force). Throws UsageError for anything else, and for an --out that overlaps an input.
enum class OutputState { Missing, Empty, Replaceable };
OutputState check_output_dir(const OutputRequest& r);

class StagedOutput {
 public:
  explicit StagedOutput(const OutputRequest& r);  // checks r (check_output_dir), creates the staging folder
  ~StagedOutput();                                // removes the staging folder unless committed
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;

  const std::string& path() const { return staging_; }  // write the folder's files here
  void commit();  // marker, then the swap described above

 private:
  OutputRequest req_;
  std::string final_, staging_;
  bool committed_ = false;
};

}  // namespace dsmoe
