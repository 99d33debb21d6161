#include "io/token_ids.h"

#include <charconv>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace dsmoe {

using json = nlohmann::json;

std::vector<std::vector<int32_t>> parse_ids_jsonl(std::string_view text, const std::string& source, int64_t id_limit) {
  std::vector<std::vector<int32_t>> seqs;
  size_t pos = 0;
  int64_t lineno = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    const std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number past double
      fail("{}:{}: not valid JSON: {}", source, lineno, e.what());
    }
    if (!j.is_array()) fail("{}:{}: expected a JSON array of token ids", source, lineno);
    std::vector<int32_t> ids;
    ids.reserve(j.size());
    for (const json& v : j) {
      // is_number_integer covers both of nlohmann's integer kinds; an unsigned one past INT64_MAX
      // would turn negative through get<int64_t>, so it is compared as unsigned.
      const bool in_range = v.is_number_integer() &&
                            (v.is_number_unsigned() ? v.get<uint64_t>() < (uint64_t)id_limit
                                                    : v.get<int64_t>() >= 0 && v.get<int64_t>() < id_limit);
      if (!in_range) fail("{}:{}: {} is not a token id in [0, {})", source, lineno, v.dump(), id_limit);
      ids.push_back((int32_t)v.get<int64_t>());
    }
    seqs.push_back(std::move(ids));
  }
  return seqs;
}

std::vector<int32_t> parse_id_list(std::string_view text, const std::string& what, int64_t id_limit) {
  std::vector<int32_t> ids;
  size_t i = 0;
  auto separator = [](char c) { return c == ',' || c == ' ' || c == '[' || c == ']' || c == '\t' || c == '\n' || c == '\r'; };
  while (i < text.size()) {
    if (separator(text[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < text.size() && !separator(text[j])) ++j;
    const std::string_view tok = text.substr(i, j - i);
    int64_t v = -1;
    const auto [end, ec] = std::from_chars(tok.data(), tok.data() + tok.size(), v);
    if (ec != std::errc() || end != tok.data() + tok.size() || v < 0 || v >= id_limit)
      fail("{}: '{}' is not a token id in [0, {}) (expected non-negative integers like 1,2,3)", what, tok, id_limit);
    ids.push_back((int32_t)v);
    i = j;
  }
  return ids;
}

void append_ids_jsonl(std::string& out, const std::vector<int32_t>& ids) {
  out += '[';
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ',';
    out += std::to_string(ids[i]);
  }
  out += "]\n";
}

}  // namespace dsmoe
