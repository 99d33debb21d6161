#include "cli/options.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>

namespace dsmoe::cli {

CLI::Validator int_in(int64_t lo, int64_t hi) {
  const std::string range = fmt::format("[{}, {}]", lo, hi);
  return CLI::Validator(
      [lo, hi, range](std::string& s) -> std::string {
        int64_t v = 0;
        const char* b = s.data();
        const char* e = s.data() + s.size();
        if (b != e && *b == '+') ++b;
        auto [p, ec] = std::from_chars(b, e, v);
        if (ec == std::errc::result_out_of_range) return fmt::format("{} is out of range {}", s, range);
        if (ec != std::errc() || p != e || b == e) return fmt::format("'{}' is not an integer (expected one in {})", s, range);
        if (v < lo || v > hi) return fmt::format("{} is out of range {}", s, range);
        return "";
      },
      "INT in " + range, "int_in");
}

CLI::Validator real_in(double lo, double hi, bool lo_open) {
  const std::string range = fmt::format("{}{}, {}]", lo_open ? "(" : "[", lo, hi);
  return CLI::Validator(
      [lo, hi, lo_open, range](std::string& s) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(s.c_str(), &end);
        if (s.empty() || end != s.c_str() + s.size()) return fmt::format("'{}' is not a number (expected one in {})", s, range);
        if (!std::isfinite(v)) return fmt::format("{} is not a finite number (expected one in {})", s, range);
        if (v < lo || v > hi || (lo_open && v == lo)) return fmt::format("{} is out of range {}", s, range);
        return "";
      },
      "NUMBER in " + range, "real_in");
}

void add_compute_option(CLI::App* c, std::string& compute) {
  c->add_option("--compute", compute,
                "operand precision of prefill products: auto (bf16 for bf16/q8/q4 weights on an AVX512_BF16 CPU, "
                "else f32), f32 (exact), bf16 (bf16, q8 or q4 weights)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16"}));
}

void add_kv_cache_option(CLI::App* c, std::string& kv_cache) {
  c->add_option("--kv-cache", kv_cache,
                "storage of the cached keys and values: f32 (exact), bf16 (rounded to bf16 as stored: half the "
                "memory)")
      ->capture_default_str()
      ->check(CLI::IsMember({"f32", "bf16"}));
}

void add_no_verify_flag(CLI::App* c, bool& no_verify) {
  c->add_flag("--no-verify", no_verify,
              "do not check the tensors' stored checksums (a file changed on purpose); everything else is checked");
}

Checksums checksums_of(bool no_verify, const std::string& what) {
  if (!no_verify) return Checksums::Verify;
  std::fprintf(stderr, "dsmoe: --no-verify: the tensor checksums of %s are not checked\n", what.c_str());
  return Checksums::Skip;
}

}  // namespace dsmoe::cli
