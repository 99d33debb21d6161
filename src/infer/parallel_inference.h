// Inference over the ranks of `mpirun -np P dsmoe score|generate` (eval, on the training model, is
// train/'s): expert parallelism as in training (model/expert_parallel_layout.h), each rank reading
// and keeping only its routed experts, and a guard that every rank runs the same model on the same
// input.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "infer/engine.h"
#include "infer/hf_checkpoint.h"
#include "model/expert_parallel_layout.h"

namespace dsmoe {

// The expert-parallel size of inference over `processes` ranks: `requested` (--ep; 0 = unset)
// validated against the model, or by default every rank (the routed experts split over all P, which
// is what lets a model larger than one process's memory run), 1 for a dense model.
int64_t inference_expert_parallel(const ModelConfig& m, int64_t processes, int64_t requested);

// Text that is the same on two ranks iff they would run the same model on the same input: the model
// folder's config.json and the names and sizes of its files, the settings given, and an XXH3 hash of
// each input file. For check_same_on_all_ranks (one item per line, so a difference names its line).
std::string inference_fingerprint(const std::string& model_dir, const std::string& settings,
                                  const std::vector<std::string>& input_files);

// The model config of a folder or GGUF file (read without the weights).
ModelConfig inference_model_config(const std::string& dir);

// A model folder loaded by one rank: its layout and only its routed experts' weights.
struct ParallelInferenceModel {
  ExpertParallelLayout layout;
  InferenceModel model;
  // The engine over these weights, with the layout's dispatcher (none when expert_parallel == 1).
  std::unique_ptr<InferenceEngine> engine(KvType kv = KvType::F32);
};
// `expert_parallel`: inference_expert_parallel's.
ParallelInferenceModel load_parallel_inference_model(Communicator& world, const std::string& dir, int64_t expert_parallel,
                                                     std::optional<ops::WType> type, const TensorProgress& progress,
                                                     Checksums checksums);

// generate_batch over the ranks of `world` (null: this process): prompt i runs on rank i % P (with
// its own generator Rng(seed), as in one process), the ranks step together, and every rank returns
// every prompt's result. on_token(i, token) is called on the rank that runs prompt i.
std::vector<GenerationResult> generate_parallel(InferenceEngine& eng, const std::vector<std::vector<int32_t>>& prompts,
                                                const SamplingOptions& o, uint64_t seed, Communicator* world,
                                                const std::function<bool(int64_t, int32_t)>& on_token = {},
                                                GenerationStats* stats = nullptr);

// Resident set size of this process now and at its peak (Linux /proc/self/status VmRSS, VmHWM), bytes.
struct MemoryUse {
  int64_t rss = 0, peak_rss = 0;
};
MemoryUse memory_use();

}  // namespace dsmoe
