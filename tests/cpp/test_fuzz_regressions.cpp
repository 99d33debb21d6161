// Inputs the fuzz targets (fuzz/) found that the library mishandled, each committed under
// fuzz/regressions/<target>/ and replayed here through the same entry point: each must now be
// refused with a dsmoe::Error (the only exception a bad input may raise), not crash or throw
// another type.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "io/safetensors.h"
#include "model/config.h"

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

}  // namespace
