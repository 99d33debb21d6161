#include "experiment/suite.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/path_exists.h"
#include "io/safetensors.h"

namespace dsmoe::experiment {

namespace fs = std::filesystem;
using json = nlohmann::json;

const SuiteModel* Suite::find(const std::string& id) const {
  for (const auto& m : models)
    if (m.id == id) return &m;
  return nullptr;
}

bool Suite::in_group(const SuiteModel& m, const std::string& group) const {
  return std::find(m.groups.begin(), m.groups.end(), group) != m.groups.end();
}

namespace {

std::vector<uint64_t> read_seeds(const json& v, const std::string& where) {
  if (!v.is_array() || v.empty()) fail("{}: expected a non-empty array of seeds (non-negative integers)", where);
  std::vector<uint64_t> out;
  for (const auto& s : v) {
    if (!s.is_number_integer() || s.get<int64_t>() < 0) fail("{}: seed {} is not a non-negative integer", where, s.dump());
    out.push_back(s.get<uint64_t>());
  }
  return out;
}

std::vector<std::string> read_strings(const json& v, const std::string& where) {
  std::vector<std::string> out;
  if (!v.is_array()) fail("{}: expected an array of strings", where);
  for (const auto& s : v) {
    if (!s.is_string()) fail("{}: {} is not a string", where, s.dump());
    out.push_back(s.get<std::string>());
  }
  return out;
}

AnalysisSpec read_analysis(const json& a, const std::string& name, const std::string& where, const Suite& suite) {
  AnalysisSpec spec;
  if (!a.contains(name)) return spec;
  const json& j = a[name];
  const std::string w = where + ": analyses." + name;
  if (!j.is_object()) fail("{}: expected an object", w);
  static const std::set<std::string> keys = {"models", "ratios", "k", "reference"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!keys.count(it.key())) fail("{}: unknown key '{}' (expected models, ratios, k or reference)", w, it.key());
  if (!j.contains("models")) fail("{}: missing 'models'", w);
  spec.models = read_strings(j["models"], w + ".models");
  for (const auto& id : spec.models)
    if (!suite.find(id)) fail("{}.models: no model with id '{}' in the suite", w, id);
  if (j.contains("ratios")) {
    if (!j["ratios"].is_array()) fail("{}.ratios: expected an array of fractions in [0, 1)", w);
    for (const auto& r : j["ratios"]) {
      if (!r.is_number() || r.get<double>() < 0 || r.get<double>() >= 1)
        fail("{}.ratios: {} is not a fraction in [0, 1)", w, r.dump());
      spec.ratios.push_back(r.get<double>());
    }
  }
  if (j.contains("k")) {
    if (!j["k"].is_array()) fail("{}.k: expected an array of positive integers", w);
    for (const auto& k : j["k"]) {
      if (!k.is_number_integer() || k.get<int64_t>() < 1) fail("{}.k: {} is not a positive integer", w, k.dump());
      spec.k.push_back(k.get<int64_t>());
    }
  }
  if (j.contains("reference")) {
    if (!j["reference"].is_string() || !suite.find(j["reference"].get<std::string>()))
      fail("{}.reference: expected the id of a model in the suite, got {}", w, j["reference"].dump());
    spec.reference = j["reference"].get<std::string>();
  }
  return spec;
}

// The training section without its seed: what must be equal across the models of a fair comparison.
json budget_of(const Config& c) {
  json t = to_json(c)["training"];
  t.erase("seed");
  return t;
}

}  // namespace

// obj[key] when present, else `fallback`; json::value() would throw nlohmann's type_error for a
// value that is not a string.
static std::string string_or(const json& obj, const char* key, const std::string& fallback, const std::string& where) {
  if (!obj.contains(key)) return fallback;
  if (!obj[key].is_string()) fail("{}: key '{}' must be a string, got {}", where, key, obj[key].dump());
  return obj[key].get<std::string>();
}

Suite load_suite(const std::string& path, bool quick, const std::string& data_override) {
  json j;
  try {
    j = json::parse(read_text_file(path));
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
    fail("{}: not valid JSON: {}", path, e.what());
  }
  if (!j.is_object()) fail("{}: a suite must be a JSON object", path);
  static const std::set<std::string> keys = {"_comment", "name", "data", "seeds", "models", "analyses", "quick"};
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!keys.count(it.key())) fail("{}: unknown key '{}'", path, it.key());

  Suite s;
  s.path = path;
  s.quick = quick;
  s.name = string_or(j, "name", fs::path(path).stem().string(), path);
  if (!data_override.empty()) {
    s.data_dir = data_override;
  } else {
    if (!j.contains("data") || !j["data"].is_string()) fail("{}: key 'data' (prepared data folder) missing", path);
    s.data_dir = j["data"].get<std::string>();
  }
  if (!j.contains("seeds")) fail("{}: key 'seeds' missing", path);
  s.seeds = read_seeds(j["seeds"], path + ": seeds");

  json quick_model = json::object(), quick_training = json::object();
  if (quick) {
    if (!j.contains("quick") || !j["quick"].is_object()) fail("{}: --quick needs a 'quick' object in the suite", path);
    const json& q = j["quick"];
    for (auto it = q.begin(); it != q.end(); ++it)
      if (it.key() != "_comment" && it.key() != "seeds" && it.key() != "model" && it.key() != "training")
        fail("{}: unknown key 'quick.{}' (expected seeds, model, training)", path, it.key());
    if (q.contains("seeds")) s.seeds = read_seeds(q["seeds"], path + ": quick.seeds");
    if (q.contains("model")) quick_model = q["model"];
    if (q.contains("training")) quick_training = q["training"];
    if (!quick_model.is_object() || !quick_training.is_object())
      fail("{}: quick.model and quick.training must be objects", path);
  }

