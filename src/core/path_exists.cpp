#include "core/path_exists.h"

#include <filesystem>
#include <system_error>

#include "core/error.h"

namespace dsmoe {

namespace {

// Names in messages are cut: the path that is too long for the OS would fill the terminal.
std::string shown(const std::string& path) {
  constexpr size_t kShown = 200;
  return path.size() <= kShown ? path : path.substr(0, kShown) + "... (" + std::to_string(path.size()) + " bytes)";
}

std::filesystem::file_status status_of(const std::string& path, const std::string& what) {
  std::error_code ec;
  // status() follows links, as exists() does; a missing path is not an
  // error (its type is not_found and ec is clear or ENOENT / ENOTDIR).
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory && ec != std::errc::not_a_directory)
    fail("{}: cannot check '{}': {}", what, shown(path), ec.message());
  return st;
}

}  // namespace

bool path_exists(const std::string& path, const std::string& what) {
  const auto t = status_of(path, what).type();
  return t != std::filesystem::file_type::not_found && t != std::filesystem::file_type::none;
}

bool regular_file_exists(const std::string& path, const std::string& what) {
  return status_of(path, what).type() == std::filesystem::file_type::regular;
}

}  // namespace dsmoe
