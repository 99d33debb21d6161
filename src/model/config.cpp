#include "model/config.h"

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <utility>
#include <set>
#include <vector>

#include "core/edit_distance.h"
#include "core/error.h"
#include "core/path_exists.h"
#include "io/safetensors.h"

namespace dsmoe {

using json = nlohmann::json;

const char* router_type_name(RouterType r) { return r == RouterType::Hash ? "hash" : "softmax_topk"; }
const char* topk_method_name(TopkMethod t) {
  return t == TopkMethod::GroupLimitedGreedy ? "group_limited_greedy" : "greedy";
}

// Experts lie in contiguous groups (routing) and contiguous devices (the D of the losses); a token's
// experts are in at most topk_group groups, and group g's experts span devices
// [g*per_group/per_device, ((g+1)*per_group - 1)/per_device]. M is bounded by k, by D and by the
// topk_group widest spans together (exact when groups and devices nest, as in DeepSeek-V2: one group
// per device).
int64_t ModelConfig::comm_device_limit() const {
  const int64_t D = n_device_groups, E = n_routed_experts;
  int64_t M = std::min(num_experts_per_tok, D);
  if (group_limited() && E > 0) {
    const int64_t per_group = E / n_group, per_device = E / D;
    std::vector<int64_t> span((size_t)n_group);
    for (int64_t g = 0; g < n_group; ++g)
      span[(size_t)g] = ((g + 1) * per_group - 1) / per_device - (g * per_group) / per_device + 1;
    std::sort(span.begin(), span.end(), std::greater<int64_t>());
    int64_t widest = 0;
    for (int64_t g = 0; g < topk_group; ++g) widest += span[(size_t)g];
    M = std::min(M, widest);
  }
  return std::max<int64_t>(M, 1);
}

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::Step: return "step";
    case Schedule::Cosine: return "cosine";
    case Schedule::Constant: return "constant";
  }
  return "?";
}

namespace {

// Reads j[key] into out when present (and not null), checking the JSON type.
struct Reader {
  const json& j;
  const std::string& source;
  std::string prefix;

  const json* find(const char* key) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return nullptr;
    return &*it;
  }
  void get(const char* key, int64_t& out) const {
    if (auto v = find(key)) {
      // An unsigned value above INT64_MAX would wrap to a negative one in get<int64_t>().
      if (v->is_number_unsigned() && v->get<uint64_t>() > (uint64_t)INT64_MAX)
        fail("{}: key '{}{}' = {} does not fit a 64-bit signed integer", source, prefix, key, v->dump());
      if (v->is_number_integer()) out = v->get<int64_t>();
      else if (v->is_number_float() && std::floor(v->get<double>()) == v->get<double>() &&
               std::fabs(v->get<double>()) < 9.2e18)  // in int64 range: the cast is defined
        out = (int64_t)v->get<double>();
      else fail("{}: key '{}{}' must be an integer, got {}", source, prefix, key, v->dump());
    }
  }
  void get(const char* key, uint64_t& out) const {
    int64_t v = (int64_t)out;
    get(key, v);
    if (v < 0) fail("{}: key '{}{}' must be non-negative, got {}", source, prefix, key, v);
    out = (uint64_t)v;
  }
  void get(const char* key, double& out) const {
    if (auto v = find(key)) {
      if (!v->is_number()) fail("{}: key '{}{}' must be a number, got {}", source, prefix, key, v->dump());
      out = v->get<double>();
      if (!std::isfinite(out)) fail("{}: key '{}{}' must be a finite number, got {}", source, prefix, key, v->dump());
    }
  }
  void get(const char* key, bool& out) const {
    if (auto v = find(key)) {
      if (!v->is_boolean()) fail("{}: key '{}{}' must be true or false, got {}", source, prefix, key, v->dump());
      out = v->get<bool>();
    }
  }
  void get(const char* key, std::string& out) const {
    if (auto v = find(key)) {
      if (!v->is_string()) fail("{}: key '{}{}' must be a string, got {}", source, prefix, key, v->dump());
      out = v->get<std::string>();
    }
  }
  // A string key naming one of `choices`; any other string is refused, listing them.
  template <class Enum>
  void get_choice(const char* key, Enum& out, std::initializer_list<std::pair<const char*, Enum>> choices) const {
    if (!find(key)) return;
    std::string name;
    get(key, name);
    std::string names;
    size_t i = 0;
    for (const auto& [n, e] : choices) {
      if (name == n) {
        out = e;
        return;
      }
      names += fmt::format("{}\"{}\"", i == 0 ? "" : i + 1 == choices.size() ? " or " : ", ", n);
      ++i;
    }
    fail("{}: key '{}{}' must be {}, got \"{}\"", source, prefix, key, names, name);
  }
};

