// The safetensors reader against the format's own rules (huggingface/safetensors: read_metadata and
// Metadata::validate, and the cases of its test suite): every malformed file is refused with an error
// naming the file and the tensor, and every file the reference accepts loads here too.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <xxhash.h>

#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

using namespace dsmoe;

namespace {

// A raw safetensors file: u64 little-endian header length, the header text as given, then `data`.
std::string raw_file(const std::string& name, const std::string& header, const std::string& data,
                     uint64_t declared_len = UINT64_MAX) {
  const std::string path = test::tmp_path("stf_" + name + ".safetensors");
  const uint64_t n = declared_len == UINT64_MAX ? header.size() : declared_len;
  std::string bytes(8, '\0');
  std::memcpy(bytes.data(), &n, 8);
  std::ofstream(path, std::ios::binary) << bytes << header << data;
  return path;
}

std::string f32(const std::string& name, int64_t n, int64_t begin, int64_t end) {
  return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(n) + "],\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

::testing::AssertionResult refused(const std::string& path, const std::vector<std::string>& needles) {
  std::vector<std::string> all = {path};
  all.insert(all.end(), needles.begin(), needles.end());
  return test::error_mentions([&] { SafeTensorsFile f(path); }, all);
}

}  // namespace

TEST(SafeTensorsFormat, AcceptsWhatTheReferenceAccepts) {
  // Tensors listed out of offset order (the reference sorts by offsets), space padding, an empty
  // tensor sharing its offset with the next one, and null metadata.
  const std::string path = raw_file(
      "valid", "{\"__metadata__\":null," + f32("b", 1, 8, 12) + "," + f32("a", 2, 0, 8) + "," + f32("e", 0, 8, 8) + "}   ",
      std::string(12, '\0'));
  SafeTensorsFile f(path);
  EXPECT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.read_f32("a").size(), 2u);
  EXPECT_TRUE(f.read_f32("e").empty());
  // An empty file body: no tensors, no data.
  SafeTensorsFile empty(raw_file("empty", "{}", ""));
  EXPECT_TRUE(empty.tensors().empty());
}

TEST(SafeTensorsFormat, EmptyTensorsReadWithoutTouchingNullPointers) {
  // read_i32 / read_f32 of a 0-element tensor copy into the null data() of an empty vector: guarded
  // (memcpy with a null pointer is UB even for 0 bytes; a -fsanitize=undefined build reports it).
  const std::string path = test::tmp_path("stf_empty_tensors.safetensors");
  SafeTensorsWriter w;
  w.add("i", DType::I32, {0}, nullptr);
  w.add("f", DType::F32, {3, 0}, nullptr);
  w.write(path);
  SafeTensorsFile f(path);
  EXPECT_TRUE(f.read_i32("i").empty());
  EXPECT_TRUE(f.read_f32("f", {3, 0}).empty());
}

TEST(SafeTensorsFormat, RefusesOverlappingOffsets) {
  EXPECT_TRUE(refused(raw_file("overlap", "{" + f32("a", 2, 0, 8) + "," + f32("b", 2, 4, 12) + "}", std::string(12, '\0')),
                      {"'b'", "[4, 12]", "overlap"}));
}

TEST(SafeTensorsFormat, RefusesGapsBetweenTensors) {
  EXPECT_TRUE(refused(raw_file("gap", "{" + f32("a", 1, 0, 4) + "," + f32("b", 1, 8, 12) + "}", std::string(12, '\0')),
                      {"'b'", "gap of 4"}));
  // A first tensor that does not start at 0 leaves a gap too.
  EXPECT_TRUE(refused(raw_file("gap0", "{" + f32("a", 1, 4, 8) + "}", std::string(8, '\0')), {"'a'", "gap"}));
}

TEST(SafeTensorsFormat, RefusesTrailingBytesAfterTheLastTensor) {
  EXPECT_TRUE(refused(raw_file("trailing", "{" + f32("a", 1, 0, 4) + "}", std::string(9, '\0')),
                      {"cover 4 of the 9 data bytes", "5 bytes after the last tensor"}));
}

