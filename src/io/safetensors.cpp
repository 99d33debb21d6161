#include "io/safetensors.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>
#include <xxhash.h>

#include "core/checked.h"
#include "core/error.h"

namespace dsmoe {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F64: return "F64";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
    case DType::I8: return "I8";
  }
  return "?";
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: return 2;
    case DType::F64: case DType::I64: return 8;
    case DType::U8: case DType::I8: return 1;
  }
  return 0;
}

static bool parse_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16}, {"F64", DType::F64},
      {"I32", DType::I32}, {"I64", DType::I64}, {"U8", DType::U8}, {"I8", DType::I8}};
  for (auto& [n, d] : table)
    if (s == n) { *out = d; return true; }
  return false;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

static std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

SafeTensorsFile::SafeTensorsFile(const std::string& path, Checksums checksums) : path_(path), checksums_(checksums) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("{}: cannot open safetensors file: {}", path, std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0) { ::close(fd); fail("{}: cannot stat: {}", path, std::strerror(errno)); }
  map_size_ = (size_t)st.st_size;
  if (map_size_ < 8) { ::close(fd); fail("{}: truncated safetensors file ({} bytes, need at least 8 for the header length)", path, map_size_); }
  map_ = mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) { map_ = nullptr; fail("{}: mmap failed: {}", path, std::strerror(errno)); }
  try {
    parse_header();
  } catch (...) {
    munmap(map_, map_size_);  // the destructor does not run for a throwing constructor
    map_ = nullptr;
    throw;
  }
}

