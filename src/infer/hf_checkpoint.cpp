#include "infer/hf_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unistd.h>

#include "core/error.h"
#include "core/path_exists.h"
#include "infer/gguf_checkpoint.h"

namespace dsmoe {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

const char* kIndex = "model.safetensors.index.json";
const char* kSingle = "model.safetensors";
const char* kRunCkpt = "checkpoint.safetensors";
const char* kQuantMethod = "dsmoe";

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
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
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

std::optional<ops::WType> stored_quantization(const std::string& dir) {
  const std::string path = join(dir, "config.json");
  const json j = parse_json_file(path);
  if (!j.is_object() || !j.contains("quantization_config") || j["quantization_config"].is_null()) return std::nullopt;
  const json& q = j["quantization_config"];
  auto field = [&](const char* key) -> const json& {
    if (!q.is_object() || !q.contains(key))
      fail("{}: quantization_config.{} is missing (expected a dsmoe quantization_config, see `dsmoe quantize`)", path, key);
    return q[key];
  };
  if (field("quant_method") != kQuantMethod)
    fail("{}: quantization_config.quant_method {} is not supported (expected \"{}\", written by `dsmoe quantize`)",
         path, field("quant_method").dump(), kQuantMethod);
  const json& fmt = field("format");
  ops::WType t;
  if (fmt == "q8_0") t = ops::WType::Q8;
  else if (fmt == "q4_0") t = ops::WType::Q4;
  else fail("{}: quantization_config.format {} is not supported (expected \"q8_0\" or \"q4_0\")", path, fmt.dump());
  if (field("block_size") != ops::kBlock)
    fail("{}: quantization_config.block_size {} is not supported (expected {}: blocks of 32 inputs per scale)", path,
         field("block_size").dump(), ops::kBlock);
  if (field("scale_dtype") != "bfloat16")
    fail("{}: quantization_config.scale_dtype {} is not supported (expected \"bfloat16\")", path,
         field("scale_dtype").dump());
  if (field("scale_suffix") != kScaleSuffix)
    fail("{}: quantization_config.scale_suffix {} is not supported (expected \"{}\")", path,
         field("scale_suffix").dump(), kScaleSuffix);
  return t;
}

namespace {

// Which file holds each expected tensor (and, in a quantized folder, its scale).
struct FilePlan {
  ModelDirKind kind;
  std::string index_path;
  std::vector<std::string> order;                               // files in first-use order
  std::map<std::string, std::vector<const HfTensor*>> tensors;  // file -> expected tensors it must hold
};

// `elsewhere`: tensors of the model that this process does not hold (other ranks' routed experts
// under expert parallelism, and their scales): allowed in the folder, never read.
FilePlan plan_files(const std::string& dir, const ParamLayout& layout, const std::set<std::string>& scale_names,
                    const std::set<std::string>& elsewhere = {}) {
  FilePlan plan;
  plan.kind = model_dir_kind(dir);
  plan.index_path = join(dir, kIndex);
  std::set<std::string> expected;
  for (const auto& t : layout.hf_tensors()) expected.insert(t.name);
  auto assign = [&](const std::string& file, const HfTensor* t) {
    if (!plan.tensors.count(file)) plan.order.push_back(file);
    plan.tensors[file].push_back(t);
  };
  if (plan.kind != ModelDirKind::HfSharded) {
    const std::string file = join(dir, plan.kind == ModelDirKind::HfSingle ? kSingle : kRunCkpt);
    for (const auto& t : layout.hf_tensors()) assign(file, &t);
    return plan;
  }
  const std::string& index_path = plan.index_path;
  json idx = parse_json_file(index_path);
  if (!idx.is_object() || !idx.contains("weight_map") || !idx["weight_map"].is_object())
    fail("{}: expected an object with a 'weight_map' object {{tensor name: shard file}}", index_path);
  const json& wm = idx["weight_map"];
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it->is_string()) fail("{}: weight_map['{}'] must be a file name string, got {}", index_path, it.key(), it->dump());
    const std::string f = it->get<std::string>();
    if (f.empty() || f.find('/') != std::string::npos || f.find('\\') != std::string::npos || f == "." || f == "..")
      fail("{}: weight_map['{}'] = \"{}\" is not a file name in the checkpoint folder", index_path, it.key(), f);
    if (!expected.count(it.key()) && !scale_names.count(it.key()) && !elsewhere.count(it.key()) && !ignorable(it.key()))
      fail("{}: unexpected tensor '{}' (not part of a DeepSeekMoE model with this config.json)", index_path, it.key());
  }
  for (const auto& t : layout.hf_tensors()) {
    auto it = wm.find(t.name);
    if (it == wm.end()) fail("{}: missing tensor '{}': weight_map has no entry for it", index_path, t.name);
    const std::string file = join(dir, it->get<std::string>());
    if (!path_exists(file, fmt::format("{}: weight_map['{}']", index_path, t.name)))
      fail("{}: shard '{}' (holding tensor '{}') does not exist", index_path, it->get<std::string>(), t.name);
    const std::string sc = t.name + kScaleSuffix;
    if (scale_names.count(sc)) {  // a block's scale lives beside its weights
      auto js = wm.find(sc);
      if (js == wm.end()) fail("{}: missing scale tensor '{}' of the quantized weight '{}': weight_map has no entry for it", index_path, sc, t.name);
      if (*js != *it)
        fail("{}: scale tensor '{}' is mapped to shard {} but its weight '{}' to {} (expected the same shard)", index_path,
             sc, js->dump(), t.name, it->dump());
    }
    assign(file, &t);
  }
  return plan;
}