TEST(SafeTensorsFormat, RefusesAHeaderOverTheReferenceLimit) {
  // The declared length alone decides (the reference checks it before reading the header).
  EXPECT_TRUE(refused(raw_file("huge_header", "{}", "", SafeTensorsFile::kMaxHeaderBytes + 1),
                      {"100000001", "limit of 100000000"}));
}

TEST(SafeTensorsFormat, RefusesHeaderPaddingOtherThanWhitespace) {
  EXPECT_TRUE(refused(raw_file("nul_pad", "{" + f32("a", 1, 0, 4) + "}" + std::string(3, '\0'), std::string(4, '\0')),
                      {"padded at the end only with whitespace"}));
  EXPECT_TRUE(refused(raw_file("lead_space", " {}", ""), {"JSON object starting with '{'"}));
  EXPECT_TRUE(refused(raw_file("array", "[]", ""), {"JSON object"}));
  EXPECT_TRUE(refused(raw_file("garbage", "{}x", ""), {"padded at the end only with whitespace"}));
}

// The cases of the reference's own test suite (huggingface/safetensors, safetensors/src/tensor.rs:
// test_deserialization, test_empty_shapes_allowed, test_zero_sized_tensor, test_whitespace_padded_header,
// test_header_too_small, test_invalid_header_length, test_invalid_header_non_utf8,
// test_invalid_header_not_json, test_invalid_info, test_validation_overflow, test_json_attack,
// test_metadata_incomplete_buffer), each with the verdict the reference gives it.
TEST(SafeTensorsFormat, TheReferenceSuitesCasesGetTheReferencesVerdicts) {
  const std::string i32_2x2 = "\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}";
  // Accepted: a 2x2 I32; a scalar (shape [] holds one element); a [2, 0] tensor with no data at all;
  // a header padded with CR, space, tab and LF.
  {
    SafeTensorsFile f(raw_file("ref_2x2", "{" + i32_2x2 + "}", std::string(16, '\0')));
    EXPECT_EQ(f.read_i32("test", {2, 2}), std::vector<int32_t>(4, 0));
  }
  {
    SafeTensorsFile f(raw_file("ref_scalar", "{\"test\":{\"dtype\":\"I32\",\"shape\":[],\"data_offsets\":[0,4]}}",
                               std::string("\x07\0\0\0", 4)));
    EXPECT_TRUE(f.get("test").shape.empty());
    EXPECT_EQ(f.read_i32("test"), std::vector<int32_t>{7});
  }
  {
    SafeTensorsFile f(raw_file("ref_zero", "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,0],\"data_offsets\":[0,0]}}", ""));
    EXPECT_EQ(f.get("test").shape, (std::vector<int64_t>{2, 0}));
    EXPECT_TRUE(f.read_i32("test").empty());
  }
  EXPECT_TRUE(SafeTensorsFile(raw_file("ref_ws_pad", "{}\r \t\n", "")).tensors().empty());
  // Refused: a file shorter than the 8 length bytes (here empty), a header length past the end of
  // the file, a header that is not UTF-8, one that is not JSON, a shape whose size differs from
  // its span, shapes whose size overflows 64 bits, ten tensors sharing one span, and data bytes
  // after or missing from the last tensor.
  const std::string empty_path = test::tmp_path("stf_ref_empty.safetensors");
  std::ofstream(empty_path, std::ios::binary).flush();
  EXPECT_TRUE(refused(empty_path, {"truncated", "at least 8"}));
  EXPECT_TRUE(refused(raw_file("ref_len_past_end", "", "", 60), {"header length 60 exceeds file size 8"}));
  EXPECT_TRUE(refused(raw_file("ref_non_utf8", "\xff", ""), {"JSON object"}));
  EXPECT_TRUE(refused(raw_file("ref_non_utf8_key", "{\"\xff\":1}", ""), {"not valid JSON"}));
  EXPECT_TRUE(refused(raw_file("ref_not_json", "{", ""), {"JSON object"}));
  EXPECT_TRUE(refused(raw_file("ref_not_json_inside", "{\"a\":}", ""), {"not valid JSON"}));
  EXPECT_TRUE(refused(raw_file("ref_invalid_info", "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,4]}}",
                               std::string(4, '\0')),
                      {"'test'", "needs 16 bytes but data_offsets give 4"}));
  EXPECT_TRUE(refused(raw_file("ref_overflow_dim",
                               "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,18446744073709551614],\"data_offsets\":[0,16]}}",
                               std::string(16, '\0')),
                      {"'test'", "non-negative integers"}));
  EXPECT_TRUE(refused(raw_file("ref_overflow_bytes",
                               "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,9223372036854775807],\"data_offsets\":[0,16]}}",
                               std::string(16, '\0')),
                      {"'test'", "overflows"}));
  std::string attack = "{";
  for (int i = 0; i < 10; ++i)
    attack += (i ? "," : "") + std::string("\"weight_") + std::to_string(i) +
              "\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}";
  EXPECT_TRUE(refused(raw_file("ref_json_attack", attack + "}", std::string(16, '\0')), {"overlap"}));
  EXPECT_TRUE(refused(raw_file("ref_extra_bytes", "{" + i32_2x2 + "}", std::string(16, '\0') + "extra_bogus_data_for_polyglot_file"),
                      {"34 bytes after the last tensor"}));
  EXPECT_TRUE(refused(raw_file("ref_missing_bytes", "{" + i32_2x2 + "}", std::string(14, '\0')), {"'test'", "outside the 14 data bytes"}));
}

