// Range-checked command-line values. CLI11's own Range lets NaN through (every comparison with NaN
// is false) and its integer conversion saturates on overflow, so dsmoe checks the text itself: the
// error names the flag (CLI11 prefixes it), the value and the range, and the CLI exits 2.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "dist/communicator.h"
#include "io/safetensors.h"
#include "model/config.h"

namespace dsmoe::cli {

// A whole decimal integer in [lo, hi]; a value past int64 is out of range, not clamped.
CLI::Validator int_in(int64_t lo, int64_t hi);
// A finite real in [lo, hi] (or (lo, hi] with lo_open); nan and inf are refused.
CLI::Validator real_in(double lo, double hi, bool lo_open = false);

// --no-verify, for every command that loads a checkpoint or a model folder: the tensors' stored
// checksums are not checked (the format, shapes, dtypes and finite values still are).
void add_no_verify_flag(CLI::App* c, bool& no_verify);
// The Checksums of a --no-verify flag. Skipping is said on stderr, naming what is loaded unverified:
// results from a file that may have changed must not look like verified ones.
Checksums checksums_of(bool no_verify, const std::string& what);

// The largest --max-new-tokens / --ctx / token counts accepted anywhere (16M tokens).
inline constexpr int64_t kMaxTokens = int64_t(1) << 24;

// The layout flags of the commands that run under `mpirun -np P`: --ep E (expert-parallel size;
// 0 = the command's default) and --comm-timeout SECONDS (dist/communicator.h's collective timeout,
// applied by apply_comm_timeout).
struct ParallelArgs {
  int64_t ep = 0;
  double comm_timeout = kDefaultCollectiveTimeout;
};
void add_parallel_options(CLI::App* c, ParallelArgs& a, const std::string& ep_help);
void apply_comm_timeout(const ParallelArgs& a);
// infer/parallel_inference.h's inference_expert_parallel, its refusal a usage error (exit 2).
int64_t checked_expert_parallel(const ModelConfig& m, int64_t processes, int64_t requested);
// For the commands that run in one process only: a usage error (exit 2) naming `command` and `why`
// when mpirun started this one with others, before anything is loaded or written.
void refuse_under_mpirun(const char* command, const char* why);

// --compute auto|f32|bf16|int8 (infer/compute_mode.h) for the commands that run a model.
void add_compute_option(CLI::App* c, std::string& compute);
// --kv-cache f32|bf16 (infer/engine.h KvType) for the commands that run a model.
void add_kv_cache_option(CLI::App* c, std::string& kv_cache);

}  // namespace dsmoe::cli