std::string shape_of(const TensorInfo& ti) { return shape_str(ti.shape); }

// True if a bf16 value is Inf or NaN (exponent all ones).
bool bf16_nonfinite(uint16_t h) { return (h & 0x7f80) == 0x7f80; }

// One HF tensor (rows [r0, r0 + rows) of its slot) from `f` into the slot's storage, checking
// dtype, shape and finite values. `q`: the folder's quantization (matrix slots only).
void fill_tensor(const SafeTensorsFile& f, const HfTensor& t, InferenceWeights::Slot& s,
                 std::optional<ops::WType> q, LoadReport& rep, std::vector<float>& tmp) {
  const std::string& file = f.path();
  const int64_t cols = s.mat.cols, rows = t.numel / cols, r0 = (t.offset - s.t.offset) / cols, nb = s.mat.blocks();
  const ops::WeightMat dst = s.mat.slice_rows(r0, rows);
  uint8_t* dst_data = (uint8_t*)dst.data;
  uint16_t* dst_scales = (uint16_t*)dst.scales;
  if (!f.has(t.name)) fail("{}: missing tensor '{}' (shape {})", file, t.name, shape_str(t.shape));
  const TensorInfo& ti = f.get(t.name);
  rep.tensors++;
  rep.bytes_read += (int64_t)ti.nbytes;
  if (q && s.is_matrix) {
    const DType want = *q == ops::WType::Q8 ? DType::I8 : DType::U8;
    const char* fmt = *q == ops::WType::Q8 ? "q8_0" : "q4_0";
    const std::vector<int64_t> wshape = {rows, ops::WeightMat::row_bytes_of(*q, cols)};
    if (ti.dtype != want)
      fail("{}: tensor '{}' has dtype {}, expected {} ({} weights, as config.json's quantization_config says)", file,
           t.name, dtype_name(ti.dtype), dtype_name(want), fmt);
    if (ti.shape != wshape)
      fail("{}: tensor '{}' has shape {}, expected {} ({} storage of a {} matrix: {})", file, t.name, shape_of(ti),
           shape_str(wshape), fmt, shape_str(t.shape),
           *q == ops::WType::Q8 ? "one int8 per weight" : "16 bytes per block of 32 inputs");
    const std::string sname = t.name + kScaleSuffix;
    const std::vector<int64_t> sshape = {rows, nb};
    if (!f.has(sname))
      fail("{}: missing scale tensor '{}' (BF16 {}) of the quantized weight '{}'", file, sname, shape_str(sshape), t.name);
    const TensorInfo& si = f.get(sname);
    if (si.dtype != DType::BF16) fail("{}: scale tensor '{}' has dtype {}, expected BF16", file, sname, dtype_name(si.dtype));
    if (si.shape != sshape)
      fail("{}: scale tensor '{}' has shape {}, expected {} (one scale per block of {} inputs of '{}' {})", file, sname,
           shape_of(si), shape_str(sshape), ops::kBlock, t.name, shape_str(t.shape));
    f.verify(ti);  // a changed byte of a dsmoe-written file names its tensor (no-op for other files)
    f.verify(si);
    const uint16_t* sc = (const uint16_t*)si.data;
    for (int64_t i = 0; i < rows * nb; ++i) {
      uint16_t h;
      std::memcpy(&h, sc + i, 2);
      if (bf16_nonfinite(h) || (h & 0x8000))
        fail("{}: scale tensor '{}' holds a non-finite or negative scale ({}) at element {}: corrupted file?", file,
             sname, bf16_to_f32(h), i);
    }
    rep.quantized++;
    rep.bytes_read += (int64_t)si.nbytes;
    if (s.mat.type == *q) {
      std::memcpy(dst_data, ti.data, ti.nbytes);
      std::memcpy(dst_scales, si.data, si.nbytes);
    } else {  // another storage was asked for: through fp32
      std::vector<uint16_t> scales(rows * nb);
      std::memcpy(scales.data(), si.data, si.nbytes);
      const ops::WeightMat src{*q, rows, cols, ti.data, scales.data()};
      tmp.resize((size_t)(rows * cols));
      ops::dequantize_rows(tmp.data(), src, 0, rows);
      ops::quantize_rows(s.mat.type, tmp.data(), rows, cols, dst_data, dst_scales);
    }
    return;
  }
  if (ti.dtype != DType::F32 && ti.dtype != DType::BF16 && ti.dtype != DType::F16)
    fail("{}: tensor '{}' has dtype {}, expected a floating type (F32, BF16 or F16)", file, t.name, dtype_name(ti.dtype));
  if (ti.shape != t.shape)
    fail("{}: tensor '{}' has shape {}, expected {} (from config.json)", file, t.name, shape_of(ti), shape_str(t.shape));
  f.verify(ti);
  rep.f32 += ti.dtype == DType::F32;
  rep.bf16 += ti.dtype == DType::BF16;
  rep.f16 += ti.dtype == DType::F16;
  if (s.mat.type == ops::WType::F32) {
    convert_tensor(file, t.name, ti, (float*)dst_data);
  } else if (s.mat.type == ops::WType::BF16 && ti.dtype == DType::BF16) {  // native: a plain copy
    std::memcpy(dst_data, ti.data, ti.nbytes);
    const uint16_t* h = (const uint16_t*)dst_data;
    for (int64_t i = 0; i < t.numel; ++i)
      if (bf16_nonfinite(h[i]))
        fail("{}: tensor '{}' holds a non-finite value ({}) at element {}: corrupted file?", file, t.name,
             bf16_to_f32(h[i]), i);
  } else {
    tmp.resize((size_t)t.numel);
    convert_tensor(file, t.name, ti, tmp.data());
    ops::quantize_rows(s.mat.type, tmp.data(), rows, cols, dst_data, dst_scales);
  }
}

}  // namespace