TEST(SafeTensorsFormat, RefusesUnknownDtypes) {
  EXPECT_TRUE(refused(raw_file("dtype", "{\"a\":{\"dtype\":\"F7\",\"shape\":[1],\"data_offsets\":[0,4]}}", std::string(4, '\0')),
                      {"'a'", "unsupported dtype \"F7\""}));
}

TEST(SafeTensorsFormat, RefusesNegativeDims) {
  EXPECT_TRUE(refused(raw_file("neg_dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,0]}}", ""),
                      {"'a'", "non-negative", "-1"}));
}

TEST(SafeTensorsFormat, RefusesShapesWhoseByteSizeOverflows) {
  // [2^62] F32 needs 2^64 bytes: the product wraps to 0, which matched the 0-byte span before.
  EXPECT_TRUE(refused(raw_file("overflow_bytes", "{" + f32("a", int64_t(1) << 62, 0, 0) + "}", ""),
                      {"'a'", "overflows"}));
  // The element count itself overflows: 2^32 x 2^32.
  EXPECT_TRUE(refused(raw_file("overflow_numel",
                               "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", ""),
                      {"'a'", "overflows"}));
  // A dim above INT64_MAX.
  EXPECT_TRUE(refused(raw_file("overflow_dim",
                               "{\"a\":{\"dtype\":\"U8\",\"shape\":[18446744073709551615],\"data_offsets\":[0,0]}}", ""),
                      {"'a'", "non-negative integers"}));
}

TEST(SafeTensorsFormat, RefusesDuplicateNames) {
  EXPECT_TRUE(refused(raw_file("dup", "{" + f32("a", 1, 0, 4) + "," + f32("a", 1, 4, 8) + "}", std::string(8, '\0')),
                      {"'a' more than once"}));
}

TEST(SafeTensorsFormat, RefusesMetadataThatIsNotStringToString) {
  EXPECT_TRUE(refused(raw_file("meta_int", "{\"__metadata__\":{\"k\":1}}", ""), {"__metadata__.k", "string"}));
  EXPECT_TRUE(refused(raw_file("meta_str", "{\"__metadata__\":\"k\"}", ""), {"__metadata__", "object"}));
  EXPECT_TRUE(refused(raw_file("meta_nested", "{\"__metadata__\":{\"k\":{\"x\":\"y\"}}}", ""), {"__metadata__.k"}));
}

