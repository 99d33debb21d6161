// Hugging Face DeepSeekMoE checkpoints (deepseek-moe-16b-base / -chat layout):
//   DIR/config.json                      DeepseekConfig keys; absent keys take the config-class defaults
//   DIR/model.safetensors                one file, or
//   DIR/model.safetensors.index.json     {"metadata": {...}, "weight_map": {tensor: shard file}} plus
//   DIR/model-0000i-of-0000n.safetensors the shards
//   DIR/tokenizer.json, tokenizer_config.json (read by the CLI, not here)
// A dsmoe run folder (config.json + checkpoint.safetensors, which stores the weights under the same
// HF names) loads through the same code.
//
// Loading memory-maps one file at a time and converts every tensor (F32, BF16 or F16, or quantized)
// straight into its final storage: the fp32 parameters of a Model, or the InferenceWeights of the
// engine in f32 / bf16 (a plain copy of BF16 checkpoints) / q8 / q4. That storage is the only
// resident copy of the weights (the mapping is file-backed page cache, dropped when the file is
// closed). Every expected tensor is checked for presence, shape, dtype and finite values; errors
// name the tensor and the file.
//
// Quantized folders (written by `dsmoe quantize`, read by every command that takes --model):
//   config.json   the model's config plus
//                   "quantization_config": {"quant_method": "dsmoe", "format": "q8_0" | "q4_0",
//                                           "block_size": 32, "scale_dtype": "bfloat16",
//                                           "scale_suffix": "_scale", ...}
//   safetensors   the same file layout and tensor names as a HF checkpoint, where every matrix but
//                 the router (embed_tokens, q/k/v/o_proj, gate/up/down_proj of the dense MLP, the
//                 shared and the routed experts, lm_head) [out, in] is stored as
//                   NAME          q8_0: I8 [out, in], the quantized values q in [-127, 127]
//                                 q4_0: U8 [out, ceil(in/32) * 16], per block of 32 inputs 16 bytes,
//                                       byte j = (q[j] + 8) | (q[j + 16] + 8) << 4, q in [-7, 7]
//                   NAME_scale    BF16 [out, ceil(in/32)], the block scale d: w = q * d
//                 in the same shard as NAME; the router (mlp.gate) and the norm weights stay F32.
// The loader refuses a folder whose quantization_config, dtypes or shapes disagree with this,
// naming the file, the tensor and what was expected.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "infer/infer_weights.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"

namespace dsmoe {

// DIR/config.json of a HF checkpoint (or a dsmoe run folder). Refuses a model_type other than
// "deepseek" and an `architectures` list without "DeepseekForCausalLM", naming the file and key.
Config load_hf_config(const std::string& dir);

// Called after each tensor read or written: (tensors done, tensors in all), for progress.
using TensorProgress = std::function<void(int64_t, int64_t)>;

// What a model folder holds.
enum class ModelDirKind { HfSingle, HfSharded, DsmoeRun };
ModelDirKind model_dir_kind(const std::string& dir);  // fails if the folder holds no weights

inline constexpr const char* kScaleSuffix = "_scale";

struct LoadReport {
  int64_t files = 0;
  int64_t tensors = 0;
  int64_t bytes_read = 0;           // bytes of tensor data on disk
  int64_t f32 = 0, bf16 = 0, f16 = 0;  // tensors per stored dtype
  int64_t quantized = 0;            // I8 / U8 tensors (each with its scale tensor)
  ops::WType stored = ops::WType::F32;  // q8 / q4 for a quantized folder
};

// DIR/config.json's quantization_config: none for a plain checkpoint, else the storage it declares
// (validated: method, format, block size, scale dtype and suffix; errors name the file and field).
std::optional<ops::WType> stored_quantization(const std::string& dir);

// Loads the weights of DIR into `w` (built for the folder's config), converting every tensor into
// the storage of its slot. Plain or quantized folders; all checks above, and each tensor's stored
// checksum (a dsmoe-written file's) unless checksums = Skip (--no-verify).
LoadReport load_weights_into(const std::string& dir, InferenceWeights& w, const TensorProgress& progress = {},
                             Checksums checksums = Checksums::Verify);

// Loads the weights of DIR into `model` (whose config must be the folder's), fp32 (a quantized
// folder is dequantized). All checks above.
LoadReport load_hf_weights(const std::string& dir, Model& model, Checksums checksums = Checksums::Verify);

// config + weights in one call.
struct LoadedModel {
  Config config;
  std::unique_ptr<Model> model;
  LoadReport report;
};
LoadedModel load_model_dir(const std::string& dir, const TensorProgress& progress = {},
                           Checksums checksums = Checksums::Verify);

// A model for inference, weights in the storage `type`; none = the folder's own: a quantized folder
// its q8 / q4, a BF16 checkpoint bf16 (a plain copy), anything else f32. With a shard, only its
// routed experts are allocated and read (expert-parallel inference; not for GGUF files).
struct InferenceModel {
  Config config;
  std::unique_ptr<InferenceWeights> weights;
  LoadReport report;
};
InferenceModel load_inference_model(const std::string& dir, std::optional<ops::WType> type = std::nullopt,
                                    const TensorProgress& progress = {}, Checksums checksums = Checksums::Verify,
                                    ExpertShard shard = {});

struct ExportOptions {
  DType dtype = DType::F32;                       // F32, BF16 or F16 (F16 not yet: F32 / BF16)
  int64_t max_shard_bytes = 2LL * 1024 * 1024 * 1024;  // a shard holds at most this many tensor bytes
  TensorProgress progress;                        // after each tensor written
};
// Writes the weights and config of a HF checkpoint the official modeling code loads into DIR
// (created): config.json (HF keys, dsmoe's own keys kept for an exact reload, no "training"),
// model.safetensors or shards + index. Stale model*.safetensors / index files of an earlier write in
// DIR are removed first. The tokenizer files are infer/model_files.h's. Writing a folder users keep
// goes through io/output_dir.h's StagedOutput (atomic, never over what dsmoe did not write).
// Returns the number of shard files.
int64_t export_hf(const std::string& dir, const Config& cfg, const Model& model, const ExportOptions& o);

// Writes a quantized folder (format above) of `w` (q8 or q4 storage) into DIR, as export_hf does.
// o.dtype is ignored. Returns the number of shards.
int64_t write_quantized(const std::string& dir, const Config& cfg, const InferenceWeights& w, const ExportOptions& o);

}  // namespace dsmoe
