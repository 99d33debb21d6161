#include "io/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "core/bf16.h"
#include "core/checked.h"
#include "core/error.h"
#include "io/safetensors.h"  // f16_to_f32

namespace dsmoe {

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "UINT8";
    case GgufType::I8: return "INT8";
    case GgufType::U16: return "UINT16";
    case GgufType::I16: return "INT16";
    case GgufType::U32: return "UINT32";
    case GgufType::I32: return "INT32";
    case GgufType::F32: return "FLOAT32";
    case GgufType::BOOL: return "BOOL";
    case GgufType::STRING: return "STRING";
    case GgufType::ARRAY: return "ARRAY";
    case GgufType::U64: return "UINT64";
    case GgufType::I64: return "INT64";
    case GgufType::F64: return "FLOAT64";
  }
  return "?";
}

const char* ggml_type_name(uint32_t t) {
  // ggml.h's numbering; 4, 5 (Q4_2, Q4_3) and 31-33 were removed from ggml.
  static const char* names[] = {"F32",  "F16",     "Q4_0",    "Q4_1",   nullptr, nullptr, "Q5_0", "Q5_1",
                                "Q8_0", "Q8_1",    "Q2_K",    "Q3_K",   "Q4_K",  "Q5_K",  "Q6_K", "Q8_K",
                                "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS",
                                "I8",   "I16",     "I32",     "I64",    "F64",   "IQ1_M", "BF16", nullptr,
                                nullptr, nullptr,  "TQ1_0",   "TQ2_0",  nullptr, nullptr, nullptr, "MXFP4"};
  thread_local std::string other;
  if (t < sizeof(names) / sizeof(names[0]) && names[t]) return names[t];
  other = "type " + std::to_string(t);
  return other.c_str();
}

static bool supported_ggml_type(uint32_t t) {
  return t == (uint32_t)GgmlType::F32 || t == (uint32_t)GgmlType::F16 || t == (uint32_t)GgmlType::Q4_0 ||
         t == (uint32_t)GgmlType::Q8_0 || t == (uint32_t)GgmlType::BF16;
}

int64_t ggml_row_bytes(GgmlType t, int64_t ne0) {
  switch (t) {
    case GgmlType::F32: return checked_mul<int64_t>(ne0, 4, "GGUF row bytes");
    case GgmlType::F16:
    case GgmlType::BF16: return checked_mul<int64_t>(ne0, 2, "GGUF row bytes");
    case GgmlType::Q8_0: return ne0 / kGgmlBlock * kQ8_0Bytes;
    case GgmlType::Q4_0: return ne0 / kGgmlBlock * kQ4_0Bytes;
  }
  return 0;
}

// ---------------------------------------------------------------- reading

namespace {

// Reads little-endian values from [p, end), every read bounds-checked; errors name the offset.
struct Cursor {
  const std::string& path;
  const uint8_t* base;
  size_t size;
  size_t at = 0;

  size_t left() const { return size - at; }
  void need(size_t n, const char* what) const {
    if (n > left())
      fail("{}: truncated GGUF file: {} needs {} bytes at offset {} but only {} remain", path, what, n, at, left());
  }
  template <typename T>
  T read(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base + at, sizeof(T));
    at += sizeof(T);
    return v;
  }
  std::string str(uint64_t max, const char* what) {
    const size_t start = at;
    const uint64_t n = read<uint64_t>(what);
    if (n > max) fail("{}: {} at offset {} has length {}, above the limit of {} bytes (corrupted file?)", path, what, start, n, max);
    need((size_t)n, what);
    std::string s((const char*)base + at, (size_t)n);
    at += (size_t)n;
    return s;
  }
};

size_t scalar_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: return 8;
    default: return 0;  // STRING, ARRAY
  }
}

bool is_integer(GgufType t) {
  return t == GgufType::U8 || t == GgufType::I8 || t == GgufType::U16 || t == GgufType::I16 || t == GgufType::U32 ||
         t == GgufType::I32 || t == GgufType::U64 || t == GgufType::I64;
}
bool is_unsigned(GgufType t) {
  return t == GgufType::U8 || t == GgufType::U16 || t == GgufType::U32 || t == GgufType::U64;
}
bool is_float(GgufType t) { return t == GgufType::F32 || t == GgufType::F64; }