TEST(SafeTensorsFormat, RefusesMalformedOffsets) {
  EXPECT_TRUE(refused(raw_file("neg_off", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", std::string(4, '\0')),
                      {"'a'", "data_offsets"}));
  EXPECT_TRUE(refused(raw_file("past_end", "{" + f32("a", 1, 0, 4) + "}", std::string(2, '\0')), {"'a'", "outside"}));
  EXPECT_TRUE(refused(raw_file("reversed", "{" + f32("a", 0, 4, 0) + "}", std::string(4, '\0')), {"'a'", "[4, 0]"}));
  EXPECT_TRUE(refused(raw_file("size_mismatch", "{" + f32("a", 2, 0, 4) + "}", std::string(4, '\0')),
                      {"'a'", "needs 8 bytes but data_offsets give 4 ([0, 4])"}));
}

TEST(SafeTensorsFormat, RefusesNonFiniteValuesUnlessAllowed) {
  const std::string path = test::tmp_path("stf_nan.safetensors");
  const float v[3] = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
  SafeTensorsWriter w;
  w.add_f32("w", {3}, v);
  w.write(path);
  SafeTensorsFile f(path);
  EXPECT_TRUE(test::error_mentions([&] { f.read_f32("w"); }, {path, "'w'", "non-finite", "element 1"}));
  EXPECT_EQ(f.read_f32("w", {}, /*allow_nonfinite=*/true).size(), 3u);
}

// ---------------------------------------------------------------- checksums (dsmoe's metadata)

TEST(SafeTensorsChecksums, WriterStoresOneChecksumPerTensor) {
  const std::string path = test::tmp_path("stc_written.safetensors");
  const float a[2] = {1.5f, -2.0f};
  const int32_t b[1] = {7};
  SafeTensorsWriter w;
  w.add_f32("a", {2}, a);
  w.add("b", DType::I32, {1}, b);
  w.set_metadata(kChecksumKey, "{}");  // e.g. copied from another file: replaced by the writer's own
  w.write(path);
  SafeTensorsFile f(path);
  const auto sums = nlohmann::json::parse(f.metadata().at(kChecksumKey));
  ASSERT_EQ(sums.size(), 2u) << sums.dump();
  EXPECT_EQ(sums["a"], fmt::format("{:016x}", XXH3_64bits(a, sizeof a))) << sums.dump();
  EXPECT_EQ(sums["b"], fmt::format("{:016x}", XXH3_64bits(b, sizeof b))) << sums.dump();
}

TEST(SafeTensorsChecksums, AChangedByteIsRefusedNamingTheTensor) {
  const std::string path = test::tmp_path("stc_flipped.safetensors");
  const float a[4] = {1, 2, 3, 4};
  const int32_t b[2] = {5, 6};
  const uint8_t c[3] = {7, 8, 9};
  SafeTensorsWriter w;
  w.add_f32("a", {4}, a);
  w.add("b", DType::I32, {2}, b);
  w.add("c", DType::U8, {3}, c);
  w.write(path);
  test::flip_tensor_byte(path, "b");
  test::flip_tensor_byte(path, "a");
  SafeTensorsFile f(path);  // opening checks no data: only the tensors read are hashed
  EXPECT_TRUE(test::error_mentions([&] { f.read_i32("b"); }, {path, "tensor 'b' fails its checksum"}));
  EXPECT_TRUE(test::error_mentions([&] { f.read_f32("a"); }, {path, "tensor 'a' fails its checksum"}));
  EXPECT_EQ(f.read_bytes("c", DType::U8), std::vector<uint8_t>(c, c + 3));
}

TEST(SafeTensorsChecksums, MalformedOrIncompleteChecksumsAreRefused) {
  const std::string data(4, '\x01');
  const std::string good = fmt::format("{:016x}", XXH3_64bits(data.data(), 4));
  const auto file = [&](const std::string& name, const std::string& sums) {
    const nlohmann::json meta = {{kChecksumKey, sums}};
    return raw_file(name, "{\"__metadata__\":" + meta.dump() + "," + f32("a", 1, 0, 4) + "}", data);
  };
  EXPECT_TRUE(refused(file("sum_bad_hex", "{\"a\":\"zz\"}"), {kChecksumKey, "'a'", "16 lowercase hex digits"}));
  EXPECT_TRUE(refused(file("sum_number", "{\"a\":5}"), {"'a'", "16 lowercase hex digits"}));
  EXPECT_TRUE(refused(file("sum_not_object", "[1]"), {kChecksumKey, "JSON object"}));
  EXPECT_TRUE(refused(file("sum_missing", "{\"x\":\"" + good + "\"}"), {"tensor 'a' has no checksum"}));
  // A checksum for a tensor that is not there is left to the loaders (they name the missing tensor).
  SafeTensorsFile ok(file("sum_extra", "{\"a\":\"" + good + "\",\"gone\":\"" + good + "\"}"));
  EXPECT_EQ(ok.read_f32("a").size(), 1u);
}
