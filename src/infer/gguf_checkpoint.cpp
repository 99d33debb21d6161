#include "infer/gguf_checkpoint.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sys/stat.h>

#include "core/bf16.h"
#include "core/error.h"

namespace dsmoe {

using json = nlohmann::json;

namespace {

const char* kArch = "deepseek";
std::string key(const std::string& k) { return std::string(kArch) + "." + k; }

// One GGUF tensor: the HF tensors it is made of (rows of the same width, concatenated: one, or one
// per expert for the stacked *_exps), its ggml shape, and whether its rows are RoPE-permuted.
struct GgufSpec {
  std::string name;
  std::vector<const HfTensor*> parts;
  std::vector<int64_t> ne;
  int64_t permute_heads = 0;  // > 0: attn_q / attn_k rows, permuted within each of this many heads
  bool keep_f32 = false;      // norms and the router
};

std::vector<GgufSpec> gguf_layout(const ModelConfig& m, const ParamLayout& layout) {
  auto hf = [&](const std::string& n) {
    const HfTensor* t = layout.find_hf(n);
    DSMOE_ASSERT(t, "no HF tensor {}", n);
    return t;
  };
  std::vector<GgufSpec> out;
  auto one = [&](const std::string& name, const std::string& hfname, int64_t heads = 0) {
    const HfTensor* t = hf(hfname);
    GgufSpec s{name, {t}, {}, heads, t->shape.size() == 1};
    for (auto it = t->shape.rbegin(); it != t->shape.rend(); ++it) s.ne.push_back(*it);
    out.push_back(s);
  };
  one("token_embd.weight", "model.embed_tokens.weight");
  for (int64_t l = 0; l < m.num_hidden_layers; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".", h = "model.layers." + std::to_string(l) + ".";
    one(b + "attn_norm.weight", h + "input_layernorm.weight");
    one(b + "attn_q.weight", h + "self_attn.q_proj.weight", m.num_attention_heads);
    one(b + "attn_k.weight", h + "self_attn.k_proj.weight", m.num_key_value_heads);
    one(b + "attn_v.weight", h + "self_attn.v_proj.weight");
    one(b + "attn_output.weight", h + "self_attn.o_proj.weight");
    one(b + "ffn_norm.weight", h + "post_attention_layernorm.weight");
    if (!m.is_moe_layer(l)) {
      one(b + "ffn_gate.weight", h + "mlp.gate_proj.weight");
      one(b + "ffn_up.weight", h + "mlp.up_proj.weight");
      one(b + "ffn_down.weight", h + "mlp.down_proj.weight");
      continue;
    }
    one(b + "ffn_gate_inp.weight", h + "mlp.gate.weight");
    out.back().keep_f32 = true;
    for (const char* p : {"gate", "up", "down"}) {
      GgufSpec s{b + "ffn_" + p + "_exps.weight", {}, {}, 0, false};
      for (int64_t e = 0; e < m.n_routed_experts; ++e)
        s.parts.push_back(hf(h + "mlp.experts." + std::to_string(e) + "." + p + "_proj.weight"));
      s.ne = {s.parts[0]->shape[1], s.parts[0]->shape[0], m.n_routed_experts};
      out.push_back(s);
    }
    if (m.n_shared_experts > 0) {
      one(b + "ffn_gate_shexp.weight", h + "mlp.shared_experts.gate_proj.weight");
      one(b + "ffn_up_shexp.weight", h + "mlp.shared_experts.up_proj.weight");
      one(b + "ffn_down_shexp.weight", h + "mlp.shared_experts.down_proj.weight");
    }
  }
  one("output_norm.weight", "model.norm.weight");
  one("output.weight", "lm_head.weight");
  return out;
}

// Row r of a RoPE-permuted tensor (GGUF order) holds HF row hf_row(r): within each head of D rows,
// GGUF row 2i + j is HF row j * D/2 + i (HF rotates the halves [0, D/2) and [D/2, D); llama.cpp's
// normal RoPE rotates the pairs (2i, 2i + 1)).
int64_t hf_row(int64_t r, int64_t D) {
  const int64_t head = r / D, w = r % D, i = w / 2, j = w % 2;
  return head * D + j * (D / 2) + i;
}

std::string ne_str(const std::vector<int64_t>& ne) {
  std::string s = "[";
  for (size_t k = 0; k < ne.size(); ++k) s += (k ? ", " : "") + std::to_string(ne[k]);
  return s + "]";
}

}  // namespace

bool is_gguf_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && std::memcmp(magic, "GGUF", 4) == 0;
}