// The rules of the reference implementation (huggingface/safetensors, read_metadata + validate),
// so that dsmoe accepts the files the Python library accepts: a header of at most kMaxHeaderBytes
// holding one JSON object, padded at the end with JSON whitespace only (the writers pad with
// spaces; serde_json, and the reference's test_whitespace_padded_header, also take tab, CR and LF;
// a NUL is refused), known dtypes,
// non-negative dims whose product times the dtype size does not overflow and equals the tensor's
// byte span, spans that tile the data section from 0 to its end in order (no gap, no overlap, no
// trailing bytes), unique names, and __metadata__ a string -> string map. One rule is stricter than
// the library: the header must start with '{', as the format's specification says (the library
// still takes leading whitespace; its own check is commented out "for 0.4.0"). No writer puts
// whitespace there.
void SafeTensorsFile::parse_header() {
  const std::string& path = path_;
  const uint8_t* base = (const uint8_t*)map_;
  uint64_t hlen = 0;
  std::memcpy(&hlen, base, 8);
  if (hlen > kMaxHeaderBytes)
    fail("{}: safetensors header length {} exceeds the limit of {} bytes (corrupted or not a safetensors file)", path,
         hlen, kMaxHeaderBytes);
  if (hlen > map_size_ - 8)
    fail("{}: truncated or not a safetensors file: header length {} exceeds file size {}", path, hlen, map_size_);
  std::string text((const char*)base + 8, hlen);
  const size_t last = text.find_last_not_of(" \t\r\n");
  if (text.empty() || text[0] != '{' || last == std::string::npos || text[last] != '}')
    fail("{}: safetensors header must be a JSON object starting with '{{', padded at the end only with whitespace "
         "(starts with {:?}, ends with {:?})",
         path, text.substr(0, 1), last == std::string::npos ? std::string() : text.substr(last, 1));
  text.resize(last + 1);
  // nlohmann keeps the last of repeated keys; the reference refuses them, and so do we (a repeated
  // tensor name would leave the bytes of the other copy unaccounted for).
  std::string duplicate;
  std::set<std::string> keys;
  auto on_event = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    if (ev == nlohmann::json::parse_event_t::key && depth == 1 && duplicate.empty() &&
        !keys.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, on_event);
  } catch (const std::exception& e) {
    fail("{}: safetensors header is not valid JSON: {}", path, e.what());
  }
  if (!duplicate.empty()) fail("{}: safetensors header names '{}' more than once", path, duplicate);
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", path);
  const uint8_t* data = base + 8 + hlen;
  const size_t data_size = map_size_ - 8 - hlen;
  struct Span {
    uint64_t begin, end;
    const std::string* name;
  };
  std::vector<Span> spans;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_null()) continue;  // Option<HashMap> in the reference: null = none
      if (!it->is_object()) fail("{}: __metadata__ must be an object of strings, got {}", path, it->type_name());
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) fail("{}: __metadata__.{} must be a string, got {}", path, m.key(), m->dump());
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    const auto& e = *it;
    TensorInfo ti;
    ti.name = it.key();
    if (!e.is_object() || !e.contains("dtype") || !e.contains("shape") || !e.contains("data_offsets"))
      fail("{}: tensor '{}': header entry needs dtype, shape and data_offsets", path, ti.name);
    if (!e["dtype"].is_string() || !parse_dtype(e["dtype"].get<std::string>(), &ti.dtype))
      fail("{}: tensor '{}': unsupported dtype {} (expected one of F32, F16, BF16, F64, I32, I64, U8, I8)", path,
           ti.name, e["dtype"].dump());
    if (!e["shape"].is_array()) fail("{}: tensor '{}': shape must be an array", path, ti.name);
    for (auto& s : e["shape"]) {
      if (!s.is_number_unsigned() || s.get<uint64_t>() > (uint64_t)INT64_MAX)
        fail("{}: tensor '{}': shape entries must be non-negative integers, got {}", path, ti.name, s.dump());
      ti.shape.push_back(s.get<int64_t>());
    }
    const auto& off = e["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail("{}: tensor '{}': data_offsets must be [begin, end] (non-negative integers), got {}", path, ti.name,
           off.dump());
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    if (b > en || en > data_size)
      fail("{}: tensor '{}': data_offsets [{}, {}] outside the {} data bytes (file truncated?)", path, ti.name, b,
           en, data_size);
    ti.nbytes = en - b;
    const std::string what = fmt::format("{}: tensor '{}': shape {} of {}: byte size", path, ti.name,
                                         shape_str(ti.shape), dtype_name(ti.dtype));
    const int64_t need = checked_mul<int64_t>(checked_numel(ti.shape, what), (int64_t)dtype_size(ti.dtype), what);
    if ((uint64_t)need != ti.nbytes)
      fail("{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets give {} ([{}, {}])", path, ti.name,
           shape_str(ti.shape), dtype_name(ti.dtype), need, ti.nbytes, b, en);
    ti.data = data + b;
    auto [pos, fresh] = tensors_.emplace(ti.name, std::move(ti));
    spans.push_back({b, en, &pos->first});
  }
  // In offset order, each tensor starts where the previous one ended, from 0 to the end of the data.
  std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) {
    return std::tie(x.begin, x.end) < std::tie(y.begin, y.end);
  });
  uint64_t at = 0;
  for (const Span& sp : spans) {
    if (sp.begin < at)
      fail("{}: tensor '{}': data_offsets [{}, {}] overlap the previous tensor's bytes (which end at {})", path,
           *sp.name, sp.begin, sp.end, at);
    if (sp.begin > at)
      fail("{}: tensor '{}': data_offsets [{}, {}] leave a gap of {} unused bytes after offset {}", path, *sp.name,
           sp.begin, sp.end, sp.begin - at, at);
    at = sp.end;
  }
  if (at != data_size)
    fail("{}: the tensors cover {} of the {} data bytes: {} bytes after the last tensor (trailing data)", path, at,
         data_size, data_size - at);
  // Skip ignores the checksum metadata altogether: a file edited on purpose may have stale or
  // missing entries, which is what --no-verify is for.
  if (checksums_ == Checksums::Verify) read_checksums();
}

static std::string hex64(uint64_t h) { return fmt::format("{:016x}", h); }

static uint64_t tensor_hash(const void* data, size_t n) { return XXH3_64bits(n ? data : "", n); }

