#include "infer/hf_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"

namespace dsmoe {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* kIndex = "model.safetensors.index.json";
const char* kSingle = "model.safetensors";
const char* kRunCkpt = "checkpoint.safetensors";

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

std::string shape_str(const std::vector<int64_t>& s) {
  std::string o = "[";
  for (size_t i = 0; i < s.size(); ++i) o += (i ? ", " : "") + std::to_string(s[i]);
  return o + "]";
}

json parse_json_file(const std::string& path) {
  if (!fs::exists(path)) fail("{}: file not found", path);
  const std::string text = read_text_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
}

// Tensors a HF checkpoint may carry that are not parameters (older transformers saved the rotary
// inverse frequencies); they are recomputed from the config.
bool ignorable(const std::string& name) {
  const std::string s = "rotary_emb.inv_freq";
  return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
}

// Converts one stored tensor into fp32 (parallel over elements) and rejects non-finite values.
void convert_tensor(const std::string& file, const std::string& name, const TensorInfo& t, float* dst) {
  const int64_t n = t.numel();
  const uint8_t* src = t.data;
  int64_t bad = -1;
  switch (t.dtype) {
    case DType::F32:
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) std::memcpy(dst + i, src + 4 * i, 4);
      break;
    case DType::BF16:
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        dst[i] = bf16_to_f32(v);
      }
      break;
    case DType::F16:
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        dst[i] = f16_to_f32(v);
      }
      break;
    default:
      fail("{}: tensor '{}' has dtype {}, expected a floating type (F32, BF16 or F16)", file, name, dtype_name(t.dtype));
  }
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(dst[i])) {
      bad = i;
      break;
    }
  if (bad >= 0)
    fail("{}: tensor '{}' holds a non-finite value ({}) at element {}: corrupted file?", file, name, dst[bad], bad);
}

}  // namespace

Config load_hf_config(const std::string& dir) {
  const std::string path = join(dir, "config.json");
  if (!fs::is_directory(dir)) fail("{}: not a folder (expected a model folder with config.json)", dir);
  json j = parse_json_file(path);
  if (!j.is_object()) fail("{}: a config must be a JSON object", path);
  if (!j.contains("model_type"))
    fail("{}: key 'model_type' is missing (expected \"deepseek\", a DeepSeekMoE checkpoint)", path);
  if (j["model_type"] != "deepseek")
    fail("{}: model_type {} is not supported: dsmoe runs DeepSeekMoE checkpoints (model_type \"deepseek\")", path,
         j["model_type"].dump());
  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const json& a = j["architectures"];
    bool ok = a.is_array();
    if (ok) {
      bool found = false;
      for (const auto& x : a) found |= x == "DeepseekForCausalLM";
      ok = found;
    }
    if (!ok)
      fail("{}: architectures {} is not supported: dsmoe runs \"DeepseekForCausalLM\" (DeepSeekMoE)", path, a.dump());
  }
  // A HF config has no "training" object; its defaults must still validate against the model
  // (training.seq_len <= max_position_embeddings), so clamp the default for inference-only use.
  if (!j.contains("training")) {
    int64_t max_pos = 2048;
    if (j.contains("max_position_embeddings") && j["max_position_embeddings"].is_number_integer())
      max_pos = j["max_position_embeddings"].get<int64_t>();
    j["training"] = {{"seq_len", std::max<int64_t>(1, std::min<int64_t>(256, max_pos))}};
  }
  return parse_config(j, path);
}

ModelDirKind model_dir_kind(const std::string& dir) {
  if (!fs::is_directory(dir)) fail("{}: not a folder (expected a model folder)", dir);
  if (fs::exists(join(dir, kIndex))) return ModelDirKind::HfSharded;
  if (fs::exists(join(dir, kSingle))) return ModelDirKind::HfSingle;
  if (fs::exists(join(dir, kRunCkpt))) return ModelDirKind::DsmoeRun;
  fail("{}: no weights found (expected {}, {} with its shards, or a dsmoe {})", dir, kSingle, kIndex, kRunCkpt);
}

