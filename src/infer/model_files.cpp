#include "infer/model_files.h"

#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"

namespace dsmoe {

namespace fs = std::filesystem;
using json = nlohmann::json;

json make_tokenizer_config(const std::string& tokenizer_json, int32_t bos, int32_t eos, const std::string& chat_template) {
  const tok::Tokenizer t = tok::Tokenizer::load(tokenizer_json, "", /*use_config=*/false);
  json j = {{"tokenizer_class", "PreTrainedTokenizerFast"}, {"clean_up_tokenization_spaces", false},
            {"add_eos_token", false}};
  const std::vector<int32_t> specials = t.encode("", /*add_special_tokens=*/true);
  j["add_bos_token"] = bos >= 0 && !specials.empty() && specials.front() == bos;
  auto spell = [&](int32_t id, const char* key) {
    if (id < 0) return;
    auto tokstr = t.id_to_token(id);
    if (!tokstr) fail("{}: {} id {} is not in the tokenizer's vocabulary", tokenizer_json, key, id);
    j[key] = *tokstr;
  };
  spell(bos, "bos_token");
  spell(eos, "eos_token");
  if (!chat_template.empty()) j["chat_template"] = chat_template;
  return j;
}

void write_model_text_files(const std::string& dir, const TextCodec& codec, const ModelConfig& m) {
  const int64_t bos = codec.bos_id() >= 0 ? codec.bos_id() : m.bos_token_id;
  const int64_t eos = codec.eos_id() >= 0 ? codec.eos_id() : m.eos_token_id;
  json gen = {{"_from_model_config", true}, {"bos_token_id", bos}, {"eos_token_id", eos}};
  write_file_atomic((fs::path(dir) / "generation_config.json").string(), gen.dump(2) + "\n");
  if (codec.is_bytes()) return;
  const fs::path src(codec.spec());
  write_file_atomic((fs::path(dir) / "tokenizer.json").string(), read_text_file(src.string()));
  const fs::path src_cfg = src.parent_path() / "tokenizer_config.json";
  const std::string cfg = fs::exists(src_cfg)
                              ? read_text_file(src_cfg.string())
                              : make_tokenizer_config(src.string(), codec.bos_id(), codec.eos_id(), "").dump(2) + "\n";
  write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(), cfg);
}

}  // namespace dsmoe