LoadReport load_weights_into(const std::string& dir, InferenceWeights& w, const TensorProgress& progress,
                             Checksums checksums) {
  const ParamLayout layout(w.config(), w.shard());
  const std::optional<ops::WType> q = stored_quantization(dir);
  std::set<std::string> scale_names;
  if (q)
    for (const auto& t : layout.hf_tensors())
      if (w.slot_at(t.offset).is_matrix) scale_names.insert(t.name + kScaleSuffix);
  // Under expert parallelism the other ranks' experts are skipped: their bytes are never touched, so
  // they never enter this process's memory (the files are mapped, not read).
  std::set<std::string> elsewhere;
  if (!w.shard().all()) {
    std::set<std::string> mine;
    for (const auto& t : layout.hf_tensors()) mine.insert(t.name);
    const ParamLayout whole(w.config());
    for (const auto& t : whole.hf_tensors())
      if (!mine.count(t.name)) {
        elsewhere.insert(t.name);
        if (q) elsewhere.insert(t.name + kScaleSuffix);  // routed experts are matrices: quantized with a scale
      }
  }
  const FilePlan plan = plan_files(dir, layout, scale_names, elsewhere);
  std::set<std::string> expected;
  for (const auto& t : layout.hf_tensors()) expected.insert(t.name);
  LoadReport rep;
  rep.stored = q ? *q : ops::WType::F32;
  std::vector<float> tmp;
  const int64_t total = (int64_t)layout.hf_tensors().size();
  int64_t done = 0;
  for (const std::string& file : plan.order) {
    SafeTensorsFile f(file, checksums);  // validates the header and that every byte range lies inside the file
    std::set<std::string> mine;
    for (const HfTensor* t : plan.tensors.at(file)) {
      mine.insert(t->name);
      if (scale_names.count(t->name + kScaleSuffix)) mine.insert(t->name + kScaleSuffix);
    }
    for (const auto& [name, ti] : f.tensors()) {
      if (mine.count(name) || elsewhere.count(name) || ignorable(name)) continue;
      if (plan.kind == ModelDirKind::DsmoeRun && (name.rfind("optimizer.", 0) == 0 || name.rfind("train.", 0) == 0)) continue;
      if (expected.count(name) || scale_names.count(name))
        fail("{}: tensor '{}' is also stored here, but {} maps it to another shard", file, name, plan.index_path);
      fail("{}: unexpected tensor '{}' (not part of a DeepSeekMoE model with this config.json{})", file, name,
           q ? "" : "; a quantized folder's config.json has a quantization_config");
    }
    for (const HfTensor* t : plan.tensors.at(file)) {
      if (!f.has(t->name) && plan.kind == ModelDirKind::HfSharded)
        fail("{}: missing tensor '{}' (shape {}) that the index maps to this shard", file, t->name, shape_str(t->shape));
      fill_tensor(f, *t, w.slot_at(t->offset), q, rep, tmp);
      if (progress) progress(++done, total);
    }
    rep.files++;
  }
  return rep;
}

