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

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace dsmoe

// Internal invariant (a bug in dsmoe, not in the input). Kept in release builds: cheap, and a wrong
// shape deep in a kernel is far worse than an abort with a message.
#define DSMOE_ASSERT(cond, ...)                                                              \
  do {                                                                                       \
    if (!(cond)) ::dsmoe::fail("internal check failed at {}:{}: {} ({})", __FILE__, __LINE__, \
                               #cond, ::fmt::format(__VA_ARGS__));                           \
  } while (0)