// HF / transformers keys that may appear in a config.json and that dsmoe accepts without using.
const std::set<std::string> kIgnoredHfKeys = {
    "architectures", "auto_map", "model_type", "torch_dtype", "transformers_version", "use_cache",
    "pretraining_tp", "pad_token_id", "_name_or_path", "attention_dropout", "attention_bias", "rope_scaling",
    "initializer_range", "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "use_bfloat16", "tie_encoder_decoder", "is_encoder_decoder", "quantization_config", "training", "parallel",
    "_comment"};  // "_comment": free text, used by configs/ to say what a file is for

}  // namespace

Config parse_config(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: a config must be a JSON object", source);
  Config c;
  ModelConfig& m = c.model;
  Reader r{j, source, ""};
  static const char* model_keys[] = {
      "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
      "num_attention_heads", "num_key_value_heads", "n_shared_experts", "n_routed_experts",
      "num_experts_per_tok", "moe_layer_freq", "first_k_dense_replace", "norm_topk_prob", "scoring_func",
      "aux_loss_alpha", "seq_aux", "hidden_act", "max_position_embeddings", "rms_norm_eps",
      "tie_word_embeddings", "rope_theta", "bos_token_id", "eos_token_id", "router_type", "capacity_factor",
      "n_device_groups", "device_aux_alpha", "topk_method", "n_group", "topk_group", "comm_aux_alpha"};
  std::set<std::string> known(std::begin(model_keys), std::end(model_keys));
  // Unknown keys: a near-miss of a key we read is almost surely a typo that would silently change
  // the model (e.g. a dense model instead of an MoE one), so it is an error; anything else (other
  // transformers fields) is ignored with a warning.
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (known.count(it.key()) || kIgnoredHfKeys.count(it.key())) continue;
    for (const auto& k : known)
      if (edit_distance(it.key(), k) <= 2)
        fail("{}: unknown key '{}' (did you mean '{}'?)", source, it.key(), k);
    std::fprintf(stderr, "dsmoe: warning: %s: unknown config key '%s' ignored\n", source.c_str(), it.key().c_str());
  }

  if (j.contains("model_type") && j["model_type"] != "deepseek")
    fail("{}: model_type must be \"deepseek\" (DeepSeekMoE), got {}", source, j["model_type"].dump());
  r.get("vocab_size", m.vocab_size);
  r.get("hidden_size", m.hidden_size);
  r.get("intermediate_size", m.intermediate_size);
  r.get("moe_intermediate_size", m.moe_intermediate_size);
  r.get("num_hidden_layers", m.num_hidden_layers);
  r.get("num_attention_heads", m.num_attention_heads);
  m.num_key_value_heads = m.num_attention_heads;
  r.get("num_key_value_heads", m.num_key_value_heads);
  r.get("n_shared_experts", m.n_shared_experts);
  r.get("n_routed_experts", m.n_routed_experts);
  r.get("num_experts_per_tok", m.num_experts_per_tok);
  r.get("moe_layer_freq", m.moe_layer_freq);
  r.get("first_k_dense_replace", m.first_k_dense_replace);
  r.get("norm_topk_prob", m.norm_topk_prob);
  r.get("scoring_func", m.scoring_func);
  r.get("aux_loss_alpha", m.aux_loss_alpha);
  r.get("seq_aux", m.seq_aux);
  r.get("hidden_act", m.hidden_act);
  r.get("max_position_embeddings", m.max_position_embeddings);
  r.get("initializer_range", m.initializer_range);
  r.get("rms_norm_eps", m.rms_norm_eps);
  r.get("tie_word_embeddings", m.tie_word_embeddings);
  r.get("rope_theta", m.rope_theta);
  r.get("bos_token_id", m.bos_token_id);
  r.get("eos_token_id", m.eos_token_id);
  r.get_choice("router_type", m.router_type, {{"softmax_topk", RouterType::SoftmaxTopK}, {"hash", RouterType::Hash}});
  r.get("capacity_factor", m.capacity_factor);
  r.get("n_device_groups", m.n_device_groups);
  r.get("device_aux_alpha", m.device_aux_alpha);
  r.get_choice("topk_method", m.topk_method,
               {{"greedy", TopkMethod::Greedy}, {"group_limited_greedy", TopkMethod::GroupLimitedGreedy}});
  r.get("n_group", m.n_group);
  r.get("topk_group", m.topk_group);
  r.get("comm_aux_alpha", m.comm_aux_alpha);
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    fail("{}: key 'rope_scaling' is not supported (expected null)", source);
  // Through the Reader: json::value() would throw nlohmann's type_error for a non-boolean value.
  bool attention_bias = false;
  r.get("attention_bias", attention_bias);
  if (attention_bias)
    fail("{}: key 'attention_bias' must be false (DeepSeekMoE has no biases)", source);

  if (j.contains("training") && !j["training"].is_null()) {
    const json& t = j["training"];
    if (!t.is_object()) fail("{}: key 'training' must be an object", source);
    static const char* train_keys[] = {"lr", "min_lr", "warmup_steps", "steps", "schedule", "beta1", "beta2",
                                       "eps", "weight_decay", "grad_clip", "batch_size", "seq_len",
                                       "grad_accum", "seed", "init_std", "log_interval", "eval_interval",
                                       "eval_batches", "checkpoint_interval", "precision"};
    std::set<std::string> tk(std::begin(train_keys), std::end(train_keys));
    for (auto it = t.begin(); it != t.end(); ++it)
      if (!tk.count(it.key())) fail("{}: unknown key 'training.{}'", source, it.key());
    Reader tr{t, source, "training."};
    TrainConfig& T = c.train;
    tr.get("lr", T.lr);
    tr.get("min_lr", T.min_lr);
    tr.get("warmup_steps", T.warmup_steps);
    tr.get("steps", T.steps);
    tr.get_choice("schedule", T.schedule,
                  {{"step", Schedule::Step}, {"cosine", Schedule::Cosine}, {"constant", Schedule::Constant}});
    tr.get("beta1", T.beta1);
    tr.get("beta2", T.beta2);
    tr.get("eps", T.eps);
    tr.get("weight_decay", T.weight_decay);
    tr.get("grad_clip", T.grad_clip);
    tr.get("batch_size", T.batch_size);
    tr.get("seq_len", T.seq_len);
    tr.get("grad_accum", T.grad_accum);
    tr.get("seed", T.seed);
    tr.get("init_std", T.init_std);
    tr.get("log_interval", T.log_interval);
    tr.get("eval_interval", T.eval_interval);
    tr.get("eval_batches", T.eval_batches);
    tr.get("checkpoint_interval", T.checkpoint_interval);
    std::string precision = ops::precision_name(T.precision);
    tr.get("precision", precision);
    T.precision = ops::parse_precision(precision, fmt::format("{}: key 'training.precision'", source));
  }
  if (j.contains("parallel") && !j["parallel"].is_null()) {
    const json& p = j["parallel"];
    if (!p.is_object()) fail("{}: key 'parallel' must be an object", source);
    for (auto it = p.begin(); it != p.end(); ++it)
      if (it.key() != "expert_parallel_size" && it.key() != "overlap_grad_sync")
        fail("{}: unknown key 'parallel.{}'", source, it.key());
    Reader pr{p, source, "parallel."};
    pr.get("expert_parallel_size", c.parallel.expert_parallel_size);
    pr.get("overlap_grad_sync", c.parallel.overlap_grad_sync);
  }
  validate(c, source);
  return c;
}

