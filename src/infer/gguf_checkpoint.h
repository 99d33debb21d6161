// DeepSeekMoE models as GGUF files of llama.cpp's architecture "deepseek" (DeepSeek v1 / DeepSeekMoE),
// the layout llama.cpp's convert_hf_to_gguf.py writes for DeepseekForCausalLM:
//   token_embd, output_norm, output (absent = tied to token_embd);
//   blk.N.attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm;
//   dense layers (N < leading_dense_block_count): blk.N.ffn_gate, ffn_up, ffn_down;
//   MoE layers: blk.N.ffn_gate_inp (router, F32), ffn_{gate,up,down}_exps (experts stacked, the
//   slowest dimension), ffn_{gate,up,down}_shexp (the shared experts as one MLP of
//   n_shared * expert_feed_forward_length).
// attn_q / attn_k rows are permuted within each head from HF's rotate-half order to the
// interleaved pairs of llama.cpp's "normal" RoPE (the converter's permute); import undoes it.
// Keys: deepseek.{context_length, embedding_length, feed_forward_length, block_count,
// attention.head_count(_kv), attention.layer_norm_rms_epsilon, rope.dimension_count, rope.freq_base,
// rope.scaling.type, leading_dense_block_count, vocab_size, expert_feed_forward_length,
// expert_weights_scale, expert_count, expert_used_count, expert_shared_count}, general.*, and the
// tokenizer (infer/gguf_vocab.h).
//
// llama.cpp's "deepseek" graph never renormalises the top-k gate weights, routes every layer from
// leading_dense_block_count on, needs shared experts and uses softmax gates: export refuses a model
// that it would compute differently (norm_topk_prob true, moe_layer_freq > 1, a hash router, no
// shared experts, sigmoid scoring) or that is not its MoE model (a dense model), naming the key;
// import sets norm_topk_prob false and refuses keys dsmoe cannot honour (expert_weights_scale != 1,
// RoPE scaling, partial RoPE).
//
// Import reads F32, F16, BF16, Q8_0 and Q4_0 tensors and converts each into the storage asked for
// (dsmoe's q8/q4 use bf16 scales and 15 levels for q4, so ggml blocks are dequantized to fp32 and,
// for q8/q4 storage, requantized: only f32 storage holds a Q8_0/Q4_0 file's weights exactly).
#pragma once
#include <string>

#include "infer/hf_checkpoint.h"
#include "infer/gguf_vocab.h"
#include "io/gguf.h"

namespace dsmoe {

// True if `path` is a regular file that starts with the GGUF magic.
bool is_gguf_file(const std::string& path);

// The model config a GGUF file describes (validated like a config.json; errors name file and key).
Config load_gguf_config(const GgufFile& f);

// Fills `w` (allocated for the file's config) from the file's tensors, checking names, shapes,
// types and finite values.
LoadReport load_gguf_weights_into(const GgufFile& f, InferenceWeights& w, const TensorProgress& progress = {});

// What load_inference_model / load_model_dir do for a GGUF file. Storage `none`: f32, or bf16 when
// the file's output (or token_embd) tensor is BF16.
InferenceModel load_gguf_inference_model(const std::string& path, std::optional<ops::WType> type,
                                         const TensorProgress& progress = {});
LoadedModel load_gguf_model(const std::string& path, const TensorProgress& progress = {});

struct GgufExportOptions {
  GgmlType type = GgmlType::F32;  // of the matrices; norms and the router stay F32
  std::string name;               // general.name
  TensorProgress progress;
};
// Checks that llama.cpp's "deepseek" computes `cfg` as dsmoe does (see above; fails naming the key).
void check_gguf_exportable(const ModelConfig& cfg);
// Writes FILE: the model's weights in o.type, its config and the tokenizer.
void export_gguf(const std::string& file, const Config& cfg, const Model& model, const GgufTokenizerSource& tokenizer,
                 const GgufExportOptions& o);

}  // namespace dsmoe
