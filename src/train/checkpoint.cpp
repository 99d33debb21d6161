#include "train/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/safetensors.h"

namespace dsmoe {

namespace fs = std::filesystem;
static const char* kFormat = "dsmoe-checkpoint-1";

static std::string ckpt_path(const std::string& dir) { return (fs::path(dir) / "checkpoint.safetensors").string(); }
static std::string config_path(const std::string& dir) { return (fs::path(dir) / "config.json").string(); }

bool checkpoint_exists(const std::string& dir) { return fs::exists(ckpt_path(dir)); }

void save_checkpoint(const std::string& dir, const Config& cfg, const Model& model, AdamW* opt,
                     const TrainState& st) {
  fs::create_directories(dir);
  write_file_atomic(config_path(dir), to_json(cfg).dump(2) + "\n");
  const auto& layout = model.layout();
  const float* p = model.params().data();
  SafeTensorsWriter w;
  for (const auto& t : layout.hf_tensors()) w.add_f32(t.name, t.shape, p + t.offset);
  if (opt) {
    for (const auto& t : layout.tensors()) {
      w.add_f32("optimizer.m." + t.name, t.shape, opt->m().data() + t.offset);
      w.add_f32("optimizer.v." + t.name, t.shape, opt->v().data() + t.offset);
    }
  }
  w.add("train.data_rng", DType::U8, {32}, st.data_rng.data());
  w.set_metadata("format", kFormat);
  w.set_metadata("step", std::to_string(st.step));
  w.set_metadata("tokens_seen", std::to_string(st.tokens_seen));
  w.set_metadata("config", to_json(cfg).dump());
  w.write(ckpt_path(dir));
}

Config load_checkpoint_config(const std::string& dir) {
  if (!fs::exists(config_path(dir))) fail("{}: missing (not a dsmoe checkpoint folder?)", config_path(dir));
  return load_config(config_path(dir));
}

static int64_t meta_int(const SafeTensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end()) fail("{}: metadata '{}' missing", f.path(), key);
  try {
    return std::stoll(it->second);
  } catch (...) {
    fail("{}: metadata '{}' must be an integer, got '{}'", f.path(), key, it->second);
  }
}

void load_checkpoint(const std::string& dir, Model& model, AdamW* opt, TrainState* st, bool allow_nonfinite,
                     Checksums checksums) {
  const std::string path = ckpt_path(dir);
  if (!fs::exists(path)) fail("{}: no checkpoint here", path);
  SafeTensorsFile f(path, checksums);
  auto fmt_it = f.metadata().find("format");
  if (fmt_it == f.metadata().end() || fmt_it->second != kFormat)
    fail("{}: not a dsmoe checkpoint (metadata 'format' should be '{}')", path, kFormat);
  const auto& layout = model.layout();
  float* p = model.params().data();
  // Non-finite weights or moments are refused (read_f32_into names the tensor): resuming from them
  // would train on NaN, and eval would report a NaN loss as a result.
  for (const auto& t : layout.hf_tensors()) f.read_f32_into(t.name, p + t.offset, t.shape, allow_nonfinite);
  if (opt) {
    for (const auto& t : layout.tensors()) {
      f.read_f32_into("optimizer.m." + t.name, opt->m().data() + t.offset, t.shape, allow_nonfinite);
      f.read_f32_into("optimizer.v." + t.name, opt->v().data() + t.offset, t.shape, allow_nonfinite);
    }
  }
  if (st) {
    st->step = meta_int(f, "step");
    st->tokens_seen = meta_int(f, "tokens_seen");
    // The run that wrote the checkpoint never goes past its own training.steps (the config stored
    // in the same file, so it cannot be out of step with the weights).
    int64_t max_step = limits::kMaxSteps;
    if (auto c = f.metadata().find("config"); c != f.metadata().end()) {
      nlohmann::json j = nlohmann::json::parse(c->second, nullptr, false);
      if (j.is_discarded()) fail("{}: metadata 'config' is not valid JSON", path);
      max_step = parse_config(j, path + " (metadata 'config')").train.steps;
    }
    if (st->step < 0 || st->step > max_step)
      fail("{}: metadata 'step' = {} is outside [0, training.steps = {}]", path, st->step, max_step);
    if (st->tokens_seen < 0) fail("{}: metadata 'tokens_seen' = {} is negative", path, st->tokens_seen);
    auto rng = f.read_bytes("train.data_rng", DType::U8);
    if (rng.size() != 32) fail("{}: tensor 'train.data_rng' must hold 32 bytes, got {}", path, rng.size());
    std::memcpy(st->data_rng.data(), rng.data(), 32);
    // xoshiro256** never leaves the all-zero state (it would return 0 forever): no run writes it.
    if (st->data_rng == std::array<uint64_t, 4>{})
      fail("{}: tensor 'train.data_rng' is all zeros, a degenerate xoshiro256** state no run can have "
           "(corrupted checkpoint)", path);
  }
}

}  // namespace dsmoe
