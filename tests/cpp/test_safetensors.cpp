#include <gtest/gtest.h>

#include <fstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace dsmoe;

TEST(SafeTensors, RoundTripAndTruncation) {
  std::string path = test::tmp_path("st_roundtrip.safetensors");
  std::vector<float> a = {1.f, -2.5f, 3.25f, 0.f, 7.f, 1e-3f};
  std::vector<int32_t> b = {5, -7};
  SafeTensorsWriter w;
  w.add_f32("a", {2, 3}, a.data());
  w.add("b", DType::I32, {2}, b.data());
  w.set_metadata("step", "12");
  w.write(path);
  {
    SafeTensorsFile f(path);
    EXPECT_EQ(f.read_f32("a", {2, 3}), a);
    EXPECT_EQ(f.read_i32("b"), b);
    EXPECT_EQ(f.metadata().at("step"), "12");
    EXPECT_THROW(f.read_f32("a", {3, 2}), Error);
    EXPECT_THROW(f.get("missing"), Error);
  }
  // Truncate the file: opening must fail with a message naming the file, never crash.
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::string cut = test::tmp_path("st_truncated.safetensors");
  std::ofstream(cut, std::ios::binary) << bytes.substr(0, bytes.size() - 5);
  try {
    SafeTensorsFile f(cut);
    FAIL() << "truncated file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(cut), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos) << e.what();
  }
}

TEST(SafeTensors, Bf16Conversion) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f)), 1.0f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(-3.5f)), -3.5f);
  // Round to nearest even: 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7.
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(f16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_f32(0xc000), -2.0f);
}
