// safetensors: the checkpoint format of dsmoe and of Hugging Face. Format: u64 little-endian header
// length N, N bytes of JSON {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {str: str}},
// then the raw tensor bytes. Reading memory-maps the file and validates every entry before use.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.h"  // bf16_to_f32, f32_to_bf16

namespace dsmoe {

enum class DType { F32, F16, BF16, F64, I32, I64, U8, I8 };
const char* dtype_name(DType d);
size_t dtype_size(DType d);

// Metadata key of the per-tensor checksums that SafeTensorsWriter stores: the text of a JSON object
// {tensor name: XXH3-64 of the tensor's bytes as 16 hex digits}. Readers verify a tensor's bytes
// before using them, so a changed byte is an error naming the tensor instead of a silently different
// model; files without the key (Hugging Face downloads, other writers) load as before.
inline constexpr const char* kChecksumKey = "dsmoe.xxh3_64";

// Whether a reader checks the stored checksums. Skip is `--no-verify` (reading a file whose
// checksums are known stale, e.g. one edited on purpose); the format, shapes, dtypes and finite
// values are checked either way.
enum class Checksums { Verify, Skip };

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping
  size_t nbytes = 0;
  bool has_checksum = false;      // the file's kChecksumKey metadata holds one for this tensor
  uint64_t checksum = 0;
  int64_t numel() const;
};

// A read-only, memory-mapped safetensors file. Throws dsmoe::Error naming the file and the problem
// for a missing file, a truncated file, a malformed header, overlapping or out-of-range offsets, or
// a shape whose size disagrees with its byte range: the rules of the reference implementation
// (see parse_header in safetensors.cpp).
class SafeTensorsFile {
 public:
  // The reference implementation's bound on the header (100 MB): a larger length is corruption.
  static constexpr uint64_t kMaxHeaderBytes = 100'000'000;
  explicit SafeTensorsFile(const std::string& path, Checksums checksums = Checksums::Verify);
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  // Throws if absent.
  const TensorInfo& get(const std::string& name) const;
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Copies a tensor into fp32, converting from F32/F16/BF16/F64; checks the shape when `expect`
  // is non-empty. The error names the file, the tensor and both shapes. A NaN or Inf is refused
  // (naming the tensor and the element) unless allow_nonfinite (forensics on a diverged run).
  std::vector<float> read_f32(const std::string& name, const std::vector<int64_t>& expect = {},
                              bool allow_nonfinite = false) const;
  void read_f32_into(const std::string& name, float* dst, const std::vector<int64_t>& expect,
                     bool allow_nonfinite = false) const;
  std::vector<int32_t> read_i32(const std::string& name, const std::vector<int64_t>& expect = {}) const;
  // Raw bytes of a tensor that must have exactly this dtype (used for optimizer/RNG state).
  std::vector<uint8_t> read_bytes(const std::string& name, DType dtype) const;
  // Checks a tensor's bytes against its stored checksum (nothing to check without one; with
  // Checksums::Skip no tensor has one); throws naming the file, the tensor and both hashes. The read_* functions call it; callers that use
  // TensorInfo::data directly must call it themselves.
  void verify(const TensorInfo& t) const;

 private:
  void parse_header();
  void read_checksums();
  std::string path_;
  Checksums checksums_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and writes them as one safetensors file, atomically: to `path.tmp.<pid>`, fsync,
// then rename over `path`, so a crash mid-write leaves any previous file intact. Every tensor's
// checksum goes into the metadata (kChecksumKey).
class SafeTensorsWriter {
 public:
  void add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data);
  void add_f32(const std::string& name, std::vector<int64_t> shape, const float* data) {
    add(name, DType::F32, std::move(shape), data);
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  void write(const std::string& path) const;

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
    std::vector<uint8_t> bytes;
  };
  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Write `bytes` to `path` atomically (tmp file in the same folder, fsync, rename, fsync folder).
void write_file_atomic(const std::string& path, const std::string& bytes);
std::string read_text_file(const std::string& path);

float f16_to_f32(uint16_t h);

}  // namespace dsmoe
