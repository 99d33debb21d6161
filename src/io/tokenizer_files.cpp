#include "io/tokenizer_files.h"

#include <filesystem>

#include "io/safetensors.h"

namespace dsmoe {

namespace fs = std::filesystem;

bool copy_tokenizer_files(const std::string& tokenizer_json, const std::string& dir) {
  write_file_atomic((fs::path(dir) / "tokenizer.json").string(), read_text_file(tokenizer_json));
  const fs::path cfg = fs::path(tokenizer_json).parent_path() / "tokenizer_config.json";
  if (!fs::exists(cfg)) return false;
  write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), read_text_file(cfg.string()));
  return true;
}

}  // namespace dsmoe