void validate(const Config& c, const std::string& source) {
  const ModelConfig& m = c.model;
  auto need = [&](bool ok, const char* key, const std::string& constraint) {
    if (!ok) fail("{}: key '{}' {}", source, key, constraint);
  };
  // Integer keys within [lo, hi]; checked first, so that nothing below loops over or multiplies an
  // unbounded value (num_hidden_layers 1e11 would hang the layer loop, moe_layer_freq 0 divide by 0).
  auto range = [&](int64_t v, const char* key, int64_t lo, int64_t hi) {
    need(v >= lo && v <= hi, key, fmt::format("must be between {} and {}, got {}", lo, hi, v));
  };
  using namespace limits;
  range(m.vocab_size, "vocab_size", 1, kMaxVocabSize);
  range(m.hidden_size, "hidden_size", 1, kMaxHiddenSize);
  range(m.intermediate_size, "intermediate_size", 0, kMaxIntermediateSize);
  range(m.moe_intermediate_size, "moe_intermediate_size", 0, kMaxIntermediateSize);
  range(m.num_hidden_layers, "num_hidden_layers", 1, kMaxLayers);
  range(m.num_attention_heads, "num_attention_heads", 1, kMaxHeads);
  range(m.num_key_value_heads, "num_key_value_heads", 1, kMaxHeads);
  range(m.n_routed_experts, "n_routed_experts", 0, kMaxExperts);
  range(m.n_shared_experts, "n_shared_experts", 0, kMaxExperts);
  range(m.num_experts_per_tok, "num_experts_per_tok", 0, kMaxExperts);
  range(m.moe_layer_freq, "moe_layer_freq", 1, kMaxLayers);
  range(m.first_k_dense_replace, "first_k_dense_replace", 0, kMaxLayers);
  range(m.max_position_embeddings, "max_position_embeddings", 1, kMaxPositions);
  range(m.n_device_groups, "n_device_groups", 1, kMaxExperts);
  range(m.n_group, "n_group", 1, kMaxExperts);
  range(m.topk_group, "topk_group", 1, m.n_group);
  // Token ids: HF configs carry them even when the tokenizer has other ids, so only the range of an
  // id is checked (-1 = none), not membership in the vocabulary.
  range(m.bos_token_id, "bos_token_id", -1, kMaxVocabSize - 1);
  range(m.eos_token_id, "eos_token_id", -1, kMaxVocabSize - 1);
  need(m.hidden_size % m.num_attention_heads == 0, "hidden_size",
       fmt::format("({}) must be divisible by num_attention_heads ({})", m.hidden_size, m.num_attention_heads));
  need(m.head_dim() % 2 == 0, "num_attention_heads",
       fmt::format("must give an even head_dim for RoPE; hidden_size/num_attention_heads = {}", m.head_dim()));
  need(m.num_key_value_heads > 0 && m.num_attention_heads % m.num_key_value_heads == 0, "num_key_value_heads",
       fmt::format("({}) must be > 0 and divide num_attention_heads ({})", m.num_key_value_heads, m.num_attention_heads));
  need(m.rms_norm_eps > 0, "rms_norm_eps", "must be > 0");
  need(m.rope_theta > 0, "rope_theta", "must be > 0");
  need(m.hidden_act == "silu", "hidden_act", fmt::format("must be \"silu\" (SwiGLU), got \"{}\"", m.hidden_act));
  need(!m.tie_word_embeddings, "tie_word_embeddings", "must be false (DeepSeekMoE has an untied lm_head)");
  bool any_dense = false;
  for (int64_t i = 0; i < m.num_hidden_layers; ++i) any_dense |= !m.is_moe_layer(i);
  if (any_dense) need(m.intermediate_size > 0, "intermediate_size", "must be > 0 (the model has dense layers)");
  if (m.is_moe()) {
    need(m.moe_intermediate_size > 0, "moe_intermediate_size", "must be > 0 for an MoE model");
    need(m.num_experts_per_tok >= 1 && m.num_experts_per_tok <= m.n_routed_experts, "num_experts_per_tok",
         fmt::format("must be between 1 and n_routed_experts ({}), got {}", m.n_routed_experts, m.num_experts_per_tok));
    need(m.scoring_func == "softmax", "scoring_func", fmt::format("must be \"softmax\", got \"{}\"", m.scoring_func));
    need(m.aux_loss_alpha >= 0, "aux_loss_alpha", "must be >= 0");
    need(m.router_type != RouterType::Hash || m.num_experts_per_tok == 1, "num_experts_per_tok",
         "must be 1 with router_type \"hash\" (Hash Layer routes each token to one expert)");
    need(m.capacity_factor >= 0, "capacity_factor", "must be >= 0 (0 = dropless)");
    need(m.n_routed_experts % m.n_device_groups == 0, "n_device_groups",
         fmt::format("({}) must divide n_routed_experts ({})", m.n_device_groups, m.n_routed_experts));
    need(m.device_aux_alpha >= 0, "device_aux_alpha", "must be >= 0");
    need(m.comm_aux_alpha >= 0, "comm_aux_alpha", fmt::format("must be >= 0, got {}", m.comm_aux_alpha));
    if (m.group_limited()) {
      need(m.router_type == RouterType::SoftmaxTopK, "topk_method",
           "\"group_limited_greedy\" needs router_type \"softmax_topk\" (a hash router has no scores to rank groups by)");
      need(m.n_routed_experts % m.n_group == 0, "n_group",
           fmt::format("({}) must divide n_routed_experts ({}) with topk_method \"group_limited_greedy\"", m.n_group,
                       m.n_routed_experts));
      const int64_t per_group = m.n_routed_experts / m.n_group;
      need(m.topk_group * per_group >= m.num_experts_per_tok, "topk_group",
           fmt::format("({}) times the {} experts of a group must be at least num_experts_per_tok ({})", m.topk_group,
                       per_group, m.num_experts_per_tok));
    }
  }
  const TrainConfig& t = c.train;
  range(t.steps, "training.steps", 1, kMaxSteps);
  range(t.batch_size, "training.batch_size", 1, kMaxBatch);
  range(t.grad_accum, "training.grad_accum", 1, kMaxBatch);
  range(t.eval_batches, "training.eval_batches", 1, kMaxBatch);
  range(t.log_interval, "training.log_interval", 1, kMaxSteps);
  range(t.eval_interval, "training.eval_interval", 0, kMaxSteps);
  range(t.checkpoint_interval, "training.checkpoint_interval", 0, kMaxSteps);
  need(t.lr > 0, "training.lr", "must be > 0");
  need(t.warmup_steps >= 0 && t.warmup_steps <= t.steps, "training.warmup_steps",
       fmt::format("must be between 0 and training.steps ({}), got {}", t.steps, t.warmup_steps));
  need(t.beta1 >= 0 && t.beta1 < 1, "training.beta1", "must be in [0, 1)");
  need(t.beta2 >= 0 && t.beta2 < 1, "training.beta2", "must be in [0, 1)");
  need(t.eps > 0, "training.eps", "must be > 0");
  need(t.weight_decay >= 0, "training.weight_decay", "must be >= 0");
  need(t.grad_clip >= 0, "training.grad_clip", "must be >= 0 (0 = off)");
  need(t.seq_len > 0 && t.seq_len <= m.max_position_embeddings, "training.seq_len",
       fmt::format("must be between 1 and max_position_embeddings ({}), got {}", m.max_position_embeddings, t.seq_len));
  validate_expert_parallel(m, c.parallel.expert_parallel_size, "parallel.expert_parallel_size", source);
}

