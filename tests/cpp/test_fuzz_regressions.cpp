// Inputs the fuzz targets (fuzz/) found that the library mishandled, each committed under
// fuzz/regressions/<target>/ and replayed here through the same entry point: each must now be
// refused with a dsmoe::Error (the only exception a bad input may raise), not crash or throw
// another type.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "experiment/suite.h"
#include "infer/chat_template.h"
#include "infer/gguf_vocab.h"
#include "infer/hf_checkpoint.h"
#include "io/gguf.h"
#include "io/safetensors.h"
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
