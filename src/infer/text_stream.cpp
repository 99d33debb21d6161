#include "infer/text_stream.h"

#include <algorithm>

namespace dsmoe {

bool TextStream::push(int32_t t, std::string& out) {
  ids_.push_back(t);
  const std::string text = codec_.decode(ids_);
  size_t stop_at = std::string::npos;
  for (const auto& s : stops_) {
    if (s.empty()) continue;
    size_t p = text.find(s);
    if (p != std::string::npos) stop_at = std::min(stop_at, p);
  }
  if (stop_at != std::string::npos) {
    out = stop_at > emitted_ ? text.substr(emitted_, stop_at - emitted_) : "";
    emitted_ = std::max(emitted_, stop_at);
    final_ = text.substr(0, stop_at);
    stopped_ = true;
    return false;
  }
  size_t safe = text.size();
  static const std::string kRepl = "\xEF\xBF\xBD";
  while (safe >= 3 && text.compare(safe - 3, 3, kRepl) == 0) safe -= 3;
  for (const auto& s : stops_) {
    if (s.empty()) continue;
    for (size_t k = std::min(s.size() - 1, safe); k > 0; --k)
      if (text.compare(safe - k, k, s, 0, k) == 0) {
        safe -= k;
        break;
      }
  }
  out = safe > emitted_ ? text.substr(emitted_, safe - emitted_) : "";
  emitted_ = std::max(emitted_, safe);
  final_ = text;
  return true;
}

std::string TextStream::flush() {
  std::string rest = final_.size() > emitted_ ? final_.substr(emitted_) : "";
  emitted_ = final_.size();
  return rest;
}

}  // namespace dsmoe
