// Surface: a model/training config JSON (config.json of a run, configs/*.json) through
// parse_config. A config it accepts must survive to_json -> parse_config unchanged in meaning: a
// run folder's config.json is written by to_json and read back on resume.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "fuzz_support.h"
#include "model/config.h"
#include "model/params.h"

using namespace dsmoe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Invalid JSON is the JSON library's concern, not parse_config's (load_config reports it).
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  fuzz::refuse_ok([&] {
    const Config c = parse_config(j, "fuzz.json");
    const nlohmann::json again = to_json(c);
    Config back;
    try {
      back = parse_config(again, "to_json");
    } catch (const Error&) {
      std::abort();  // a valid config whose own JSON is refused: resuming its run would fail
    }
    if (to_json(back) != again) std::abort();
    // The counts `dsmoe info` prints: validate()'s bounds promise they cannot overflow.
    (void)model_stats(c.model, c.train.seq_len);
  });
  return 0;
}