GgufType value_type(Cursor& c, const std::string& key, const char* what) {
  const size_t at = c.at;
  const uint32_t t = c.read<uint32_t>(what);
  if (t > (uint32_t)GgufType::F64)
    fail("{}: key '{}': unknown GGUF value type {} at offset {} (known: 0..12)", c.path, key, t, at);
  return (GgufType)t;
}

// One scalar of type t into v (integers in i / u, floats in f).
void read_scalar(Cursor& c, GgufType t, GgufValue& v, const std::string& key) {
  switch (t) {
    case GgufType::U8: v.u = c.read<uint8_t>("a UINT8 value"); break;
    case GgufType::I8: v.i = c.read<int8_t>("an INT8 value"); break;
    case GgufType::U16: v.u = c.read<uint16_t>("a UINT16 value"); break;
    case GgufType::I16: v.i = c.read<int16_t>("an INT16 value"); break;
    case GgufType::U32: v.u = c.read<uint32_t>("a UINT32 value"); break;
    case GgufType::I32: v.i = c.read<int32_t>("an INT32 value"); break;
    case GgufType::U64: v.u = c.read<uint64_t>("a UINT64 value"); break;
    case GgufType::I64: v.i = c.read<int64_t>("an INT64 value"); break;
    case GgufType::F32: v.f = c.read<float>("a FLOAT32 value"); break;
    case GgufType::F64: v.f = c.read<double>("a FLOAT64 value"); break;
    case GgufType::BOOL: {
      const size_t at = c.at;
      const uint8_t b = c.read<uint8_t>("a BOOL value");
      if (b > 1) fail("{}: key '{}': BOOL value {} at offset {} (expected 0 or 1)", c.path, key, b, at);
      v.i = b;
      break;
    }
    default: break;
  }
  if (is_unsigned(t)) v.i = v.u <= (uint64_t)INT64_MAX ? (int64_t)v.u : -1;
  else if (is_integer(t)) v.u = v.i >= 0 ? (uint64_t)v.i : 0;
}

GgufValue read_value(Cursor& c, GgufType t, const std::string& key) {
  GgufValue v;
  v.type = t;
  if (t == GgufType::STRING) {
    v.s = c.str(GgufFile::kMaxStringBytes, "a string value");
    return v;
  }
  if (t != GgufType::ARRAY) {
    read_scalar(c, t, v, key);
    return v;
  }
  v.elem = value_type(c, key, "an array's element type");
  if (v.elem == GgufType::ARRAY) fail("{}: key '{}': arrays of arrays are not supported", c.path, key);
  const size_t at = c.at;
  const uint64_t n = c.read<uint64_t>("an array's length");
  // Each element takes at least 1 byte (a string at least 8): a longer count than the bytes left is
  // corruption, and bounding it so keeps the allocation and the loop below the file's size.
  const size_t min_bytes = v.elem == GgufType::STRING ? 8 : scalar_size(v.elem);
  if (n > c.left() / min_bytes)
    fail("{}: key '{}': array of {} {} elements at offset {} cannot fit in the {} bytes left (corrupted file?)", c.path,
         key, n, gguf_type_name(v.elem), at, c.left());
  v.count = (size_t)n;
  if (v.elem == GgufType::STRING) {
    v.strs.reserve(v.count);
    for (size_t k = 0; k < v.count; ++k) v.strs.push_back(c.str(GgufFile::kMaxStringBytes, "an array string"));
  } else if (is_float(v.elem)) {
    v.floats.resize(v.count);
    GgufValue e;
    for (size_t k = 0; k < v.count; ++k) {
      read_scalar(c, v.elem, e, key);
      v.floats[k] = e.f;
    }
  } else {
    v.ints.resize(v.count);
    GgufValue e;
    for (size_t k = 0; k < v.count; ++k) {
      read_scalar(c, v.elem, e, key);
      if (v.elem == GgufType::U64 && e.u > (uint64_t)INT64_MAX)
        fail("{}: key '{}': element {} = {} is out of range", c.path, key, k, e.u);
      v.ints[k] = e.i;
    }
  }
  return v;
}

}  // namespace

GgufFile::GgufFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("{}: cannot open GGUF file: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    fail("{}: cannot stat: {}", path, std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file (expected a .gguf file)", path);
  }
  map_size_ = (size_t)st.st_size;
  if (map_size_ < 24) {
    ::close(fd);
    fail("{}: truncated GGUF file ({} bytes; the header alone takes 24)", path, map_size_);
  }
  map_ = mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    fail("{}: mmap failed: {}", path, std::strerror(errno));
  }
  try {
    parse();
  } catch (...) {
    munmap(map_, map_size_);
    map_ = nullptr;
    throw;
  }
}

