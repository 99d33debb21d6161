// training.precision's values (ops/matmul.h says what each computes). A header of its own so that
// the config (model/config.h) needs nothing else from the ops.
#pragma once
#include <cstdint>
#include <string>

namespace dsmoe::ops {

enum class Precision : uint8_t { F32, BF16 };
const char* precision_name(Precision p);  // "f32", "bf16"
// "f32" | "bf16"; otherwise throws dsmoe::Error "<what> must be "f32" or "bf16", got "<s>"".
Precision parse_precision(const std::string& s, const std::string& what);

}  // namespace dsmoe::ops