// ---------------------------------------------------------------- config

Config load_gguf_config(const GgufFile& f) {
  const std::string& path = f.path();
  const std::string arch = f.get_string("general.architecture");
  if (arch != kArch)
    fail("{}: general.architecture \"{}\" is not supported: dsmoe runs DeepSeekMoE models (architecture \"deepseek\"{})",
         path, arch, arch.rfind("deepseek", 0) == 0 ? "; DeepSeek-V2/V3 (MLA attention) are other architectures" : "");
  const uint64_t big = (uint64_t)limits::kMaxVocabSize;  // every size below is re-checked by validate()
  auto u = [&](const std::string& k) { return (int64_t)f.get_uint(key(k), big); };
  auto u_or = [&](const std::string& k, int64_t d) { return f.find(key(k)) ? u(k) : d; };
  json j;
  j["model_type"] = "deepseek";
  j["architectures"] = {"DeepseekForCausalLM"};
  j["hidden_size"] = u("embedding_length");
  j["num_hidden_layers"] = u("block_count");
  j["num_attention_heads"] = u("attention.head_count");
  j["num_key_value_heads"] = u_or("attention.head_count_kv", j["num_attention_heads"].get<int64_t>());
  j["intermediate_size"] = u("feed_forward_length");
  j["max_position_embeddings"] = u_or("context_length", 2048);
  j["rms_norm_eps"] = f.get_float(key("attention.layer_norm_rms_epsilon"));
  j["rope_theta"] = f.find(key("rope.freq_base")) ? f.get_float(key("rope.freq_base")) : 10000.0;
  const int64_t n_expert = u_or("expert_count", 0);
  j["first_k_dense_replace"] = u_or("leading_dense_block_count", 0);
  if (n_expert > 0) {
    j["n_routed_experts"] = n_expert;
    j["num_experts_per_tok"] = u("expert_used_count");
    j["moe_intermediate_size"] = u("expert_feed_forward_length");
    j["n_shared_experts"] = u("expert_shared_count");
    if (j["n_shared_experts"] == 0)
      fail("{}: {} is 0: llama.cpp's deepseek architecture needs shared experts", path, key("expert_shared_count"));
  } else {
    j["n_routed_experts"] = nullptr;
    j["n_shared_experts"] = nullptr;
  }
  j["moe_layer_freq"] = 1;
  j["norm_topk_prob"] = false;  // llama.cpp's deepseek graph never renormalises the top-k weights
  j["scoring_func"] = "softmax";
  if (f.find(key("expert_weights_scale")) && f.get_float(key("expert_weights_scale")) != 1.0)
    fail("{}: {} = {} is not supported (dsmoe scales routed experts by 1)", path, key("expert_weights_scale"),
         f.get_float(key("expert_weights_scale")));
  if (f.find(key("expert_gating_func")) && f.get_uint(key("expert_gating_func"), 100) != 1)
    fail("{}: {} = {} is not supported (expected 1, softmax)", path, key("expert_gating_func"),
         f.get_uint(key("expert_gating_func"), 100));
  if (f.find(key("rope.scaling.type")) && f.get_string(key("rope.scaling.type")) != "none")
    fail("{}: {} \"{}\" is not supported (dsmoe runs plain RoPE: none)", path, key("rope.scaling.type"),
         f.get_string(key("rope.scaling.type")));
  const int64_t H = j["hidden_size"], heads = j["num_attention_heads"];
  if (heads > 0 && H % heads == 0) {
    const int64_t D = H / heads;
    for (const char* k : {"rope.dimension_count", "attention.key_length", "attention.value_length"})
      if (f.find(key(k)) && u(k) != D)
        fail("{}: {} = {} is not supported (dsmoe needs the head size embedding_length / head_count = {})", path,
             key(k), u(k), D);
  }
  // vocab_size: the key when present, else the token list, else the embedding's rows.
  int64_t vocab = 0;
  if (f.find(key("vocab_size"))) vocab = u("vocab_size");
  else if (f.find("tokenizer.ggml.tokens")) vocab = (int64_t)f.get_array("tokenizer.ggml.tokens", GgufType::STRING).count;
  else if (const GgufTensor* t = f.find_tensor("token_embd.weight"); t && t->ne.size() == 2) vocab = t->ne[1];
  else fail("{}: no vocabulary size ({} or tokenizer.ggml.tokens)", path, key("vocab_size"));
  j["vocab_size"] = vocab;
  auto id_or = [&](const char* k, int64_t d) {
    return f.find(k) ? (int64_t)f.get_uint(k, (uint64_t)limits::kMaxVocabSize) : d;
  };
  j["bos_token_id"] = id_or("tokenizer.ggml.bos_token_id", -1);
  j["eos_token_id"] = id_or("tokenizer.ggml.eos_token_id", -1);
  j["training"] = {{"seq_len", std::max<int64_t>(1, std::min<int64_t>(256, j["max_position_embeddings"].get<int64_t>()))}};
  return parse_config(j, path);
}