GgufFile::~GgufFile() {
  if (map_) munmap(map_, map_size_);
}

void GgufFile::parse() {
  Cursor c{path_, (const uint8_t*)map_, map_size_};
  if (std::memcmp(c.base, "GGUF", 4) != 0)
    fail("{}: not a GGUF file: bad magic {:02x} {:02x} {:02x} {:02x} (expected \"GGUF\")", path_, c.base[0], c.base[1],
         c.base[2], c.base[3]);
  c.at = 4;
  version_ = c.read<uint32_t>("the version");
  if (version_ == 1)
    fail("{}: GGUF version 1 is not supported (32-bit counts; convert it with a current llama.cpp): expected 2 or 3", path_);
  if (version_ != 2 && version_ != 3)
    fail("{}: unsupported GGUF version {} (expected 2 or 3{})", path_, version_,
         (version_ & 0xffff) == 0 ? "; a big-endian file?" : "");
  const uint64_t n_tensors = c.read<uint64_t>("the tensor count");
  const uint64_t n_kv = c.read<uint64_t>("the key/value count");
  if (n_tensors > kMaxTensors)
    fail("{}: tensor count {} exceeds the limit of {} (corrupted file?)", path_, n_tensors, kMaxTensors);
  if (n_kv > kMaxKeys) fail("{}: key/value count {} exceeds the limit of {} (corrupted file?)", path_, n_kv, kMaxKeys);
  for (uint64_t k = 0; k < n_kv; ++k) {
    const size_t at = c.at;
    std::string key = c.str(kMaxKeyBytes, "a metadata key");
    if (key.empty()) fail("{}: metadata key {} at offset {} is empty", path_, k, at);
    const GgufType t = value_type(c, key, "a value type");
    GgufValue v = read_value(c, t, key);
    if (kv_.count(key)) fail("{}: metadata key '{}' appears more than once (offset {})", path_, key, at);
    kv_.emplace(std::move(key), std::move(v));
  }
  if (auto it = kv_.find("general.alignment"); it != kv_.end()) {
    const GgufValue& a = it->second;
    if (a.type != GgufType::U32)
      fail("{}: general.alignment has type {}, expected UINT32", path_, gguf_type_name(a.type));
    if (a.u == 0 || (a.u & (a.u - 1)) != 0)
      fail("{}: general.alignment {} is not a power of two", path_, a.u);
    alignment_ = a.u;
  }
  tensors_.reserve((size_t)std::min<uint64_t>(n_tensors, c.left() / 24));
  for (uint64_t k = 0; k < n_tensors; ++k) {
    const size_t at = c.at;
    GgufTensor t;
    t.name = c.str(kMaxKeyBytes, "a tensor name");
    if (t.name.empty()) fail("{}: tensor {} at offset {} has an empty name", path_, k, at);
    const uint32_t nd = c.read<uint32_t>("a tensor's dimension count");
    if (nd == 0 || nd > kMaxDims)
      fail("{}: tensor '{}' has {} dimensions (expected 1 to {})", path_, t.name, nd, kMaxDims);
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t ne = c.read<uint64_t>("a tensor dimension");
      if (ne > (uint64_t)INT64_MAX) fail("{}: tensor '{}': dimension {} = {} is out of range", path_, t.name, d, ne);
      t.ne.push_back((int64_t)ne);
    }
    const uint32_t type = c.read<uint32_t>("a tensor type");
    if (!supported_ggml_type(type))
      fail("{}: tensor '{}' has ggml type {} ({}), which dsmoe does not read (supported: F32, F16, BF16, Q8_0, Q4_0)",
           path_, t.name, ggml_type_name(type), type);
    t.type = (GgmlType)type;
    t.offset = c.read<uint64_t>("a tensor offset");
    const std::string what = fmt::format("{}: tensor '{}' size", path_, t.name);
    t.numel = checked_numel(t.ne, what);
    if ((t.type == GgmlType::Q8_0 || t.type == GgmlType::Q4_0) && t.ne[0] % kGgmlBlock != 0)
      fail("{}: tensor '{}' of type {} has rows of {} values, not a multiple of the block size {}", path_, t.name,
           ggml_type_name(type), t.ne[0], kGgmlBlock);
    const int64_t rows = t.ne[0] == 0 ? 0 : t.numel / t.ne[0];
    t.nbytes = (size_t)checked_mul<int64_t>(ggml_row_bytes(t.type, t.ne[0]), rows, what);
    if (t.offset % alignment_ != 0)
      fail("{}: tensor '{}' has offset {}, not a multiple of the alignment {}", path_, t.name, t.offset, alignment_);
    if (index_.count(t.name)) fail("{}: tensor '{}' appears more than once", path_, t.name);
    index_[t.name] = tensors_.size();
    tensors_.push_back(std::move(t));
  }
  // The data section starts at the next multiple of the alignment.
  const uint64_t data_start = (c.at + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > map_size_)
    fail("{}: truncated GGUF file: the data section would start at offset {} but the file has {} bytes", path_,
         data_start, map_size_);
  const uint64_t data_size = map_size_ - data_start;
  std::vector<size_t> order(tensors_.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  for (GgufTensor& t : tensors_) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset)
      fail("{}: tensor '{}' ({} bytes at data offset {}) lies past the end of the {}-byte data section (truncated file?)",
           path_, t.name, t.nbytes, t.offset, data_size);
    t.data = (const uint8_t*)map_ + data_start + t.offset;
  }
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
  for (size_t k = 1; k < order.size(); ++k) {
    const GgufTensor& p = tensors_[order[k - 1]];
    const GgufTensor& t = tensors_[order[k]];
    if (t.offset < p.offset + p.nbytes)
      fail("{}: tensor '{}' (data offset {}) overlaps tensor '{}' ({} bytes at data offset {})", path_, t.name,
           t.offset, p.name, p.nbytes, p.offset);
  }
}

