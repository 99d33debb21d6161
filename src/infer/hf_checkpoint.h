// Hugging Face DeepSeekMoE checkpoints (deepseek-moe-16b-base / -chat layout):
//   DIR/config.json                      DeepseekConfig keys; absent keys take the config-class defaults
//   DIR/model.safetensors                one file, or
//   DIR/model.safetensors.index.json     {"metadata": {...}, "weight_map": {tensor: shard file}} plus
//   DIR/model-0000i-of-0000n.safetensors the shards
//   DIR/tokenizer.json, tokenizer_config.json (read by the CLI, not here)
// A dsmoe run folder (config.json + checkpoint.safetensors, which stores the weights under the same
// HF names) loads through the same code.
//
// Loading memory-maps one file at a time and converts every tensor (F32, BF16 or F16) straight into
// the model's fp32 parameter buffer: the only resident copy of the weights is that buffer (the
// mapping is file-backed page cache, dropped when the file is closed). Every expected tensor is
// checked for presence, shape, dtype and finite values; errors name the tensor and the file.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"

namespace dsmoe {

// DIR/config.json of a HF checkpoint (or a dsmoe run folder). Refuses a model_type other than
// "deepseek" and an `architectures` list without "DeepseekForCausalLM", naming the file and key.
Config load_hf_config(const std::string& dir);

// What a model folder holds.
enum class ModelDirKind { HfSingle, HfSharded, DsmoeRun };
ModelDirKind model_dir_kind(const std::string& dir);  // fails if the folder holds no weights

struct LoadReport {
  int64_t files = 0;
  int64_t tensors = 0;
  int64_t bytes_read = 0;           // bytes of tensor data on disk
  int64_t f32 = 0, bf16 = 0, f16 = 0;  // tensors per stored dtype
};

// Loads the weights of DIR into `model` (whose config must be the folder's). All checks above.
LoadReport load_hf_weights(const std::string& dir, Model& model);

// config + weights in one call.
struct LoadedModel {
  Config config;
  std::unique_ptr<Model> model;
  LoadReport report;
};
LoadedModel load_model_dir(const std::string& dir);

struct ExportOptions {
  DType dtype = DType::F32;                       // F32, BF16 or F16 (F16 not yet: F32 / BF16)
  int64_t max_shard_bytes = 2LL * 1024 * 1024 * 1024;  // a shard holds at most this many tensor bytes
  std::string tokenizer;                          // tokenizer.json to copy beside (and its tokenizer_config.json)
};
// Writes DIR as a HF checkpoint the official modeling code loads: config.json (HF keys, dsmoe's own
// keys kept for an exact reload, no "training"), model.safetensors or shards + index. Stale
// model*.safetensors / index files of an earlier export in DIR are removed first.
// Returns the number of shard files.
int64_t export_hf(const std::string& dir, const Config& cfg, const Model& model, const ExportOptions& o);

}  // namespace dsmoe
