// GGUF (ggml's model file format, versions 2 and 3, little-endian), format only: the key/value
// metadata, the tensor directory and the tensor bytes. What the keys and tensors mean for a
// DeepSeekMoE model is infer/gguf_checkpoint.h's.
//
// Layout: "GGUF", u32 version, u64 tensor count, u64 key/value count, the key/values (key: string;
// u32 value type; value), the tensor infos (name: string; u32 n_dims; u64 ne[n_dims], fastest
// dimension first; u32 ggml type; u64 offset into the data section), padding to the alignment
// (general.alignment, default 32), the data section (each tensor at its offset, a multiple of the
// alignment). Strings are u64 length + bytes; arrays are u32 element type + u64 count + elements.
//
// Reading memory-maps the file and checks everything before use: magic, version, counts bounded by
// the bytes left (no allocation or loop larger than the file), string lengths, value types, nested
// arrays (refused), unique keys and names, dimensions (1..4, non-negative, product overflow-checked),
// the type known and the row a whole number of blocks, offsets aligned and inside the data section,
// tensors not overlapping. Every error names the file, the byte offset or tensor/key, and the problem.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace dsmoe {

// GGUF metadata value types (the numbering of the spec).
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12
};
const char* gguf_type_name(GgufType t);

// ggml tensor types this reader and writer handle (numbering of ggml.h); any other type in a file is
// refused by name (ggml_type_name knows them all).
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8, BF16 = 30 };
const char* ggml_type_name(uint32_t t);  // "Q4_K" for 12, "type 99" for an unknown number
inline constexpr int64_t kGgmlBlock = 32;  // Q4_0 / Q8_0: 32 values per block
inline constexpr int64_t kQ8_0Bytes = 34;  // f16 scale d + 32 int8: value = q * d
inline constexpr int64_t kQ4_0Bytes = 18;  // f16 scale d + 16 bytes: value j = ((byte j%16 >> 4*(j/16)) & 15) - 8) * d
// Bytes of one row of `ne0` values of type t (ne0 a multiple of the block for quantized types).
int64_t ggml_row_bytes(GgmlType t, int64_t ne0);

struct GgufValue {
  GgufType type = GgufType::U8;
  GgufType elem = GgufType::U8;  // arrays: element type
  // Scalars: integers in i (signed types, bool) or u (unsigned types), floats in f.
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  std::string s;
  // Arrays: strings, integers (as int64; u64 values above INT64_MAX are refused) or floats.
  std::vector<std::string> strs;
  std::vector<int64_t> ints;
  std::vector<double> floats;
  size_t count = 0;  // array length
};

struct GgufTensor {
  std::string name;
  GgmlType type = GgmlType::F32;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the fastest (contiguous) dimension
  uint64_t offset = 0;      // into the data section
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  int64_t numel = 0;
};

// A read-only, memory-mapped GGUF file, validated as above.
class GgufFile {
 public:
  static constexpr uint64_t kMaxTensors = 1 << 20;
  static constexpr uint64_t kMaxKeys = 1 << 20;
  static constexpr uint64_t kMaxKeyBytes = 65535;         // the spec's bound on a key
  static constexpr uint64_t kMaxStringBytes = 1ull << 30; // a value string (chat templates are KBs)
  static constexpr uint32_t kMaxDims = 4;                 // GGML_MAX_DIMS
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(const std::string& name) const;
  const GgufValue* find(const std::string& key) const;

  // Typed reads of a key; each throws naming the file and key when it is absent or of another type.
  // get_uint accepts any integer type holding a value in [0, max]; get_float any float or integer.
  uint64_t get_uint(const std::string& key, uint64_t max) const;
  double get_float(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;
  const GgufValue& get_array(const std::string& key, GgufType elem) const;  // elem: STRING / an integer / a float type

 private:
  void parse();
  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> index_;
};

// Builds a GGUF v3 file: key/values in insertion order, then tensors in insertion order, each at the
// next multiple of the alignment. write() is atomic (temporary file, fsync, rename).
class GgufWriter {
 public:
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_u64(const std::string& key, uint64_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_string(const std::string& key, const std::string& v);
  void add_strings(const std::string& key, const std::vector<std::string>& v);
  void add_i32s(const std::string& key, const std::vector<int32_t>& v);
  // ne in ggml order. `bytes` fills its argument with the tensor's ggml_row_bytes(type, ne[0]) *
  // (rows) bytes when write() reaches it, so one tensor at a time is held in memory.
  using Bytes = std::function<void(std::vector<uint8_t>&)>;
  void add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& ne, Bytes bytes);
  // Called after each tensor written: (tensors done, tensors in all).
  void write(const std::string& path, const std::function<void(int64_t, int64_t)>& progress = {}) const;

 private:
  void key(const std::string& k, GgufType t);
  std::string kv_;  // encoded key/values
  uint64_t n_kv_ = 0;
  struct Tensor {
    std::string name;
    GgmlType type;
    std::vector<int64_t> ne;
    uint64_t nbytes;
    Bytes bytes;
  };
  std::vector<Tensor> tensors_;
};

// ggml's block quantization of one row of n values (n a multiple of 32) into `out`
// (ggml_row_bytes bytes): Q8_0 d = amax/127, q = round(x/d); Q4_0 d = (the value of largest
// magnitude)/-8, q = min(15, trunc(x/d + 8.5)) stored as a nibble. Scales are f16.
void quantize_row_q8_0(const float* x, int64_t n, uint8_t* out);
void quantize_row_q4_0(const float* x, int64_t n, uint8_t* out);
// A row of n values of type t (F32, F16, BF16, Q8_0, Q4_0) into fp32.
void dequantize_row(GgmlType t, const uint8_t* src, int64_t n, float* dst);

}  // namespace dsmoe
