// Inputs the fuzz targets (fuzz/) found that the library mishandled, each committed under
// fuzz/regressions/<target>/ and replayed here through the same entry point: each must now be
// refused with a dsmoe::Error (the only exception a bad input may raise), not crash or throw
// another type.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "experiment/suite.h"
#include "infer/chat_template.h"
#include "infer/gguf_checkpoint.h"
#include "infer/gguf_vocab.h"
#include "infer/hf_checkpoint.h"
#include "io/gguf.h"
#include "io/safetensors.h"
#include "model/params.h"
#include "model/config.h"
#include "serve/api_request.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace {

std::string reproducer(const std::string& target, const std::string& name) {
  return dsmoe::read_text_file(std::string(DSMOE_SOURCE_DIR) + "/fuzz/regressions/" + target + "/" + name);
}

// parse_config read attention_bias with json::value(), which throws nlohmann's type_error for a
// value that is not a boolean.
TEST(FuzzRegressions, ConfigAttentionBiasNotBoolean) {
  const auto j = nlohmann::json::parse(reproducer("fuzz_config", "attention_bias_number.json"));
  EXPECT_THROW(dsmoe::parse_config(j, "config.json"), dsmoe::Error);
}

// A JSON number past the range of a double makes nlohmann's parser throw out_of_range (406), not
// parse_error; every reader caught parse_error only, so the exception escaped as a crash.
TEST(FuzzRegressions, JsonNumberOverflowIsRefused) {
  const std::string dir = dsmoe::test::tmp_path("fuzz_number_overflow");
  std::filesystem::create_directories(dir);
  const std::string config = reproducer("fuzz_quant_config", "number_overflow.json");
  dsmoe::write_file_atomic(dir + "/config.json", config);
  EXPECT_THROW(dsmoe::stored_quantization(dir), dsmoe::Error);
  EXPECT_THROW(dsmoe::load_hf_config(dir), dsmoe::Error);
  EXPECT_THROW(dsmoe::load_config(dir + "/config.json"), dsmoe::Error);
  dsmoe::write_file_atomic(dir + "/suite.json", config);
  EXPECT_THROW(dsmoe::experiment::load_suite(dir + "/suite.json", false), dsmoe::Error);
  EXPECT_THROW(dsmoe::tok::Tokenizer::from_json(reproducer("fuzz_tokenizer_json", "number_overflow.json")),
               dsmoe::Error);
}

// load_suite read "name" and a model's "label" with json::value(), which throws nlohmann's
// type_error for a value that is not a string.
TEST(FuzzRegressions, SuiteNameNotString) {
  const std::string path = std::string(DSMOE_SOURCE_DIR) + "/fuzz/regressions/fuzz_suite/name_not_string.json";
  EXPECT_THROW(dsmoe::experiment::load_suite(path, false), dsmoe::Error);
}

// `{% if +++...` with about 1300 unary signs (under the 2000-token limit of a tag): the parser read
// the chain by recursion outside its nesting guard, and the renderer's recursive evaluation of the
// 1300-deep expression overflowed the stack under ASan. Now refused at parse time.
TEST(FuzzRegressions, ChatTemplateUnarySignChain) {
  const std::string source = reproducer("fuzz_chat_template", "unary_sign_chain.jinja");
  EXPECT_TRUE(dsmoe::test::error_mentions([&] { dsmoe::ChatTemplate::parse(source, "fuzz"); }, {"nesting deeper than"}));
}

// gguf_tokenizer_json put tokenizer.ggml.tokens into a JSON document as they were; a token that is
// not valid UTF-8 made nlohmann's dump throw type_error (316) instead of a dsmoe::Error.
TEST(FuzzRegressions, GgufTokenNotUtf8) {
  const dsmoe::GgufFile f(std::string(DSMOE_SOURCE_DIR) + "/fuzz/regressions/fuzz_gguf/invalid_utf8_token.gguf");
  EXPECT_TRUE(dsmoe::test::error_mentions([&] { dsmoe::gguf_tokenizer_json(f); }, {"not valid UTF-8"}));
}