LoadReport load_hf_weights(const std::string& dir, Model& model) {
  const ModelDirKind kind = model_dir_kind(dir);
  const ParamLayout& layout = model.layout();
  std::map<std::string, const HfTensor*> expected;
  for (const auto& t : layout.hf_tensors()) expected[t.name] = &t;

  // file -> the expected tensors it must hold
  std::map<std::string, std::vector<const HfTensor*>> plan;
  std::vector<std::string> order;  // files in first-use order
  auto assign = [&](const std::string& file, const HfTensor* t) {
    if (!plan.count(file)) order.push_back(file);
    plan[file].push_back(t);
  };
  const std::string index_path = join(dir, kIndex);
  if (kind == ModelDirKind::HfSharded) {
    json idx = parse_json_file(index_path);
    if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
      fail("{}: expected an object with a 'weight_map' object {{tensor name: shard file}}", index_path);
    const json& wm = idx["weight_map"];
    for (auto it = wm.begin(); it != wm.end(); ++it) {
      if (!it->is_string()) fail("{}: weight_map['{}'] must be a file name string, got {}", index_path, it.key(), it->dump());
      const std::string f = it->get<std::string>();
      if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == "..")
        fail("{}: weight_map['{}'] = \"{}\" is not a file name in the checkpoint folder", index_path, it.key(), f);
      if (!expected.count(it.key()) && !ignorable(it.key()))
        fail("{}: unexpected tensor '{}' (not part of a DeepSeekMoE model with this config.json)", index_path, it.key());
    }
    for (const auto& t : layout.hf_tensors()) {
      auto it = wm.find(t.name);
      if (it == wm.end()) fail("{}: missing tensor '{}': weight_map has no entry for it", index_path, t.name);
      const std::string file = join(dir, it->get<std::string>());
      if (!fs::exists(file))
        fail("{}: shard '{}' (holding tensor '{}') does not exist", index_path, it->get<std::string>(), t.name);
      assign(file, &t);
    }
  } else {
    const std::string file = join(dir, kind == ModelDirKind::HfSingle ? kSingle : kRunCkpt);
    for (const auto& t : layout.hf_tensors()) assign(file, &t);
  }

  LoadReport rep;
  float* params = model.params().data();
  for (const std::string& file : order) {
    SafeTensorsFile f(file);  // validates the header and that every byte range lies inside the file
    std::set<std::string> mine;
    for (const HfTensor* t : plan[file]) mine.insert(t->name);
    for (const auto& [name, ti] : f.tensors()) {
      if (mine.count(name) || ignorable(name)) continue;
      if (kind == ModelDirKind::DsmoeRun && (name.rfind("optimizer.", 0) == 0 || name.rfind("train.", 0) == 0)) continue;
      if (expected.count(name))
        fail("{}: tensor '{}' is also stored here, but {} maps it to another shard", file, name, index_path);
      fail("{}: unexpected tensor '{}' (not part of a DeepSeekMoE model with this config.json)", file, name);
    }
    for (const HfTensor* t : plan[file]) {
      if (!f.has(t->name))
        fail("{}: missing tensor '{}' (shape {}){}", file, t->name, shape_str(t->shape),
             kind == ModelDirKind::HfSharded ? " that the index maps to this shard" : "");
      const TensorInfo& ti = f.get(t->name);
      if (ti.dtype != DType::F32 && ti.dtype != DType::BF16 && ti.dtype != DType::F16)
        fail("{}: tensor '{}' has dtype {}, expected a floating type (F32, BF16 or F16)", file, t->name,
             dtype_name(ti.dtype));
      if (ti.shape != t->shape)
        fail("{}: tensor '{}' has shape {}, expected {} (from config.json)", file, t->name, shape_str(ti.shape),
             shape_str(t->shape));
      convert_tensor(file, t->name, ti, params + t->offset);
      rep.tensors++;
      rep.bytes_read += (int64_t)ti.nbytes;
      rep.f32 += ti.dtype == DType::F32;
      rep.bf16 += ti.dtype == DType::BF16;
      rep.f16 += ti.dtype == DType::F16;
    }
    rep.files++;
  }
  return rep;
}

