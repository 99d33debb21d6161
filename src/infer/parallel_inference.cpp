#include "infer/parallel_inference.h"

#include <xxhash.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/error.h"
#include "infer/gguf_checkpoint.h"
#include "io/safetensors.h"

namespace dsmoe {

namespace fs = std::filesystem;

int64_t inference_expert_parallel(const ModelConfig& m, int64_t processes, int64_t requested) {
  const int64_t ep = requested > 0 ? requested : (m.is_moe() ? processes : 1);
  if (requested > 0) validate_expert_parallel(m, ep, "--ep", "the model");
  else if (ep > 1 && m.n_routed_experts % ep != 0)
    fail("the model's {} routed experts cannot be split over the {} processes (the default expert-parallel size); "
         "give --ep E with E dividing both", m.n_routed_experts, processes);
  if (processes % ep != 0)
    fail("--ep {} does not divide the {} processes: the ranks form P / E expert-parallel groups of E", ep, processes);
  return ep;
}

static std::string file_hash(const std::string& path) {
  const std::string text = read_text_file(path);
  return fmt::format("{:016x} ({} bytes)", XXH3_64bits(text.data(), text.size()), text.size());
}

std::string inference_fingerprint(const std::string& model_dir, const std::string& settings,
                                  const std::vector<std::string>& input_files) {
  std::string s = "model " + model_dir + "\n";
  if (fs::is_directory(model_dir)) {
    const std::string cfg = (fs::path(model_dir) / "config.json").string();
    if (fs::exists(cfg)) s += read_text_file(cfg) + "\n";
    std::vector<std::string> files;
    for (const auto& e : fs::directory_iterator(model_dir))
      if (e.is_regular_file()) files.push_back(fmt::format("file {} {} bytes", e.path().filename().string(), e.file_size()));
    std::sort(files.begin(), files.end());
    for (const auto& f : files) s += f + "\n";
  } else if (fs::exists(model_dir)) {
    s += fmt::format("file {} bytes\n", fs::file_size(model_dir));
  }
  s += settings + "\n";
  for (const auto& f : input_files) s += "input " + f + " " + file_hash(f) + "\n";
  return s;
}

std::unique_ptr<InferenceEngine> ParallelInferenceModel::engine(KvType kv) {
  return std::make_unique<InferenceEngine>(*model.weights, layout.dispatcher.get(),
                                           layout.dispatcher ? layout.groups.experts.get() : nullptr, kv);
}

ModelConfig inference_model_config(const std::string& dir) {
  return is_gguf_file(dir) ? load_gguf_config(GgufFile(dir)).model : load_hf_config(dir).model;
}

ParallelInferenceModel load_parallel_inference_model(Communicator& world, const std::string& dir,
                                                     int64_t expert_parallel, std::optional<ops::WType> type,
                                                     const TensorProgress& progress, Checksums checksums) {
  ParallelInferenceModel pm;
  pm.layout = make_expert_parallel_layout(world, inference_model_config(dir), expert_parallel);
  pm.model = load_inference_model(dir, type, progress, checksums, pm.layout.shard);
  return pm;
}

std::vector<GenerationResult> generate_parallel(InferenceEngine& eng, const std::vector<std::vector<int32_t>>& prompts,
                                                const SamplingOptions& o, uint64_t seed, Communicator* world,
                                                const std::function<bool(int64_t, int32_t)>& on_token,
                                                GenerationStats* stats) {
  const int64_t P = world ? world->size() : 1, rank = world ? world->rank() : 0, S = (int64_t)prompts.size();
  if (P == 1) return generate_batch(eng, prompts, o, seed, on_token, stats);
  std::vector<int64_t> mine;  // global indices of this rank's prompts
  std::vector<std::vector<int32_t>> my_prompts;
  for (int64_t i = rank; i < S; i += P) {
    mine.push_back(i);
    my_prompts.push_back(prompts[(size_t)i]);
  }
  const auto part = generate_batch(
      eng, my_prompts, o, seed,
      [&](int64_t j, int32_t t) { return on_token ? on_token(mine[(size_t)j], t) : true; }, stats);
  // Every prompt's length and finish reason, then its tokens, summed over the ranks (each entry is
  // one rank's, zeros elsewhere).
  std::vector<int64_t> lens((size_t)(2 * S), 0);
  for (size_t j = 0; j < mine.size(); ++j) {
    lens[(size_t)mine[j]] = (int64_t)part[j].tokens.size();
    lens[(size_t)(S + mine[j])] = (int64_t)part[j].finish;
  }
  world->all_reduce_sum(lens.data(), 2 * S);
  std::vector<int64_t> start((size_t)S + 1, 0);
  for (int64_t i = 0; i < S; ++i) start[(size_t)i + 1] = start[(size_t)i] + lens[(size_t)i];
  std::vector<int64_t> flat((size_t)start[(size_t)S], 0);
  for (size_t j = 0; j < mine.size(); ++j)
    std::copy(part[j].tokens.begin(), part[j].tokens.end(), flat.begin() + start[(size_t)mine[j]]);
  world->all_reduce_sum(flat.data(), (int64_t)flat.size());
  std::vector<GenerationResult> all((size_t)S);
  for (int64_t i = 0; i < S; ++i) {
    all[(size_t)i].tokens.assign(flat.begin() + start[(size_t)i], flat.begin() + start[(size_t)i + 1]);
    all[(size_t)i].finish = (FinishReason)lens[(size_t)(S + i)];
  }
  return all;
}

MemoryUse memory_use() {
  MemoryUse u;
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) u.rss = std::stoll(line.substr(6)) * 1024;
    if (line.rfind("VmHWM:", 0) == 0) u.peak_rss = std::stoll(line.substr(6)) * 1024;
  }
  return u;
}

}  // namespace dsmoe
