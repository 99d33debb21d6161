// The release of dsmoe, printed by `dsmoe --version` and recorded in the folders it writes.
#pragma once

namespace dsmoe {

inline constexpr const char* kVersion = "0.4.0";

}  // namespace dsmoe