LoadReport load_hf_weights(const std::string& dir, Model& model, Checksums checksums) {
  InferenceWeights w = InferenceWeights::view(model);
  return load_weights_into(dir, w, {}, checksums);
}

InferenceModel load_inference_model(const std::string& dir, std::optional<ops::WType> type,
                                    const TensorProgress& progress, Checksums checksums, ExpertShard shard) {
  if (is_gguf_file(dir)) {
    if (!shard.all())
      fail("{}: expert parallelism over a GGUF file is not supported (it loads every expert); convert it to a model "
           "folder first (`dsmoe export --model {} --out DIR`) or run it in one process", dir, dir);
    return load_gguf_inference_model(dir, type, progress);  // GGUF has no checksums
  }
  InferenceModel im;
  model_dir_kind(dir);  // a clear error before parsing anything when the folder holds no weights
  im.config = load_hf_config(dir);
  const std::optional<ops::WType> q = stored_quantization(dir);
  ops::WType t = ops::WType::F32;
  if (type) t = *type;
  else if (q) t = *q;
  else {  // the storage of the checkpoint's lm_head: BF16 checkpoints run in bf16, others in fp32
    const ParamLayout layout(im.config.model);
    const FilePlan plan = plan_files(dir, layout, {});
    for (const auto& [file, ts] : plan.tensors)
      for (const HfTensor* h : ts)
        if (h->name == "lm_head.weight") {
          SafeTensorsFile f(file, checksums);
          if (f.has(h->name) && f.get(h->name).dtype == DType::BF16) t = ops::WType::BF16;
        }
  }
  if (!shard.all())
    validate_expert_parallel(im.config.model, im.config.model.n_routed_experts / shard.count, "expert-parallel size",
                             dir);
  im.weights = std::make_unique<InferenceWeights>(InferenceWeights::allocate(im.config.model, t, shard));
  im.report = load_weights_into(dir, *im.weights, progress, checksums);
  return im;
}

