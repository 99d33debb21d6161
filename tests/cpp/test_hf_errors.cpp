// A bad Hugging Face checkpoint folder is an error naming the file and the tensor / key, never a
// crash or garbage: missing tensor, wrong shape, wrong dtype, non-finite values, unexpected tensors,
// truncated shard, bad index, bad JSON, unknown model_type / architecture, a folder without weights.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <map>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/rng.h"
#include "infer/hf_checkpoint.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace dsmoe;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

Config tiny() {
  Config c;
  ModelConfig& m = c.model;
  m.vocab_size = 40;
  m.hidden_size = 16;
  m.intermediate_size = 24;
  m.moe_intermediate_size = 8;
  m.num_hidden_layers = 2;
  m.num_attention_heads = 2;
  m.num_key_value_heads = 1;
  m.n_shared_experts = 1;
  m.n_routed_experts = 4;
  m.num_experts_per_tok = 2;
  m.first_k_dense_replace = 1;
  m.max_position_embeddings = 32;
  c.train.seq_len = 32;
  validate(c, "tiny");
  return c;
}

// A fresh valid folder: sharded (index) or single file, F32.
std::string make_dir(const std::string& name, bool sharded) {
  const std::string dir = test::tmp_path("hf_err_" + name);
  fs::remove_all(dir);
  Config c = tiny();
  Model m(c.model);
  Rng rng(1);
  m.init_weights(rng, 0.1);
  ExportOptions o;
  o.max_shard_bytes = sharded ? 6000 : (1LL << 40);
  export_hf(dir, c, m, o);
  return dir;
}