// ---------------------------------------------------------------- import

namespace {

// The file's tensor for `s` (llama.cpp's tied embeddings: token_embd.weight stands for output.weight).
const GgufTensor* tensor_for(const GgufFile& f, const GgufSpec& s) {
  const GgufTensor* t = f.find_tensor(s.name);
  if (!t && s.name == "output.weight") t = f.find_tensor("token_embd.weight");
  return t;
}

// The tensors the file's metadata calls for, each checked present with its shape, and nothing else
// in the file: done before any weight memory is allocated, so that metadata announcing a model the
// file does not hold is refused at the cost of reading its tensor list.
std::vector<GgufSpec> checked_gguf_specs(const GgufFile& f, const ModelConfig& m, const ParamLayout& layout) {
  const std::string& path = f.path();
  std::vector<GgufSpec> specs = gguf_layout(m, layout);
  std::set<std::string> expected;
  for (const auto& s : specs) expected.insert(s.name);
  for (const GgufTensor& t : f.tensors())
    if (!expected.count(t.name))
      fail("{}: unexpected tensor '{}' (not part of a deepseek model with this file's metadata)", path, t.name);
  for (const GgufSpec& s : specs) {
    const GgufTensor* t = tensor_for(f, s);
    if (!t) fail("{}: missing tensor '{}' (ggml shape {})", path, s.name, ne_str(s.ne));
    if (t->ne != s.ne)
      fail("{}: tensor '{}' has ggml shape {}, expected {} (from the file's metadata)", path, t->name, ne_str(t->ne),
           ne_str(s.ne));
  }
  return specs;
}

void check_gguf_tensors(const GgufFile& f, const ModelConfig& m) { checked_gguf_specs(f, m, ParamLayout(m)); }

}  // namespace

LoadReport load_gguf_weights_into(const GgufFile& f, InferenceWeights& w, const TensorProgress& progress) {
  const ModelConfig& m = w.config();
  const ParamLayout layout(m);
  const std::vector<GgufSpec> specs = checked_gguf_specs(f, m, layout);
  const std::string& path = f.path();
  LoadReport rep;
  rep.files = 1;
  std::vector<float> row, tmp;
  int64_t done = 0;
  for (const GgufSpec& s : specs) {
    const GgufTensor* t = tensor_for(f, s);
    rep.tensors++;
    rep.bytes_read += (int64_t)t->nbytes;
    rep.f32 += t->type == GgmlType::F32;
    rep.bf16 += t->type == GgmlType::BF16;
    rep.f16 += t->type == GgmlType::F16;
    rep.quantized += t->type == GgmlType::Q8_0 || t->type == GgmlType::Q4_0;
    const int64_t cols = s.ne[0], row_bytes = ggml_row_bytes(t->type, cols);
    int64_t src_row = 0;
    for (const HfTensor* h : s.parts) {
      InferenceWeights::Slot& slot = w.slot_at(h->offset);
      const int64_t rows = h->numel / cols, r0 = (h->offset - slot.t.offset) / cols;
      DSMOE_ASSERT(slot.mat.cols == cols || !slot.is_matrix, "slot cols of {}", h->name);
      tmp.resize((size_t)h->numel);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t hf_r = s.permute_heads ? hf_row(r, rows / s.permute_heads) : r;  // GGUF row r holds it
        dequantize_row(t->type, t->data + (src_row + r) * row_bytes, cols, tmp.data() + hf_r * cols);
      }
      for (int64_t i = 0; i < h->numel; ++i)
        if (!std::isfinite(tmp[i]))
          fail("{}: tensor '{}' holds a non-finite value ({}) at element {}: corrupted file?", path, t->name, tmp[i],
               src_row * cols + i);
      const ops::WeightMat dst = slot.mat.slice_rows(r0, rows);
      if (slot.mat.type == ops::WType::F32) std::memcpy((void*)dst.data, tmp.data(), tmp.size() * 4);
      else ops::quantize_rows(slot.mat.type, tmp.data(), rows, cols, (void*)dst.data, (uint16_t*)dst.scales);
      src_row += rows;
    }
    if (progress) progress(++done, (int64_t)specs.size());
  }
  return rep;
}

