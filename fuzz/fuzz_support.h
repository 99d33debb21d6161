// What every fuzz target shares: the rule that a dsmoe::Error is the input being refused (a fine
// outcome) while anything else escapes to libFuzzer as a finding, and a private scratch folder for
// the surfaces that read files and folders rather than bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace dsmoe::fuzz {

// Runs `body`; swallows dsmoe::Error only. Any other exception (std::bad_alloc, nlohmann's,
// std::out_of_range, ...) propagates out of LLVMFuzzerTestOneInput, which aborts the process, so
// libFuzzer saves the input as a crash: the library must turn every bad input into a dsmoe::Error.
template <typename F>
void refuse_ok(F&& body) {
  try {
    body();
  } catch (const dsmoe::Error&) {
  }
}

// A folder of this process's own under $TMPDIR (or /tmp), emptied of the previous input's files by
// reset() and removed at exit, so parallel fuzzing jobs never share files.
const std::string& scratch_dir();
// Removes everything in scratch_dir() (leaves the folder).
void reset_scratch();
// Writes `bytes` to scratch_dir()/name and returns the path.
std::string write_scratch(const std::string& name, std::string_view bytes);

// Splits the input at each occurrence of kPartSeparator into at most `max_parts` parts (the last
// part keeps any further separators), for targets whose surface is several files. Seeds are text,
// so the separator is a line of its own that no JSON or template needs.
inline constexpr std::string_view kPartSeparator = "\n=====\n";
std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t max_parts);

}  // namespace dsmoe::fuzz