// Loads and returns the error message ("" if it loaded).
std::string load_error(const std::string& dir) {
  try {
    load_model_dir(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

void expect_error(const std::string& dir, const std::vector<std::string>& parts) {
  const std::string msg = load_error(dir);
  ASSERT_FALSE(msg.empty()) << "loaded a broken checkpoint in " << dir;
  for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "message lacks '" << p << "':\n" << msg;
}

// Rewrites a single-file checkpoint through `edit` (name -> (dtype, shape, bytes)).
struct Entry {
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};
void rewrite(const std::string& file, const std::function<void(std::map<std::string, Entry>&)>& edit) {
  std::map<std::string, Entry> es;
  {
    SafeTensorsFile f(file);
    for (const auto& [n, t] : f.tensors()) es[n] = Entry{t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
  }
  edit(es);
  SafeTensorsWriter w;
  for (const auto& [n, e] : es) w.add(n, e.dtype, e.shape, e.bytes.data());
  w.write(file);
}

void edit_json(const std::string& path, const std::function<void(json&)>& f) {
  json j = json::parse(read_text_file(path));
  f(j);
  write_file_atomic(path, j.dump(2));
}

std::string shard_of(const std::string& dir, const std::string& tensor) {
  json j = json::parse(read_text_file(dir + "/model.safetensors.index.json"));
  return dir + "/" + j["weight_map"][tensor].get<std::string>();
}

const std::string kDown = "model.layers.1.mlp.experts.3.down_proj.weight";  // [16, 8]

TEST(HfErrors, ValidFoldersLoad) {
  EXPECT_EQ(load_error(make_dir("ok_sharded", true)), "");
  EXPECT_EQ(load_error(make_dir("ok_single", false)), "");
}

TEST(HfErrors, MissingTensor) {
  std::string d = make_dir("missing_single", false);
  rewrite(d + "/model.safetensors", [](auto& es) { es.erase(kDown); });
  expect_error(d, {d + "/model.safetensors", "missing tensor '" + kDown + "'", "[16, 8]"});
  // Sharded: absent from the index, or listed but absent from its shard.
  d = make_dir("missing_index", true);
  edit_json(d + "/model.safetensors.index.json", [](json& j) { j["weight_map"].erase(kDown); });
  expect_error(d, {"model.safetensors.index.json", "missing tensor '" + kDown + "'", "weight_map has no entry"});
  d = make_dir("missing_shard", true);
  const std::string shard = shard_of(d, kDown);
  rewrite(shard, [](auto& es) { es.erase(kDown); });
  expect_error(d, {shard, "missing tensor '" + kDown + "'", "index maps to this shard"});
}

TEST(HfErrors, WrongShape) {
  std::string d = make_dir("shape", true);
  const std::string shard = shard_of(d, kDown);
  rewrite(shard, [](auto& es) { es[kDown].shape = {8, 16}; });
  expect_error(d, {shard, "tensor '" + kDown + "' has shape [8, 16], expected [16, 8]"});
}

TEST(HfErrors, WrongDtype) {
  std::string d = make_dir("dtype", false);
  rewrite(d + "/model.safetensors", [](auto& es) { es["model.norm.weight"].dtype = DType::I32; });
  expect_error(d, {d + "/model.safetensors", "tensor 'model.norm.weight' has dtype I32, expected a floating type"});
}

TEST(HfErrors, NonFiniteValue) {
  std::string d = make_dir("nan", false);
  rewrite(d + "/model.safetensors", [](auto& es) {
    float nan = NAN;
    std::memcpy(es["lm_head.weight"].bytes.data() + 4 * 7, &nan, 4);
  });
  expect_error(d, {"tensor 'lm_head.weight' holds a non-finite value", "element 7"});
}

TEST(HfErrors, UnexpectedTensor) {
  std::string d = make_dir("extra", false);
  rewrite(d + "/model.safetensors", [](auto& es) {
    es["model.layers.2.input_layernorm.weight"] = es["model.norm.weight"];  // a third layer: wrong config
  });
  expect_error(d, {"unexpected tensor 'model.layers.2.input_layernorm.weight'"});
  // Old checkpoints' rotary inv_freq buffers are ignored.
  d = make_dir("inv_freq", false);
  rewrite(d + "/model.safetensors", [](auto& es) {
    es["model.layers.0.self_attn.rotary_emb.inv_freq"] = Entry{DType::F32, {4}, std::vector<uint8_t>(16, 0)};
  });
  EXPECT_EQ(load_error(d), "");
}

TEST(HfErrors, TruncatedShard) {
  std::string d = make_dir("truncated", true);
  const std::string shard = shard_of(d, "lm_head.weight");
  fs::resize_file(shard, fs::file_size(shard) - 100);
  expect_error(d, {shard, "file truncated?"});
  fs::resize_file(shard, 5);
  expect_error(d, {shard, "truncated"});
}

TEST(HfErrors, BadIndex) {
  std::string d = make_dir("index_json", true);
  write_file_atomic(d + "/model.safetensors.index.json", "{\"weight_map\": {");
  expect_error(d, {d + "/model.safetensors.index.json", "not valid JSON"});
  d = make_dir("index_no_map", true);
  write_file_atomic(d + "/model.safetensors.index.json", "{\"metadata\": {}}");
  expect_error(d, {"model.safetensors.index.json", "'weight_map'"});
  d = make_dir("index_missing_file", true);
  edit_json(d + "/model.safetensors.index.json", [](json& j) { j["weight_map"][kDown] = "model-00099-of-00099.safetensors"; });
  expect_error(d, {"shard 'model-00099-of-00099.safetensors'", "'" + kDown + "'", "does not exist"});
  d = make_dir("index_name_too_long", true);  // past the file system's 255 bytes: the OS cannot say
  edit_json(d + "/model.safetensors.index.json", [](json& j) { j["weight_map"][kDown] = std::string(300, 'x') + ".safetensors"; });
  expect_error(d, {"weight_map['" + kDown + "']", "cannot check", "File name too long"});
  d = make_dir("index_escape", true);
  edit_json(d + "/model.safetensors.index.json", [](json& j) { j["weight_map"][kDown] = "../model.safetensors"; });
  expect_error(d, {"weight_map['" + kDown + "']", "is not a file name in the checkpoint folder"});
  d = make_dir("index_not_string", true);
  edit_json(d + "/model.safetensors.index.json", [](json& j) { j["weight_map"][kDown] = 3; });
  expect_error(d, {"weight_map['" + kDown + "'] must be a file name string"});
}

TEST(HfErrors, BadConfig) {
  std::string d = make_dir("cfg_json", false);
  write_file_atomic(d + "/config.json", "{\"hidden_size\": 16,");
  expect_error(d, {d + "/config.json", "not valid JSON"});
  d = make_dir("cfg_type", false);
  edit_json(d + "/config.json", [](json& j) { j["model_type"] = "llama"; });
  expect_error(d, {d + "/config.json", "model_type \"llama\" is not supported"});
  d = make_dir("cfg_arch", false);
  edit_json(d + "/config.json", [](json& j) { j["architectures"] = {"LlamaForCausalLM"}; });
  expect_error(d, {d + "/config.json", "architectures [\"LlamaForCausalLM\"] is not supported"});
  d = make_dir("cfg_no_type", false);
  edit_json(d + "/config.json", [](json& j) { j.erase("model_type"); });
  expect_error(d, {"'model_type' is missing"});
  d = make_dir("cfg_bad_value", false);
  edit_json(d + "/config.json", [](json& j) { j["num_experts_per_tok"] = 9; });
  expect_error(d, {"num_experts_per_tok", "between 1 and n_routed_experts (4)"});
  d = make_dir("cfg_missing", false);
  fs::remove(d + "/config.json");
  expect_error(d, {d + "/config.json", "not found"});
}

TEST(HfErrors, FolderWithoutWeights) {
  const std::string d = test::tmp_path("hf_err_empty");
  fs::remove_all(d);
  fs::create_directories(d);
  expect_error(d, {d, "no weights found"});
  expect_error(d + "/nope", {"not a folder"});
}

TEST(HfConfig, AbsentKeysTakeTheConfigClassDefaults) {
  const std::string d = test::tmp_path("hf_cfg_defaults");
  fs::remove_all(d);
  fs::create_directories(d);
  // The 16B's config.json keys minus everything optional.
  write_file_atomic(d + "/config.json", R"({"model_type": "deepseek", "architectures": ["DeepseekForCausalLM"],
    "vocab_size": 102400, "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
    "num_hidden_layers": 28, "num_attention_heads": 16, "n_routed_experts": 64, "n_shared_experts": 2,
    "num_experts_per_tok": 6, "first_k_dense_replace": 1, "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16", "use_cache": true, "pretraining_tp": 1})");
  Config c = load_hf_config(d);
  EXPECT_EQ(c.model.num_key_value_heads, 16);
  EXPECT_EQ(c.model.aux_loss_alpha, 0.001);
  EXPECT_TRUE(c.model.seq_aux);
  EXPECT_FALSE(c.model.norm_topk_prob);
  EXPECT_EQ(c.model.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.model.rope_theta, 10000.0);
  EXPECT_EQ(c.model.moe_layer_freq, 1);
  EXPECT_EQ(c.model.hidden_act, "silu");
}

}  // namespace