static std::optional<ops::WType> gguf_native_storage(const GgufFile& f) {
  const GgufTensor* t = f.find_tensor("output.weight");
  if (!t) t = f.find_tensor("token_embd.weight");
  return t && t->type == GgmlType::BF16 ? std::optional(ops::WType::BF16) : std::nullopt;
}

InferenceModel load_gguf_inference_model(const std::string& path, std::optional<ops::WType> type,
                                         const TensorProgress& progress) {
  const GgufFile f(path);
  InferenceModel im;
  im.config = load_gguf_config(f);
  const ops::WType t = type ? *type : gguf_native_storage(f).value_or(ops::WType::F32);
  check_gguf_tensors(f, im.config.model);
  im.weights = std::make_unique<InferenceWeights>(InferenceWeights::allocate(im.config.model, t));
  im.report = load_gguf_weights_into(f, *im.weights, progress);
  return im;
}

LoadedModel load_gguf_model(const std::string& path, const TensorProgress& progress) {
  const GgufFile f(path);
  LoadedModel lm;
  lm.config = load_gguf_config(f);
  check_gguf_tensors(f, lm.config.model);
  lm.model = std::make_unique<Model>(lm.config.model);
  InferenceWeights view = InferenceWeights::view(*lm.model);
  lm.report = load_gguf_weights_into(f, view, progress);
  return lm;
}

// ---------------------------------------------------------------- export

void check_gguf_exportable(const ModelConfig& m) {
  const char* why = "llama.cpp's deepseek architecture would compute a different model";
  if (m.norm_topk_prob)
    fail("export --format gguf: norm_topk_prob is true, but llama.cpp's deepseek graph never renormalises the top-k "
         "gate weights: {} (export a model trained with norm_topk_prob false, or use the HF format)", why);
  if (!m.is_moe())
    fail("export --format gguf: a dense model (n_routed_experts 0) is not exported: llama.cpp's deepseek architecture "
         "is the MoE model (expert_count > 0); use the HF format");
  {
    if (m.router_type != RouterType::SoftmaxTopK)
      fail("export --format gguf: router_type \"{}\" is not expressible: {} (softmax top-k gates only)",
           router_type_name(m.router_type), why);
    if (m.group_limited())
      fail("export --format gguf: topk_method \"group_limited_greedy\" (device-limited routing): {} (plain top-k "
           "over all routed experts only); use the HF format", why);
    if (m.scoring_func != "softmax")
      fail("export --format gguf: scoring_func \"{}\": {} (softmax gates only)", m.scoring_func, why);
    if (m.moe_layer_freq != 1)
      fail("export --format gguf: moe_layer_freq {}: {} (every layer from first_k_dense_replace on is MoE there)",
           m.moe_layer_freq, why);
    if (m.n_shared_experts <= 0)
      fail("export --format gguf: n_shared_experts is 0, but llama.cpp's deepseek architecture requires shared experts");
  }
  if (m.hidden_act != "silu") fail("export --format gguf: hidden_act \"{}\": {} (SiLU only)", m.hidden_act, why);
}

namespace {

uint32_t file_type_of(GgmlType t) {  // llama.cpp's LLAMA_FTYPE numbering (general.file_type)
  switch (t) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q8_0: return 7;
    case GgmlType::BF16: return 32;
  }
  return 0;
}