  if (!j.contains("models") || !j["models"].is_array() || j["models"].empty())
    fail("{}: key 'models' must be a non-empty array", path);
  const fs::path dir = fs::path(path).parent_path();
  std::set<std::string> ids;
  for (size_t i = 0; i < j["models"].size(); ++i) {
    const json& mj = j["models"][i];
    const std::string w = fmt::format("{}: models[{}]", path, i);
    if (!mj.is_object()) fail("{}: expected an object", w);
    for (auto it = mj.begin(); it != mj.end(); ++it)
      if (it.key() != "id" && it.key() != "label" && it.key() != "config" && it.key() != "groups" &&
          it.key() != "seeds")
        fail("{}: unknown key '{}' (expected id, label, config, groups, seeds)", w, it.key());
    SuiteModel m;
    if (!mj.contains("id") || !mj["id"].is_string() || mj["id"].get<std::string>().empty())
      fail("{}: 'id' (a non-empty string) missing", w);
    m.id = mj["id"].get<std::string>();
    if (m.id.find_first_of("/\\ ") != std::string::npos) fail("{}: id '{}' must not contain '/', '\\' or spaces", w, m.id);
    if (!ids.insert(m.id).second) fail("{}: duplicate id '{}'", w, m.id);
    m.label = string_or(mj, "label", m.id, w);
    if (!mj.contains("config") || !mj["config"].is_string()) fail("{}: 'config' (a config file name) missing", w);
    m.config_path = (dir / mj["config"].get<std::string>()).lexically_normal().string();
    if (mj.contains("groups")) m.groups = read_strings(mj["groups"], w + ".groups");
    const json seeds = mj.value("seeds", json("all"));
    if (seeds == "all") {
      m.seeds = s.seeds;
    } else if (seeds == "first") {
      m.seeds = {s.seeds.front()};
    } else {
      m.seeds = read_seeds(seeds, w + ".seeds");
      if (quick) m.seeds = {s.seeds.front()};  // quick mode has its own seed list
    }
    if (!path_exists(m.config_path, fmt::format("{} ('{}')", w, m.id))) fail("{} ('{}'): config file '{}' not found", w, m.id, m.config_path);
    json cj = load_config_json(m.config_path);
    for (auto it = quick_model.begin(); it != quick_model.end(); ++it) cj[it.key()] = *it;
    if (!quick_training.empty()) {
      if (!cj.contains("training")) cj["training"] = json::object();
      cj["training"].update(quick_training);
    }
    m.config = parse_config(cj, m.config_path + (quick ? " (with the suite's quick overrides)" : ""));
    s.models.push_back(std::move(m));
  }

  // A fair comparison: one token budget, batch, schedule and evaluation for every model.
  const json budget = budget_of(s.models.front().config);
  for (const auto& m : s.models)
    if (budget_of(m.config) != budget)
      fail("{}: model '{}' ({}) trains with {} but model '{}' with {}: every model of a suite must share the "
           "training settings (only the seed varies)",
           path, m.id, m.config_path, budget_of(m.config).dump(), s.models.front().id, budget.dump());

  if (j.contains("analyses")) {
    const json& a = j["analyses"];
    if (!a.is_object()) fail("{}: 'analyses' must be an object", path);
    for (auto it = a.begin(); it != a.end(); ++it)
      if (it.key() != "disable_top" && it.key() != "top_k" && it.key() != "drop_shared" && it.key() != "routing" &&
          it.key() != "per_domain")
        fail("{}: unknown analysis '{}' (expected disable_top, top_k, drop_shared, routing, per_domain)", path, it.key());
    s.disable_top = read_analysis(a, "disable_top", path, s);
    s.top_k = read_analysis(a, "top_k", path, s);
    s.drop_shared = read_analysis(a, "drop_shared", path, s);
    s.routing = read_analysis(a, "routing", path, s);
    s.per_domain = read_analysis(a, "per_domain", path, s);
    for (const auto& id : s.disable_top.models)
      if (s.find(id)->config.model.router_type != RouterType::SoftmaxTopK || !s.find(id)->config.model.is_moe())
        fail("{}: analyses.disable_top: model '{}' has no learned router", path, id);
  }
  return s;
}

void restrict_seeds(Suite& s, const std::vector<uint64_t>& keep) {
  auto kept = [&](uint64_t seed) { return std::find(keep.begin(), keep.end(), seed) != keep.end(); };
  for (uint64_t seed : keep) {
    bool used = false;
    for (const auto& m : s.models) used = used || std::find(m.seeds.begin(), m.seeds.end(), seed) != m.seeds.end();
    if (!used) fail("{}: no model of the suite is trained with seed {}", s.path, seed);
  }
  if (s.suite_seeds.empty()) s.suite_seeds = s.seeds;
  std::erase_if(s.seeds, [&](uint64_t seed) { return !kept(seed); });
  for (auto& m : s.models) {
    const std::vector<uint64_t> all = m.seeds;
    std::erase_if(m.seeds, [&](uint64_t seed) { return !kept(seed); });
    if (m.seeds.empty())
      fail("{}: model '{}' is trained with seeds {} only, none of them among the seeds kept", s.path, m.id,
           json(all).dump());
  }
}

}  // namespace dsmoe::experiment