void validate_expert_parallel(const ModelConfig& m, int64_t ep, const std::string& key, const std::string& source) {
  if (ep < 1 || ep > limits::kMaxExperts)
    fail("{}: {} must be between 1 and {}, got {}", source, key, limits::kMaxExperts, ep);
  if (ep == 1) return;
  if (!m.is_moe()) fail("{}: {} is {}, but the model is dense (no routed experts to split)", source, key, ep);
  if (m.n_routed_experts % ep != 0)
    fail("{}: {} ({}) must divide n_routed_experts ({}): each rank of an expert-parallel group holds the same number "
         "of routed experts", source, key, ep, m.n_routed_experts);
}

// A config may build on another: {"extends": "base.json", ...}. The base path is relative to the
// extending file; the file's keys replace the base's, except "training", which is merged key by key
// (so a model variant restates only what differs: configs/paper/ is written this way).
static json load_config_json(const std::string& path, int depth) {
  std::string text = read_text_file(path);
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
    fail("{}: not valid JSON: {}", path, e.what());
  }
  if (!j.is_object()) fail("{}: expected a JSON object", path);
  if (!j.contains("extends")) return j;
  if (!j["extends"].is_string()) fail("{}: key 'extends' must be a file name (string)", path);
  if (depth >= 8) fail("{}: 'extends' chain deeper than 8 files (a cycle?)", path);
  const std::string base_path =
      (std::filesystem::path(path).parent_path() / j["extends"].get<std::string>()).lexically_normal().string();
  if (!path_exists(base_path, fmt::format("{}: key 'extends'", path))) fail("{}: key 'extends': no such file '{}'", path, base_path);
  json merged = load_config_json(base_path, depth + 1);
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "extends") continue;
    if (it.key() == "training" && it->is_object() && merged.contains("training") && merged["training"].is_object())
      merged["training"].update(*it);
    else
      merged[it.key()] = *it;
  }
  return merged;
}