const GgufTensor* GgufFile::find_tensor(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = kv_.find(key);
  return it == kv_.end() ? nullptr : &it->second;
}

static const GgufValue& need_key(const GgufFile& f, const std::string& key, const char* expected) {
  const GgufValue* v = f.find(key);
  if (!v) fail("{}: metadata key '{}' is missing (expected {})", f.path(), key, expected);
  return *v;
}

uint64_t GgufFile::get_uint(const std::string& key, uint64_t max) const {
  const GgufValue& v = need_key(*this, key, "an integer");
  if (!is_integer(v.type)) fail("{}: metadata key '{}' has type {}, expected an integer", path_, key, gguf_type_name(v.type));
  if (!is_unsigned(v.type) && v.i < 0) fail("{}: metadata key '{}' = {} is negative", path_, key, v.i);
  if (v.u > max) fail("{}: metadata key '{}' = {} is out of range [0, {}]", path_, key, v.u, max);
  return v.u;
}

double GgufFile::get_float(const std::string& key) const {
  const GgufValue& v = need_key(*this, key, "a number");
  double r;
  if (is_float(v.type)) r = v.f;
  else if (is_unsigned(v.type)) r = (double)v.u;
  else if (is_integer(v.type)) r = (double)v.i;
  else fail("{}: metadata key '{}' has type {}, expected a number", path_, key, gguf_type_name(v.type));
  if (!std::isfinite(r)) fail("{}: metadata key '{}' = {} is not finite", path_, key, r);
  return r;
}

bool GgufFile::get_bool(const std::string& key) const {
  const GgufValue& v = need_key(*this, key, "a BOOL");
  if (v.type != GgufType::BOOL) fail("{}: metadata key '{}' has type {}, expected BOOL", path_, key, gguf_type_name(v.type));
  return v.i != 0;
}

const std::string& GgufFile::get_string(const std::string& key) const {
  const GgufValue& v = need_key(*this, key, "a STRING");
  if (v.type != GgufType::STRING)
    fail("{}: metadata key '{}' has type {}, expected STRING", path_, key, gguf_type_name(v.type));
  return v.s;
}

const GgufValue& GgufFile::get_array(const std::string& key, GgufType elem) const {
  const GgufValue& v = need_key(*this, key, "an ARRAY");
  const bool ok = v.type == GgufType::ARRAY &&
                  (elem == GgufType::STRING ? v.elem == GgufType::STRING
                   : is_float(elem)        ? is_float(v.elem)
                                           : is_integer(v.elem));
  if (!ok)
    fail("{}: metadata key '{}' has type {}{}{}, expected an ARRAY of {}", path_, key, gguf_type_name(v.type),
         v.type == GgufType::ARRAY ? " of " : "", v.type == GgufType::ARRAY ? gguf_type_name(v.elem) : "",
         elem == GgufType::STRING ? "STRING" : is_float(elem) ? "floats" : "integers");
  return v;
}

