#include "infer/model_files.h"

#include <filesystem>

#include "core/error.h"
#include "infer/chat_format.h"
#include "io/safetensors.h"
#include "io/tokenizer_files.h"
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
  if (!codec.is_file()) {  // rebuilt from a GGUF file's tokenizer.ggml.*: no file to copy
    const std::string path = (fs::path(dir) / "tokenizer.json").string();
    write_file_atomic(path, codec.tokenizer_json());
    write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(),
                      make_tokenizer_config(path, codec.bos_id(), codec.eos_id(),
                                            ChatFormat::model_template(codec.spec()).text).dump(2) + "\n");
    return;
  }
  if (!copy_tokenizer_files(codec.spec(), dir))  // a tokenizer.json alone: say its BOS/EOS
    write_file_atomic((fs::path(dir) / "tokenizer_config.json").string(),
                      make_tokenizer_config(codec.spec(), codec.bos_id(), codec.eos_id(), "").dump(2) + "\n");
}

}  // namespace dsmoe
