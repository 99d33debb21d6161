// Errors the user can act on: every message says which file / field / tensor and what was expected.
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace dsmoe {

// Thrown for bad input (config, checkpoint, data, arguments). The CLI prints what() and exits 1.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A command line that cannot be run as typed (a flag out of range, flags that contradict each other,
// an output folder that would destroy something): the CLI prints what() and exits 2, like a parse
// error, so scripts can tell "you asked for something wrong" from "it went wrong".
class UsageError : public Error {
 public:
  using Error::Error;
};

// Training (or another long command) stopped by SIGINT/SIGTERM after saving its state. The CLI
// prints what() (which says how to continue) and exits 128 + signal, as a shell reports a signal.
class Interrupted : public Error {
 public:
  Interrupted(const std::string& what, int signal) : Error(what), signal_(signal) {}
  int signal() const { return signal_; }

 private:
  int signal_;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void usage_error(fmt::format_string<Args...> f, Args&&... args) {
  throw UsageError(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace dsmoe

// Internal invariant (a bug in dsmoe, not in the input). Kept in release builds: cheap, and a wrong
// shape deep in a kernel is far worse than an abort with a message.
#define DSMOE_ASSERT(cond, ...)                                                              \
  do {                                                                                       \
    if (!(cond)) ::dsmoe::fail("internal check failed at {}:{}: {} ({})", __FILE__, __LINE__, \
                               #cond, ::fmt::format(__VA_ARGS__));                           \
  } while (0)