json load_config_json(const std::string& path) { return load_config_json(path, 0); }

Config load_config(const std::string& path) { return parse_config(load_config_json(path, 0), path); }

json to_json(const Config& c) {
  const ModelConfig& m = c.model;
  json j = {{"architectures", {"DeepseekForCausalLM"}},
            {"model_type", "deepseek"},
            {"vocab_size", m.vocab_size},
            {"hidden_size", m.hidden_size},
            {"intermediate_size", m.intermediate_size},
            {"moe_intermediate_size", m.moe_intermediate_size},
            {"num_hidden_layers", m.num_hidden_layers},
            {"num_attention_heads", m.num_attention_heads},
            {"num_key_value_heads", m.num_key_value_heads},
            {"n_shared_experts", m.n_shared_experts ? json(m.n_shared_experts) : json(nullptr)},
            {"n_routed_experts", m.n_routed_experts ? json(m.n_routed_experts) : json(nullptr)},
            {"num_experts_per_tok", m.num_experts_per_tok ? json(m.num_experts_per_tok) : json(nullptr)},
            {"moe_layer_freq", m.moe_layer_freq},
            {"first_k_dense_replace", m.first_k_dense_replace},
            {"norm_topk_prob", m.norm_topk_prob},
            {"scoring_func", m.scoring_func},
            {"aux_loss_alpha", m.aux_loss_alpha},
            {"seq_aux", m.seq_aux},
            {"hidden_act", m.hidden_act},
            {"max_position_embeddings", m.max_position_embeddings},
            {"initializer_range", m.initializer_range},
            {"rms_norm_eps", m.rms_norm_eps},
            {"tie_word_embeddings", m.tie_word_embeddings},
            {"rope_theta", m.rope_theta},
            {"rope_scaling", nullptr},
            {"attention_bias", false},
            {"bos_token_id", m.bos_token_id},
            {"eos_token_id", m.eos_token_id},
            {"torch_dtype", "float32"},
            {"router_type", router_type_name(m.router_type)},
            {"capacity_factor", m.capacity_factor},
            {"n_device_groups", m.n_device_groups},
            {"device_aux_alpha", m.device_aux_alpha},
            {"topk_method", topk_method_name(m.topk_method)},
            {"n_group", m.n_group},
            {"topk_group", m.topk_group},
            {"comm_aux_alpha", m.comm_aux_alpha}};
  const TrainConfig& t = c.train;
  j["training"] = {{"lr", t.lr}, {"min_lr", t.min_lr}, {"warmup_steps", t.warmup_steps}, {"steps", t.steps},
                   {"schedule", schedule_name(t.schedule)}, {"beta1", t.beta1}, {"beta2", t.beta2}, {"eps", t.eps},
                   {"weight_decay", t.weight_decay}, {"grad_clip", t.grad_clip}, {"batch_size", t.batch_size},
                   {"seq_len", t.seq_len}, {"grad_accum", t.grad_accum}, {"seed", t.seed},
                   {"init_std", t.init_std}, {"log_interval", t.log_interval},
                   {"eval_interval", t.eval_interval}, {"eval_batches", t.eval_batches},
                   {"checkpoint_interval", t.checkpoint_interval}, {"precision", ops::precision_name(t.precision)}};
  return j;
}

double learning_rate(const TrainConfig& t, int64_t s) {
  if (t.warmup_steps > 0 && s <= t.warmup_steps) return t.lr * (double)s / (double)t.warmup_steps;
  switch (t.schedule) {
    case Schedule::Constant: return t.lr;
    case Schedule::Step: {
      double lr = t.lr;
      if (s > std::llround(0.8 * t.steps)) lr *= 0.316;
      if (s > std::llround(0.9 * t.steps)) lr *= 0.316;
      return lr;
    }
    case Schedule::Cosine: {
      if (t.steps <= t.warmup_steps) return t.lr;
      double p = (double)(s - t.warmup_steps) / (double)(t.steps - t.warmup_steps);
      double lo = t.min_lr_value();
      return lo + 0.5 * (t.lr - lo) * (1.0 + std::cos(M_PI * std::min(1.0, p)));
    }
  }
  return t.lr;
}

}  // namespace dsmoe