// The checksums of kChecksumKey. An entry for a name that is not in the file is ignored (whether
// the right tensors are present is the loaders' check, which names what is missing); a tensor
// without an entry is refused, since a writer that stores checksums stores one for every tensor.
void SafeTensorsFile::read_checksums() {
  auto it = metadata_.find(kChecksumKey);
  if (it == metadata_.end()) return;
  const nlohmann::json c = nlohmann::json::parse(it->second, nullptr, false);
  if (c.is_discarded() || !c.is_object())
    fail("{}: metadata '{}' must be a JSON object of tensor name -> 16 hex digits", path_, kChecksumKey);
  for (auto e = c.begin(); e != c.end(); ++e) {
    auto t = tensors_.find(e.key());
    if (t == tensors_.end()) continue;
    const std::string v = e->is_string() ? e->get<std::string>() : e->dump();
    if (v.size() != 16 || v.find_first_not_of("0123456789abcdef") != std::string::npos)
      fail("{}: metadata '{}': the checksum of tensor '{}' must be 16 lowercase hex digits, got {}", path_,
           kChecksumKey, e.key(), v);
    t->second.checksum = std::stoull(v, nullptr, 16);
    t->second.has_checksum = true;
  }
  for (const auto& [name, t] : tensors_)
    if (!t.has_checksum)
      fail("{}: tensor '{}' has no checksum in metadata '{}' although the file's other tensors have (edited file?)",
           path_, name, kChecksumKey);
}

void SafeTensorsFile::verify(const TensorInfo& t) const {
  if (!t.has_checksum) return;
  const uint64_t h = tensor_hash(t.data, t.nbytes);
  if (h != t.checksum)
    fail("{}: tensor '{}' fails its checksum (XXH3-64 {} stored, {} computed over its {} bytes): the file was "
         "modified or corrupted after it was written",
         path_, t.name, hex64(t.checksum), hex64(h), t.nbytes);
}

SafeTensorsFile::~SafeTensorsFile() {
  if (map_) munmap(map_, map_size_);
}

const TensorInfo& SafeTensorsFile::get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail("{}: missing tensor '{}'", path_, name);
  return it->second;
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) u = sign;
    else {  // subnormal: renormalise
      exp = 127 - 15 + 1;
      while (!(man & 0x400)) { man <<= 1; --exp; }
      man &= 0x3ff;
      u = sign | (exp << 23) | (man << 13);
    }
  } else if (exp == 31) u = sign | 0x7f800000 | (man << 13);
  else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void SafeTensorsFile::read_f32_into(const std::string& name, float* dst, const std::vector<int64_t>& expect,
                                    bool allow_nonfinite) const {
  const auto& t = get(name);
  if (!expect.empty() && t.shape != expect)
    fail("{}: tensor '{}' has shape {}, expected {}", path_, name, shape_str(t.shape), shape_str(expect));
  const int64_t n = t.numel();
  if (n == 0) return;  // dst may be the null data() of an empty vector: no memcpy from/to null
  verify(t);
  switch (t.dtype) {
    case DType::F32: std::memcpy(dst, t.data, n * 4); break;
    case DType::F64: for (int64_t i = 0; i < n; ++i) { double v; std::memcpy(&v, t.data + 8 * i, 8); dst[i] = (float)v; } break;
    case DType::BF16: for (int64_t i = 0; i < n; ++i) { uint16_t v; std::memcpy(&v, t.data + 2 * i, 2); dst[i] = bf16_to_f32(v); } break;
    case DType::F16: for (int64_t i = 0; i < n; ++i) { uint16_t v; std::memcpy(&v, t.data + 2 * i, 2); dst[i] = f16_to_f32(v); } break;
    default: fail("{}: tensor '{}' has dtype {}, expected a floating type (F32, BF16, F16, F64)", path_, name, dtype_name(t.dtype));
  }
  if (!allow_nonfinite)
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(dst[i]))
        fail("{}: tensor '{}' holds a non-finite value ({}) at element {}: corrupted or diverged weights", path_, name,
             dst[i], i);
}

std::vector<float> SafeTensorsFile::read_f32(const std::string& name, const std::vector<int64_t>& expect,
                                             bool allow_nonfinite) const {
  std::vector<float> out(get(name).numel());
  read_f32_into(name, out.data(), expect, allow_nonfinite);
  return out;
}

