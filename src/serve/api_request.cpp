#include "serve/api_request.h"

#include <fmt/format.h>

#include <cmath>

namespace dsmoe::serve {

using json = nlohmann::json;

json ApiError::body() const {
  auto or_null = [](const std::string& s) { return s.empty() ? json(nullptr) : json(s); };
  return {{"error", {{"message", what()}, {"type", type}, {"param", or_null(param)}, {"code", or_null(code)}}}};
}

namespace {

[[noreturn]] void bad(const std::string& param, const std::string& message) {
  throw ApiError(400, message, param, "invalid_value");
}

// A field given as null counts as absent (OpenAI's SDKs send nulls for unset options).
const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

std::string string_field(const json& v, const std::string& name) {
  if (!v.is_string()) bad(name, fmt::format("'{}' must be a string, got {}", name, v.type_name()));
  return v.get<std::string>();
}

double real_field(const json& v, const std::string& name, double lo, double hi, bool lo_open) {
  if (!v.is_number()) bad(name, fmt::format("'{}' must be a number, got {}", name, v.type_name()));
  const double x = v.get<double>();
  if (!std::isfinite(x) || x > hi || (lo_open ? x <= lo : x < lo))
    bad(name, fmt::format("'{}' is {}, out of range: expected a number in {}{}, {}]", name, v.dump(), lo_open ? "(" : "[",
                          lo, hi));
  return x;
}

int64_t int_field(const json& v, const std::string& name, int64_t lo) {
  if (!v.is_number_integer()) bad(name, fmt::format("'{}' must be an integer, got {}", name, v.dump()));
  // nlohmann stores non-negative integers as unsigned: the lower bound applies to both kinds.
  if (v.is_number_unsigned() ? v.get<uint64_t>() > (uint64_t)INT64_MAX || (int64_t)v.get<uint64_t>() < lo
                             : v.get<int64_t>() < lo)
    bad(name, fmt::format("'{}' is {}, out of range: expected an integer >= {}", name, v.dump(), lo));
  return v.get<int64_t>();
}

std::vector<ChatMessage> parse_messages(const json& v) {
  if (!v.is_array() || v.empty()) bad("messages", "'messages' must be a non-empty array of {role, content} objects");
  std::vector<ChatMessage> out;
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string name = fmt::format("messages[{}]", i);
    const json& m = v[i];
    if (!m.is_object()) bad(name, fmt::format("'{}' must be an object with 'role' and 'content'", name));
    const json* role = field(m, "role");
    if (!role) bad(name + ".role", fmt::format("'{}.role' is required", name));
    ChatMessage msg{string_field(*role, name + ".role"), ""};
    if (const json* c = field(m, "content")) {
      if (c->is_string()) {
        msg.content = c->get<std::string>();
      } else if (c->is_array()) {  // content parts: only text ones can be rendered
        for (size_t k = 0; k < c->size(); ++k) {
          const json& part = (*c)[k];
          const std::string pn = fmt::format("{}.content[{}]", name, k);
          // part["type"] compared as JSON: a non-string type is just not "text" (value() would throw).
          if (!part.is_object() || !part.contains("type") || part["type"] != "text" || !part.contains("text") ||
              !part["text"].is_string())
            bad(pn, fmt::format("'{}' must be a {{\"type\": \"text\", \"text\": ...}} part (only text is supported)", pn));
          msg.content += part["text"].get<std::string>();
        }
      } else {
        bad(name + ".content", fmt::format("'{}.content' must be a string or an array of text parts", name));
      }
    }
    out.push_back(std::move(msg));
  }
  return out;
}

}  // namespace

