#include "fuzz_support.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace dsmoe::fuzz {

namespace {

void remove_scratch() {
  std::error_code ec;
  fs::remove_all(scratch_dir(), ec);
}

}  // namespace

const std::string& scratch_dir() {
  // Never destroyed: remove_scratch runs at exit, after function-local statics are gone.
  static const std::string& dir = *new std::string([] {
    const char* tmp = std::getenv("TMPDIR");
    fs::path d = fs::path(tmp && *tmp ? tmp : "/tmp") / ("dsmoe-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(d);
    std::atexit(remove_scratch);
    return d.string();
  }());
  return dir;
}

void reset_scratch() {
  for (const auto& e : fs::directory_iterator(scratch_dir())) fs::remove_all(e.path());
}

std::string write_scratch(const std::string& name, std::string_view bytes) {
  const std::string path = (fs::path(scratch_dir()) / name).string();
  // A new file rather than a truncated one: ext4 flushes a file truncated and rewritten on close
  // (auto_da_alloc), which made each execution wait for the disk.
  std::error_code ec;
  fs::remove(path, ec);
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
  if (!f) std::abort();  // the harness itself failed (disk full): not a finding in dsmoe
  return path;
}

std::vector<std::string_view> split_parts(const uint8_t* data, size_t size, size_t max_parts) {
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    size_t at = rest.find(kPartSeparator);
    if (at == std::string_view::npos) break;
    parts.push_back(rest.substr(0, at));
    rest.remove_prefix(at + kPartSeparator.size());
  }
  parts.push_back(rest);
  return parts;
}

}  // namespace dsmoe::fuzz