LoadedModel load_model_dir(const std::string& dir) {
  LoadedModel lm;
  model_dir_kind(dir);  // a clear error before parsing anything when the folder holds no weights
  lm.config = load_hf_config(dir);
  lm.model = std::make_unique<Model>(lm.config.model);
  lm.report = load_hf_weights(dir, *lm.model);
  return lm;
}

int64_t export_hf(const std::string& dir, const Config& cfg, const Model& model, const ExportOptions& o) {
  if (o.dtype != DType::F32 && o.dtype != DType::BF16)
    fail("export: dtype {} is not supported (expected F32 or BF16)", dtype_name(o.dtype));
  if (o.max_shard_bytes <= 0) fail("export: the shard size must be > 0, got {}", o.max_shard_bytes);
  fs::create_directories(dir);
  // Remove what an earlier export may have left (an index would shadow a new single file).
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    const bool shard = n.rfind("model-", 0) == 0 && n.find("-of-") != std::string::npos &&
                       n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0;
    if (n == kIndex || n == kSingle || shard) fs::remove(e.path());
  }
  json j = to_json(cfg);
  j.erase("training");
  j["torch_dtype"] = o.dtype == DType::BF16 ? "bfloat16" : "float32";
  j["auto_map"] = {{"AutoConfig", "configuration_deepseek.DeepseekConfig"},
                   {"AutoModel", "modeling_deepseek.DeepseekModel"},
                   {"AutoModelForCausalLM", "modeling_deepseek.DeepseekForCausalLM"}};
  j["use_cache"] = true;
  write_file_atomic(join(dir, "config.json"), j.dump(2) + "\n");

  // Plan the shards: tensors in layout order, a new shard when the next tensor would overflow.
  const auto& hf = model.layout().hf_tensors();
  const size_t es = dtype_size(o.dtype);
  std::vector<std::vector<const HfTensor*>> shards(1);
  int64_t cur = 0, total = 0;
  for (const auto& t : hf) {
    const int64_t b = t.numel * (int64_t)es;
    if (cur > 0 && cur + b > o.max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(&t);
    cur += b;
    total += b;
  }
  const int64_t n = (int64_t)shards.size();
  const float* p = model.params().data();
  json wm = json::object();
  std::vector<uint16_t> half;
  for (int64_t s = 0; s < n; ++s) {
    const std::string name = n == 1 ? std::string(kSingle) : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n);
    SafeTensorsWriter w;
    w.set_metadata("format", "pt");
    for (const HfTensor* t : shards[s]) {
      if (o.dtype == DType::F32) {
        w.add_f32(t->name, t->shape, p + t->offset);
      } else {
        half.resize(t->numel);
        for (int64_t i = 0; i < t->numel; ++i) half[i] = f32_to_bf16(p[t->offset + i]);
        w.add(t->name, DType::BF16, t->shape, half.data());
      }
      wm[t->name] = name;
    }
    w.write(join(dir, name));
  }
  if (n > 1) {
    json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
    write_file_atomic(join(dir, kIndex), idx.dump(2) + "\n");
  }
  if (!o.tokenizer.empty()) {
    if (!fs::exists(o.tokenizer)) fail("{}: tokenizer file not found", o.tokenizer);
    write_file_atomic(join(dir, "tokenizer.json"), read_text_file(o.tokenizer));
    const fs::path tc = fs::path(o.tokenizer).parent_path() / "tokenizer_config.json";
    if (fs::exists(tc)) write_file_atomic(join(dir, "tokenizer_config.json"), read_text_file(tc.string()));
  }
  return n;
}

}  // namespace dsmoe