ApiRequest parse_api_request(const std::string& body, bool chat) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
    throw ApiError(400, fmt::format("the request body is not valid JSON: {}", e.what()), "", "invalid_json");
  }
  if (!j.is_object()) throw ApiError(400, "the request body must be a JSON object", "", "invalid_json");
  ApiRequest r;
  if (const json* v = field(j, "model")) r.model = string_field(*v, "model");
  if (chat) {
    const json* v = field(j, "messages");
    if (!v) bad("messages", "'messages' is required");
    r.messages = parse_messages(*v);
  } else {
    const json* v = field(j, "prompt");
    if (!v) bad("prompt", "'prompt' is required");
    // A list holding one prompt is the same request; several would need several choices.
    if (v->is_array() && v->size() == 1 && (*v)[0].is_string()) r.prompt = (*v)[0].get<std::string>();
    else if (v->is_string()) r.prompt = v->get<std::string>();
    else bad("prompt", "'prompt' must be a string (or a list of one string)");
    if (r.prompt.empty()) bad("prompt", "'prompt' is empty");
  }
  const char* max_key = chat && field(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  if (const json* v = field(j, max_key)) r.max_tokens = int_field(*v, max_key, 1);
  if (const json* v = field(j, "temperature")) r.temperature = real_field(*v, "temperature", 0, 2, false);
  if (const json* v = field(j, "top_p")) r.top_p = real_field(*v, "top_p", 0, 1, true);
  if (const json* v = field(j, "top_k")) r.top_k = int_field(*v, "top_k", 0);
  if (const json* v = field(j, "seed")) {
    if (!v->is_number_integer()) bad("seed", fmt::format("'seed' must be an integer, got {}", v->dump()));
    r.seed = v->is_number_unsigned() ? v->get<uint64_t>() : (uint64_t)v->get<int64_t>();
  }
  if (const json* v = field(j, "stop")) {
    if (v->is_string()) r.stop.push_back(v->get<std::string>());
    else if (v->is_array())
      for (size_t i = 0; i < v->size(); ++i) r.stop.push_back(string_field((*v)[i], fmt::format("stop[{}]", i)));
    else bad("stop", "'stop' must be a string or a list of strings");
    if (r.stop.size() > 4) bad("stop", fmt::format("'stop' has {} strings, at most 4 are allowed", r.stop.size()));
    for (const auto& s : r.stop)
      if (s.empty()) bad("stop", "'stop' strings must not be empty");
  }
  if (const json* v = field(j, "stream")) {
    if (!v->is_boolean()) bad("stream", fmt::format("'stream' must be a boolean, got {}", v->dump()));
    r.stream = v->get<bool>();
  }
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object()) bad("stream_options", "'stream_options' must be an object");
    if (const json* u = field(*v, "include_usage")) {
      if (!u->is_boolean())
        bad("stream_options.include_usage", fmt::format("'stream_options.include_usage' must be a boolean, got {}", u->dump()));
      r.include_usage = u->get<bool>();
    }
  }
  auto top_count = [](const json& v, const char* name) {
    const int64_t k = int_field(v, name, 0);
    if (k > kMaxTopLogprobs)
      bad(name, fmt::format("'{}' is {}, out of range: expected an integer in [0, {}]", name, k, kMaxTopLogprobs));
    return k;
  };
  if (chat) {
    bool want = false;
    if (const json* v = field(j, "logprobs")) {
      if (!v->is_boolean()) bad("logprobs", fmt::format("'logprobs' must be a boolean, got {}", v->dump()));
      want = v->get<bool>();
    }
    if (const json* v = field(j, "top_logprobs")) {
      const int64_t k = top_count(*v, "top_logprobs");
      if (!want) bad("top_logprobs", "'top_logprobs' needs 'logprobs': true");
      r.top_logprobs = k;
    } else if (want) {
      r.top_logprobs = 0;
    }
  } else if (const json* v = field(j, "logprobs")) {
    r.top_logprobs = top_count(*v, "logprobs");
  }
  if (const json* v = field(j, "n"))
    if (int_field(*v, "n", 1) != 1) bad("n", fmt::format("'n' is {}: only n = 1 is supported", v->dump()));
  return r;
}

}  // namespace dsmoe::serve