// ---------------------------------------------------------------- writing

namespace {
template <typename T>
void put(std::string& o, T v) {
  o.append((const char*)&v, sizeof(T));
}
void put_str(std::string& o, const std::string& s) {
  put<uint64_t>(o, s.size());
  o += s;
}
}  // namespace

void GgufWriter::key(const std::string& k, GgufType t) {
  put_str(kv_, k);
  put<uint32_t>(kv_, (uint32_t)t);
  n_kv_++;
}
void GgufWriter::add_u32(const std::string& k, uint32_t v) { key(k, GgufType::U32); put(kv_, v); }
void GgufWriter::add_i32(const std::string& k, int32_t v) { key(k, GgufType::I32); put(kv_, v); }
void GgufWriter::add_u64(const std::string& k, uint64_t v) { key(k, GgufType::U64); put(kv_, v); }
void GgufWriter::add_f32(const std::string& k, float v) { key(k, GgufType::F32); put(kv_, v); }
void GgufWriter::add_bool(const std::string& k, bool v) { key(k, GgufType::BOOL); put<uint8_t>(kv_, v ? 1 : 0); }
void GgufWriter::add_string(const std::string& k, const std::string& v) { key(k, GgufType::STRING); put_str(kv_, v); }
void GgufWriter::add_strings(const std::string& k, const std::vector<std::string>& v) {
  key(k, GgufType::ARRAY);
  put<uint32_t>(kv_, (uint32_t)GgufType::STRING);
  put<uint64_t>(kv_, v.size());
  for (const auto& s : v) put_str(kv_, s);
}
void GgufWriter::add_i32s(const std::string& k, const std::vector<int32_t>& v) {
  key(k, GgufType::ARRAY);
  put<uint32_t>(kv_, (uint32_t)GgufType::I32);
  put<uint64_t>(kv_, v.size());
  for (int32_t x : v) put(kv_, x);
}

void GgufWriter::add_tensor(const std::string& name, GgmlType type, const std::vector<int64_t>& ne, Bytes bytes) {
  DSMOE_ASSERT(!ne.empty() && ne.size() <= GgufFile::kMaxDims, "GGUF tensor {}: {} dims", name, ne.size());
  if ((type == GgmlType::Q8_0 || type == GgmlType::Q4_0) && ne[0] % kGgmlBlock != 0)
    fail("GGUF: tensor '{}' has rows of {} values; {} needs a multiple of {} (use --type f32 or bf16)", name, ne[0],
         ggml_type_name((uint32_t)type), kGgmlBlock);
  const int64_t numel = checked_numel(ne, "GGUF tensor " + name);
  const int64_t nbytes = checked_mul<int64_t>(ggml_row_bytes(type, ne[0]), ne[0] ? numel / ne[0] : 0, name);
  tensors_.push_back({name, type, ne, (uint64_t)nbytes, std::move(bytes)});
}

void GgufWriter::write(const std::string& path, const std::function<void(int64_t, int64_t)>& progress) const {
  constexpr uint64_t align = 32;  // the default: no general.alignment key needed
  std::string head = "GGUF";
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, n_kv_);
  head += kv_;
  uint64_t off = 0;
  std::vector<uint64_t> offsets;
  for (const Tensor& t : tensors_) {
    put_str(head, t.name);
    put<uint32_t>(head, (uint32_t)t.ne.size());
    for (int64_t d : t.ne) put<uint64_t>(head, (uint64_t)d);
    put<uint32_t>(head, (uint32_t)t.type);
    put<uint64_t>(head, off);
    offsets.push_back(off);
    off = (off + t.nbytes + align - 1) / align * align;
  }
  head.resize((head.size() + align - 1) / align * align, '\0');

  namespace fs = std::filesystem;
  const fs::path p(path);
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("{}: cannot create temporary file {}: {}", path, tmp, std::strerror(errno));
  auto write_all = [&](const void* data, size_t n) {
    const char* b = (const char*)data;
    while (n > 0) {
      const ssize_t w = ::write(fd, b, n);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp.c_str());
        fail("{}: write failed: {} (no file written)", path, std::strerror(err));
      }
      b += w;
      n -= (size_t)w;
    }
  };
  try {
    write_all(head.data(), head.size());
    std::vector<uint8_t> buf;
    uint64_t at = 0;
    const std::vector<char> zeros(align, 0);
    for (size_t k = 0; k < tensors_.size(); ++k) {
      const Tensor& t = tensors_[k];
      write_all(zeros.data(), offsets[k] - at);
      buf.clear();
      t.bytes(buf);
      DSMOE_ASSERT(buf.size() == t.nbytes, "GGUF tensor {}: {} bytes, expected {}", t.name, buf.size(), t.nbytes);
      write_all(buf.data(), buf.size());
      at = offsets[k] + t.nbytes;
      if (progress) progress((int64_t)k + 1, (int64_t)tensors_.size());
    }
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("{}: cannot flush: {}", path, std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail("{}: cannot rename {} into place: {}", path, tmp, std::strerror(err));
  }
}