LoadedModel load_model_dir(const std::string& dir, const TensorProgress& progress, Checksums checksums) {
  if (is_gguf_file(dir)) return load_gguf_model(dir, progress);  // GGUF has no checksums
  LoadedModel lm;
  model_dir_kind(dir);  // a clear error before parsing anything when the folder holds no weights
  lm.config = load_hf_config(dir);
  lm.model = std::make_unique<Model>(lm.config.model);
  InferenceWeights view = InferenceWeights::view(*lm.model);
  lm.report = load_weights_into(dir, view, progress, checksums);
  return lm;
}

namespace {

// One tensor to write: its bytes are produced on demand (a shard at a time is held in memory).
struct OutTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::function<void(std::vector<uint8_t>&)> bytes;
  bool with_previous = false;  // must share the previous tensor's shard (a scale and its weights)
  int64_t nbytes() const {
    int64_t n = (int64_t)dtype_size(dtype);
    for (auto d : shape) n *= d;
    return n;
  }
};

// Writes `ts` in order as model.safetensors, or as shards of at most max_shard_bytes of tensor
// data + model.safetensors.index.json. Returns the number of shard files.
int64_t write_tensor_files(const std::string& dir, const std::vector<OutTensor>& ts, int64_t max_shard_bytes,
                           const TensorProgress& progress) {
  std::vector<std::vector<const OutTensor*>> shards(1);
  int64_t cur = 0, total = 0;
  for (size_t i = 0; i < ts.size(); ++i) {
    int64_t b = ts[i].nbytes();
    for (size_t j = i + 1; j < ts.size() && ts[j].with_previous; ++j) b += ts[j].nbytes();  // the group
    if (!ts[i].with_previous && cur > 0 && cur + b > max_shard_bytes) {
      shards.emplace_back();
      cur = 0;
    }
    shards.back().push_back(&ts[i]);
    if (!ts[i].with_previous) cur += b;
    total += ts[i].nbytes();
  }
  const int64_t n = (int64_t)shards.size();
  json wm = json::object();
  std::vector<uint8_t> buf;
  int64_t written = 0;
  for (int64_t s = 0; s < n; ++s) {
    const std::string name = n == 1 ? std::string(kSingle) : fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, n);
    SafeTensorsWriter w;
    w.set_metadata("format", "pt");
    for (const OutTensor* t : shards[s]) {
      buf.clear();
      t->bytes(buf);
      DSMOE_ASSERT((int64_t)buf.size() == t->nbytes(), "tensor {}: {} bytes for {}", t->name, buf.size(), t->nbytes());
      w.add(t->name, t->dtype, t->shape, buf.data());
      wm[t->name] = name;
      if (progress) progress(++written, (int64_t)ts.size());
    }
    w.write(join(dir, name));
  }
  if (n > 1) {
    json idx = {{"metadata", {{"total_size", total}}}, {"weight_map", wm}};
    write_file_atomic(join(dir, kIndex), idx.dump(2) + "\n");
  }
  return n;
}

// config.json of an exported folder: HF keys (dsmoe's own kept for an exact reload), no "training".
json export_config(const Config& cfg, const char* torch_dtype) {
  json j = to_json(cfg);
  j.erase("training");
  j["torch_dtype"] = torch_dtype;
  j["auto_map"] = {{"AutoConfig", "configuration_deepseek.DeepseekConfig"},
                   {"AutoModel", "modeling_deepseek.DeepseekModel"},
                   {"AutoModelForCausalLM", "modeling_deepseek.DeepseekForCausalLM"}};
  j["use_cache"] = true;
  return j;
}

// DIR created, and the model files an earlier write left there removed (an index would shadow a new
// single file; stale shards would be loaded by nothing but waste space).
void prepare_model_dir(const std::string& dir) {
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    const bool shard = n.rfind("model-", 0) == 0 && n.find("-of-") != std::string::npos &&
                       n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0;
    if (n == kIndex || n == kSingle || shard) fs::remove(e.path());
  }
}

}  // namespace