std::vector<int32_t> SafeTensorsFile::read_i32(const std::string& name, const std::vector<int64_t>& expect) const {
  const auto& t = get(name);
  if (!expect.empty() && t.shape != expect)
    fail("{}: tensor '{}' has shape {}, expected {}", path_, name, shape_str(t.shape), shape_str(expect));
  verify(t);
  std::vector<int32_t> out(t.numel());
  if (t.dtype == DType::I32) {
    if (t.nbytes) std::memcpy(out.data(), t.data, t.nbytes);  // out.data() is null when empty
  } else if (t.dtype == DType::I64) {
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t v;
      std::memcpy(&v, t.data + 8 * i, 8);
      if (v < INT32_MIN || v > INT32_MAX)
        fail("{}: tensor '{}' element {} = {} does not fit a 32-bit integer", path_, name, i, v);
      out[i] = (int32_t)v;
    }
  } else fail("{}: tensor '{}' has dtype {}, expected I32 or I64", path_, name, dtype_name(t.dtype));
  return out;
}

std::vector<uint8_t> SafeTensorsFile::read_bytes(const std::string& name, DType dtype) const {
  const auto& t = get(name);
  if (t.dtype != dtype) fail("{}: tensor '{}' has dtype {}, expected {}", path_, name, dtype_name(t.dtype), dtype_name(dtype));
  verify(t);
  return std::vector<uint8_t>(t.data, t.data + t.nbytes);
}

void SafeTensorsWriter::add(const std::string& name, DType dtype, std::vector<int64_t> shape, const void* data) {
  Entry e{name, dtype, std::move(shape), {}};
  const std::string what = "safetensors tensor '" + name + "' byte size";
  e.bytes.resize((size_t)checked_mul<int64_t>(checked_numel(e.shape, what), (int64_t)dtype_size(dtype), what));
  if (!e.bytes.empty()) std::memcpy(e.bytes.data(), data, e.bytes.size());  // data may be null when empty
  entries_.push_back(std::move(e));
}

void SafeTensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::map<std::string, std::string> meta = metadata_;
  nlohmann::ordered_json sums = nlohmann::ordered_json::object();
  for (const auto& e : entries_) sums[e.name] = hex64(tensor_hash(e.bytes.data(), e.bytes.size()));
  meta[kChecksumKey] = sums.dump();  // replaces one copied from another file's metadata
  header["__metadata__"] = meta;
  size_t off = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {off, off + e.bytes.size()}}};
    off += e.bytes.size();
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8) h += ' ';  // align the data section to 8 bytes
  std::string out;
  out.reserve(8 + h.size() + off);
  uint64_t hl = h.size();
  out.append((const char*)&hl, 8);
  out += h;
  for (const auto& e : entries_)
    if (!e.bytes.empty()) out.append((const char*)e.bytes.data(), e.bytes.size());
  write_file_atomic(path, out);
}

// A writer killed between creating NAME.tmp.PID and renaming it leaves the temporary file behind
// (a whole checkpoint's size): remove the siblings of `p` whose writer process no longer exists.
// A PID of a live process (the writer itself, or an unrelated process that reused the PID) keeps its
// file: the cost of a wrong guess there is a leftover file, not a torn write.
static void remove_stale_tmp_files(const std::filesystem::path& dir, const std::string& name) {
  namespace fs = std::filesystem;
  const std::string prefix = name + ".tmp.";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string f = it->path().filename().string();
    if (f.size() <= prefix.size() || f.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string digits = f.substr(prefix.size());
    if (digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const pid_t pid = (pid_t)std::stol(digits);
    if (pid <= 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) != 0 && errno == ESRCH) fs::remove(it->path(), ec);  // best effort
  }
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  namespace fs = std::filesystem;
  fs::path p(path);
  fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  remove_stale_tmp_files(dir, p.filename().string());
  std::string tmp = (dir / (p.filename().string() + ".tmp." + std::to_string(::getpid()))).string();
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) fail("{}: cannot create temporary file {}: {}", path, tmp, std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail("{}: write failed: {} (previous file left untouched)", path, std::strerror(err));
    }
    done += (size_t)w;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail("{}: fsync/close failed: {} (previous file left untouched)", path, std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    fail("{}: rename from {} failed: {}", path, tmp, std::strerror(err));
  }
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) { ::fsync(dfd); ::close(dfd); }
}

std::string read_text_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot open file: {}", path, std::strerror(errno));
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace dsmoe
