#include "infer/chat_format.h"

#include <filesystem>
#include <optional>

#include "core/error.h"
#include "infer/gguf_checkpoint.h"  // is_gguf_file
#include "io/gguf.h"
#include "io/safetensors.h"  // read_text_file

namespace dsmoe {

const char* const kDeepSeekChatTemplate =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

namespace {

namespace fs = std::filesystem;

constexpr const char* kDeepSeekBos = "<｜begin▁of▁sentence｜>";
constexpr const char* kDeepSeekEos = "<｜end▁of▁sentence｜>";

// The template string of tokenizer_config.json's "chat_template": a string, or a list of named
// templates (transformers uses the one named "default"). Empty when there is none.
std::string config_template(const nlohmann::ordered_json& config, const std::string& path) {
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array()) fail("{}: \"chat_template\" must be a string or a list of {{\"name\", \"template\"}}", path);
  std::string names;
  for (const auto& entry : *it) {
    if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("template") ||
        !entry["template"].is_string())
      fail("{}: every \"chat_template\" list entry must be {{\"name\": string, \"template\": string}}", path);
    if (entry["name"] == "default") return entry["template"].get<std::string>();
    names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
  }
  fail("{}: \"chat_template\" lists no template named \"default\" (it has: {})", path, names);
}

// A special token of tokenizer_config.json: a string, or an AddedToken object with "content".
void read_special_token(const nlohmann::ordered_json& config, const char* key, const std::string& path,
                        nlohmann::ordered_json& out) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return;
  if (it->is_string()) {
    out[key] = it->get<std::string>();
  } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    out[key] = (*it)["content"].get<std::string>();
  } else {
    fail("{}: \"{}\" must be a string or {{\"__type\": \"AddedToken\", \"content\": string}}", path, key);
  }
}

}  // namespace

ChatFormat ChatFormat::deepseek_default() {
  ChatFormat f;
  f.template_ = ChatTemplate::parse(kDeepSeekChatTemplate, "the DeepSeek default chat template");
  f.special_tokens_["bos_token"] = kDeepSeekBos;
  f.special_tokens_["eos_token"] = kDeepSeekEos;
  return f;
}

namespace {

// tokenizer_config.json of a folder, or null when there is none; malformed is an error naming it.
std::optional<nlohmann::ordered_json> read_tokenizer_config(const std::string& path) {
  if (!fs::exists(path)) return std::nullopt;
  nlohmann::ordered_json config;
  try {
    config = nlohmann::ordered_json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {  // parse_error, or out_of_range for a number past double
    fail("{}: not valid JSON ({})", path, e.what());
  }
  if (!config.is_object()) fail("{}: expected a JSON object", path);
  return config;
}

// The token string of a GGUF's tokenizer.ggml.<key>_token_id, or "" without one.
std::string gguf_special_token(const GgufFile& g, const std::string& key) {
  const std::string id_key = "tokenizer.ggml." + key + "_token_id";
  if (!g.find(id_key) || !g.find("tokenizer.ggml.tokens")) return "";
  const GgufValue& toks = g.get_array("tokenizer.ggml.tokens", GgufType::STRING);
  if (toks.count == 0) fail("{}: tokenizer.ggml.tokens is empty but {} is set", g.path(), id_key);
  return toks.strs[g.get_uint(id_key, toks.count - 1)];
}

}  // namespace

ChatFormat::Source ChatFormat::model_template(const std::string& model) {
  if (is_gguf_file(model)) {
    const GgufFile g(model);
    if (!g.find("tokenizer.chat_template")) return {};
    return {g.get_string("tokenizer.chat_template"), model + " (tokenizer.chat_template)"};
  }
  const std::string config_path = (fs::path(model) / "tokenizer_config.json").string();
  const std::string jinja_path = (fs::path(model) / "chat_template.jinja").string();
  Source src;
  if (const auto config = read_tokenizer_config(config_path)) {
    src.text = config_template(*config, config_path);
    if (!src.text.empty()) src.origin = config_path;
  }
  if (fs::exists(jinja_path)) src = {read_text_file(jinja_path), jinja_path};  // the newer file wins, as in transformers
  return src;
}

ChatFormat ChatFormat::load(const std::string& model) {
  ChatFormat f = deepseek_default();
  if (is_gguf_file(model)) {
    const GgufFile g(model);
    const std::string bos = gguf_special_token(g, "bos"), eos = gguf_special_token(g, "eos");
    if (g.find("tokenizer.ggml.bos_token_id") || g.find("tokenizer.ggml.eos_token_id")) {
      f.special_tokens_ = nlohmann::ordered_json::object();
      if (g.find("tokenizer.ggml.bos_token_id")) f.special_tokens_["bos_token"] = bos;
      if (g.find("tokenizer.ggml.eos_token_id")) f.special_tokens_["eos_token"] = eos;
    }
  } else if (const auto config = read_tokenizer_config((fs::path(model) / "tokenizer_config.json").string())) {
    const std::string config_path = (fs::path(model) / "tokenizer_config.json").string();
    f.special_tokens_ = nlohmann::ordered_json::object();
    for (const char* key : {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"})
      read_special_token(*config, key, config_path, f.special_tokens_);
  }
  Source src = model_template(model);
  if (src.origin.empty()) return f;
  f.source_ = src.origin;
  // ChatTemplate::parse names source_ in its errors, so a caller can report the file at start-up.
  f.template_ = ChatTemplate::parse(src.text, f.source_);
  f.from_model_ = true;
  return f;
}

std::string ChatFormat::render(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                               const nlohmann::ordered_json& extra) const {
  if (!extra.is_object()) fail("chat format: the extra template variables must be a JSON object");
  // The variables transformers passes: messages, tools and documents (None unless given),
  // add_generation_prompt, then the special tokens and the caller's keyword arguments.
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  nlohmann::ordered_json list = nlohmann::ordered_json::array();
  for (const ChatMessage& m : messages) list.push_back({{"role", m.role}, {"content", m.content}});
  vars["messages"] = std::move(list);
  vars["tools"] = nullptr;
  vars["documents"] = nullptr;
  vars["add_generation_prompt"] = add_generation_prompt;
  for (auto it = special_tokens_.begin(); it != special_tokens_.end(); ++it) vars[it.key()] = it.value();
  for (auto it = extra.begin(); it != extra.end(); ++it) vars[it.key()] = it.value();
  return template_.render(vars);
}

std::string ChatFormat::describe() const {
  return from_model_ ? "chat_template from " + source_ : "DeepSeek default format";
}

std::string ChatFormat::bos_token() const { return special_tokens_.value("bos_token", ""); }
std::string ChatFormat::eos_token() const { return special_tokens_.value("eos_token", ""); }

}  // namespace dsmoe