int64_t export_hf(const std::string& dir, const Config& cfg, const Model& model, const ExportOptions& o) {
  if (o.dtype != DType::F32 && o.dtype != DType::BF16)
    fail("export: dtype {} is not supported (expected F32 or BF16)", dtype_name(o.dtype));
  if (o.max_shard_bytes <= 0) fail("export: the shard size must be > 0, got {}", o.max_shard_bytes);
  prepare_model_dir(dir);
  write_file_atomic(join(dir, "config.json"),
                    export_config(cfg, o.dtype == DType::BF16 ? "bfloat16" : "float32").dump(2) + "\n");
  const float* p = model.params().data();
  std::vector<OutTensor> ts;
  for (const auto& t : model.layout().hf_tensors())
    ts.push_back({t.name, o.dtype, t.shape, [&o, &t, p](std::vector<uint8_t>& b) {
                    const float* src = p + t.offset;
                    if (o.dtype == DType::F32) {
                      b.resize((size_t)t.numel * 4);
                      std::memcpy(b.data(), src, b.size());
                    } else {
                      b.resize((size_t)t.numel * 2);
                      for (int64_t i = 0; i < t.numel; ++i) {
                        const uint16_t h = f32_to_bf16(src[i]);
                        std::memcpy(b.data() + 2 * i, &h, 2);
                      }
                    }
                  }});
  return write_tensor_files(dir, ts, o.max_shard_bytes, o.progress);
}

int64_t write_quantized(const std::string& dir, const Config& cfg, const InferenceWeights& w, const ExportOptions& o) {
  const ops::WType q = w.type();
  if (q != ops::WType::Q8 && q != ops::WType::Q4)
    fail("quantize: storage {} is not a quantized format (expected q8 or q4)", ops::wtype_name(q));
  if (o.max_shard_bytes <= 0) fail("quantize: the shard size must be > 0, got {}", o.max_shard_bytes);
  prepare_model_dir(dir);
  const fs::path out(dir);
  {
    json j = export_config(cfg, "bfloat16");
    j["quantization_config"] = {
        {"quant_method", kQuantMethod},
        {"format", q == ops::WType::Q8 ? "q8_0" : "q4_0"},
        {"block_size", ops::kBlock},
        {"scale_dtype", "bfloat16"},
        {"scale_suffix", kScaleSuffix},
        {"weights", q == ops::WType::Q8 ? "I8 [out, in]" : "U8 [out, ceil(in/32)*16], byte j = q[j]+8 | (q[j+16]+8) << 4"},
        {"not_quantized", {"mlp.gate (router)", "input_layernorm", "post_attention_layernorm", "norm"}}};
    write_file_atomic((out / "config.json").string(), j.dump(2) + "\n");
    auto& ww = const_cast<InferenceWeights&>(w);  // slot_at is a lookup; nothing is modified
    std::vector<OutTensor> ts;
    const ParamLayout layout(cfg.model);
    for (const auto& t : layout.hf_tensors()) {
      const InferenceWeights::Slot& s = ww.slot_at(t.offset);
      const int64_t cols = s.mat.cols, rows = t.numel / cols, r0 = (t.offset - s.t.offset) / cols;
      const ops::WeightMat m = s.mat.slice_rows(r0, rows);
      const int64_t data_bytes = rows * m.row_bytes();
      auto copy = [](const void* src, int64_t n) {
        return [src, n](std::vector<uint8_t>& b) {
          b.resize((size_t)n);
          std::memcpy(b.data(), src, (size_t)n);
        };
      };
      if (!s.is_matrix) {
        ts.push_back({t.name, DType::F32, t.shape, copy(m.data, data_bytes)});
        continue;
      }
      ts.push_back({t.name, q == ops::WType::Q8 ? DType::I8 : DType::U8, {rows, m.row_bytes()}, copy(m.data, data_bytes)});
      ts.push_back({t.name + kScaleSuffix, DType::BF16, {rows, m.blocks()}, copy(m.scales, rows * m.blocks() * 2), true});
    }
    return write_tensor_files(out.string(), ts, o.max_shard_bytes, o.progress);
  }
}

}  // namespace dsmoe