// ---------------------------------------------------------------- blocks

namespace {
// fp32 -> IEEE half, round to nearest even (overflow to infinity; the callers' scales are finite
// weights / 127 or / 8, far below 65504 for any trained model, and checked there).
uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  x &= 0x7fffffff;
  if (x >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (x > 0x7f800000 ? 0x200 : 0));
  if (x >= 0x477ff000) return (uint16_t)(sign | 0x7c00);  // rounds to >= 65520: infinity
  if (x < 0x38800000) {  // below the smallest normal half (2^-14): subnormal or zero
    if (x < 0x33000000) return (uint16_t)sign;  // below half the smallest subnormal (2^-25)
    const uint32_t e = x >> 23, m = (x & 0x7fffff) | 0x800000;
    const uint32_t shift = 126 - e;  // value = m * 2^(e-150); subnormal unit 2^-24 => m >> (126 - e)
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
  }
  uint32_t h = ((x >> 13) - ((127 - 15) << 10));
  const uint32_t rem = x & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
  return (uint16_t)(sign | h);
}
}  // namespace

void quantize_row_q8_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b, x += kGgmlBlock, out += kQ8_0Bytes) {
    float amax = 0;
    for (int j = 0; j < kGgmlBlock; ++j) amax = std::max(amax, std::fabs(x[j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    const uint16_t h = f32_to_f16(d);
    std::memcpy(out, &h, 2);
    for (int j = 0; j < kGgmlBlock; ++j) out[2 + j] = (uint8_t)(int8_t)std::round(x[j] * id);
  }
}

void quantize_row_q4_0(const float* x, int64_t n, uint8_t* out) {
  for (int64_t b = 0; b < n / kGgmlBlock; ++b, x += kGgmlBlock, out += kQ4_0Bytes) {
    float amax = 0, mx = 0;  // the value of largest magnitude, with its sign: it maps to -8 exactly
    for (int j = 0; j < kGgmlBlock; ++j)
      if (std::fabs(x[j]) > amax) {
        amax = std::fabs(x[j]);
        mx = x[j];
      }
    const float d = mx / -8.0f, id = d != 0 ? 1.0f / d : 0.0f;
    const uint16_t h = f32_to_f16(d);
    std::memcpy(out, &h, 2);
    auto q = [&](float v) { return (uint8_t)std::min(15, (int)(int8_t)(v * id + 8.5f)); };
    for (int j = 0; j < kGgmlBlock / 2; ++j) out[2 + j] = (uint8_t)(q(x[j]) | (q(x[j + kGgmlBlock / 2]) << 4));
  }
}

void dequantize_row(GgmlType t, const uint8_t* src, int64_t n, float* dst) {
  switch (t) {
    case GgmlType::F32: std::memcpy(dst, src, (size_t)n * 4); return;
    case GgmlType::F16:
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = t == GgmlType::F16 ? f16_to_f32(h) : bf16_to_f32(h);
      }
      return;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < n / kGgmlBlock; ++b, src += kQ8_0Bytes, dst += kGgmlBlock) {
        uint16_t h;
        std::memcpy(&h, src, 2);
        const float d = f16_to_f32(h);
        for (int j = 0; j < kGgmlBlock; ++j) dst[j] = (float)(int8_t)src[2 + j] * d;
      }
      return;
    case GgmlType::Q4_0:
      for (int64_t b = 0; b < n / kGgmlBlock; ++b, src += kQ4_0Bytes, dst += kGgmlBlock) {
        uint16_t h;
        std::memcpy(&h, src, 2);
        const float d = f16_to_f32(h);
        for (int j = 0; j < kGgmlBlock / 2; ++j) {
          dst[j] = (float)((src[2 + j] & 15) - 8) * d;
          dst[j + kGgmlBlock / 2] = (float)((src[2 + j] >> 4) - 8) * d;
        }
      }
      return;
  }
}

}  // namespace dsmoe
