#include "cli/options.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fmt/format.h>

#include "core/error.h"
#include "dist/communicator.h"
#include "dist/mpi_communicator.h"
#include "infer/parallel_inference.h"

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

void add_parallel_options(CLI::App* c, ParallelArgs& a, const std::string& ep_help) {
  c->add_option("--ep", a.ep, ep_help)->check(int_in(1, 4096));
  c->add_option("--comm-timeout", a.comm_timeout,
                "under mpirun: seconds a collective waits for the other ranks before this rank gives up and ends the "
                "job (a rank that died or hangs); 0 = wait forever. Must exceed the longest checkpoint save or "
                "evaluation another rank may be busy with")
      ->check(real_in(0, 86400))
      ->capture_default_str();
}

void apply_comm_timeout(const ParallelArgs& a) { set_collective_timeout(a.comm_timeout); }

void refuse_under_mpirun(const char* command, const char* why) {
  if (launched_by_mpi() && world_communicator()->size() > 1)
    usage_error("{} runs in one process ({}): start it without mpirun", command, why);
}

int64_t checked_expert_parallel(const ModelConfig& m, int64_t processes, int64_t requested) {
  try {
    return inference_expert_parallel(m, processes, requested);
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    usage_error("{}", e.what());
  }
}

void add_compute_option(CLI::App* c, std::string& compute) {
  c->add_option("--compute", compute,
                "operand precision of products of more than 8 rows (prefill, batched decode): auto (the fastest "
                "mode costing under 0.5% perplexity: mixed for q8/q4 weights, bf16 for bf16 weights, as this CPU "
                "allows; f32 for f32 weights), f32 (exact), bf16 (bf16, q8 or q4 weights), int8 (q8 or q4 weights, "
                "AVX512-VNNI: activations quantized per 32), mixed (q8 or q4: int8 for products of up to 48 rows, "
                "bf16 above)")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "f32", "bf16", "int8", "mixed"}));
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