// The bytes of one GGUF tensor from the model's fp32 parameters, in type t.
void encode_tensor(const GgufSpec& s, const float* params, GgmlType t, std::vector<uint8_t>& out) {
  const int64_t cols = s.ne[0];
  const int64_t row_bytes = ggml_row_bytes(t, cols);
  int64_t rows_all = 0;
  for (const HfTensor* h : s.parts) rows_all += h->numel / cols;
  out.resize((size_t)(rows_all * row_bytes));
  int64_t r_out = 0;
  for (const HfTensor* h : s.parts) {
    const int64_t rows = h->numel / cols;
    for (int64_t r = 0; r < rows; ++r, ++r_out) {
      const int64_t src = s.permute_heads ? hf_row(r, rows / s.permute_heads) : r;
      const float* x = params + h->offset + src * cols;
      uint8_t* o = out.data() + r_out * row_bytes;
      switch (t) {
        case GgmlType::F32: std::memcpy(o, x, (size_t)cols * 4); break;
        case GgmlType::BF16:
          for (int64_t c = 0; c < cols; ++c) {
            const uint16_t v = f32_to_bf16(x[c]);
            std::memcpy(o + 2 * c, &v, 2);
          }
          break;
        case GgmlType::Q8_0: quantize_row_q8_0(x, cols, o); break;
        case GgmlType::Q4_0: quantize_row_q4_0(x, cols, o); break;
        case GgmlType::F16: DSMOE_ASSERT(false, "F16 export is not offered"); break;
      }
    }
  }
}

}  // namespace

void export_gguf(const std::string& file, const Config& cfg, const Model& model, const GgufTokenizerSource& tokenizer,
                 const GgufExportOptions& o) {
  const ModelConfig& m = cfg.model;
  check_gguf_exportable(m);
  if (o.type == GgmlType::F16) fail("export --format gguf: type f16 is not offered (f32, bf16, q8_0 or q4_0)");
  const ParamLayout layout(m);
  const std::vector<GgufSpec> specs = gguf_layout(m, layout);
  if (o.type == GgmlType::Q8_0 || o.type == GgmlType::Q4_0)
    for (const GgufSpec& s : specs)
      if (!s.keep_f32 && s.ne[0] % kGgmlBlock != 0)
        fail("export --format gguf --type {}: tensor '{}' has rows of {} values, not a multiple of {} (ggml's block); "
             "use --type f32 or bf16",
             ggml_type_name((uint32_t)o.type), s.name, s.ne[0], kGgmlBlock);
  GgufWriter w;
  w.add_string("general.architecture", kArch);
  w.add_string("general.name", o.name.empty() ? "dsmoe" : o.name);
  w.add_u32("general.file_type", file_type_of(o.type));
  if (o.type == GgmlType::Q8_0 || o.type == GgmlType::Q4_0) w.add_u32("general.quantization_version", 2);
  w.add_u32(key("block_count"), (uint32_t)m.num_hidden_layers);
  w.add_u32(key("context_length"), (uint32_t)m.max_position_embeddings);
  w.add_u32(key("embedding_length"), (uint32_t)m.hidden_size);
  w.add_u32(key("feed_forward_length"), (uint32_t)m.intermediate_size);
  w.add_u32(key("attention.head_count"), (uint32_t)m.num_attention_heads);
  w.add_u32(key("attention.head_count_kv"), (uint32_t)m.num_key_value_heads);
  w.add_f32(key("rope.freq_base"), (float)m.rope_theta);
  w.add_f32(key("attention.layer_norm_rms_epsilon"), (float)m.rms_norm_eps);
  w.add_u32(key("rope.dimension_count"), (uint32_t)m.head_dim());
  w.add_string(key("rope.scaling.type"), "none");
  w.add_u32(key("leading_dense_block_count"), (uint32_t)std::min(m.first_k_dense_replace, m.num_hidden_layers));
  w.add_u32(key("vocab_size"), (uint32_t)m.vocab_size);
  w.add_u32(key("expert_count"), (uint32_t)m.n_routed_experts);
  w.add_u32(key("expert_used_count"), (uint32_t)m.num_experts_per_tok);
  w.add_u32(key("expert_feed_forward_length"), (uint32_t)m.moe_intermediate_size);
  w.add_f32(key("expert_weights_scale"), 1.0f);
  w.add_u32(key("expert_shared_count"), (uint32_t)m.n_shared_experts);
  write_gguf_vocab(w, tokenizer, m);
  const float* p = model.params().data();
  for (const GgufSpec& s : specs) {
    const GgmlType t = s.keep_f32 ? GgmlType::F32 : o.type;
    w.add_tensor(s.name, t, s.ne, [&s, p, t](std::vector<uint8_t>& b) { encode_tensor(s, p, t, b); });
  }
  w.write(file, o.progress);
}

}  // namespace dsmoe