// parse_api_request caught json::parse_error only: a number past the range of a double (nlohmann's
// out_of_range 406) escaped to cpp-httplib's exception handler, which answered the client's bad
// request with a 500 internal_error. Now a 400 invalid_json.
// The ApiError a reproducer's body is refused with (a failure if it is accepted).
dsmoe::serve::ApiError api_error_of(const std::string& name, bool chat) {
  const std::string body = reproducer("fuzz_api_request", name);
  try {
    dsmoe::serve::parse_api_request(body, chat);
  } catch (const dsmoe::serve::ApiError& e) {
    return e;
  }
  ADD_FAILURE() << "accepted " << body;
  return dsmoe::serve::ApiError(0, "accepted");
}

TEST(FuzzRegressions, ApiRequestNumberOverflowIsABadRequest) {
  const auto e = api_error_of("number_overflow.json", false);
  EXPECT_EQ(e.status, 400) << e.what();
  EXPECT_EQ(e.code, "invalid_json") << e.what();
}

// A chat content part's "type" was read with json::value("type", ""), which throws nlohmann's
// type_error for a non-string value: a 500 again, instead of the 400 naming the part.
TEST(FuzzRegressions, ApiRequestContentPartTypeNotString) {
  const auto e = api_error_of("content_part_type_number.json", true);
  EXPECT_EQ(e.status, 400) << e.what();
  EXPECT_EQ(e.param, "messages[0].content[0]") << e.what();
}

}  // namespace

// A model folder whose index names a shard by a file name longer than the file system allows:
// std::filesystem::exists threw filesystem_error (ENAMETOOLONG), which escaped the loader as an
// exception that was not an input error (fuzz_hf_folder). The input is the fuzz target's: config,
// index and shard bytes separated by "\n=====\n".
TEST(FuzzRegressions, HfFolderShardNameTooLong) {
  const std::string in = reproducer("fuzz_hf_folder", "shard_name_too_long.bin");
  const std::string sep = "\n=====\n";
  std::vector<std::string> parts;
  for (size_t at = 0;;) {
    const size_t next = parts.size() < 2 ? in.find(sep, at) : std::string::npos;
    parts.push_back(in.substr(at, next == std::string::npos ? std::string::npos : next - at));
    if (next == std::string::npos) break;
    at = next + sep.size();
  }
  ASSERT_EQ(parts.size(), 3u) << "the reproducer is config, index and shard";
  const std::string dir = dsmoe::test::tmp_path("fuzz_shard_name_too_long");
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  dsmoe::write_file_atomic(dir + "/config.json", parts[0]);
  dsmoe::write_file_atomic(dir + "/model.safetensors.index.json", parts[1]);
  dsmoe::write_file_atomic(dir + "/model-00001-of-00001.safetensors", parts[2]);
  EXPECT_TRUE(dsmoe::test::error_mentions([&] { dsmoe::load_inference_model(dir); },
                                          {"model.safetensors.index.json: weight_map['", "File name too long"}));
}

// A GGUF whose metadata asks for many layers of many small experts (8188 HF tensors,
// within the fuzz target's parameter bound): every tensor was looked up by a linear search over
// all names (ParamLayout::find_hf, InferenceWeights::build_views), so mapping it took seconds of
// quadratic work before the first check refused it (fuzz_gguf: a timeout). Now a hash lookup;
// the file is refused as before. (The time is not asserted here; the fuzz run's 10-s bound is
// what checks it.)
TEST(FuzzRegressions, GgufWithManyTensorsIsRefused) {
  const dsmoe::GgufFile f(std::string(DSMOE_SOURCE_DIR) + "/fuzz/regressions/fuzz_gguf/many_tensors_quadratic_lookup.gguf");
  const dsmoe::Config c = dsmoe::load_gguf_config(f);
  const dsmoe::ParamLayout layout(c.model);
  EXPECT_GT(layout.hf_tensors().size(), 5000u) << "the reproducer no longer describes a model of many tensors";
  dsmoe::InferenceWeights w = dsmoe::InferenceWeights::allocate(c.model, dsmoe::ops::WType::F32);
  EXPECT_THROW(dsmoe::load_gguf_weights_into(f, w), dsmoe::Error);
}
