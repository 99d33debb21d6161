// Training checkpoints: DIR/config.json (the model and training config) and
// DIR/checkpoint.safetensors holding the weights under their Hugging Face names, the AdamW moments
// ("optimizer.m.<name>", "optimizer.v.<name>"), and the training state (step, data-sampler RNG,
// tokens seen) — everything needed to continue bit-exactly. Both files are written atomically.
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "model/config.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "train/optimizer.h"

namespace dsmoe {

struct TrainState {
  int64_t step = 0;
  int64_t tokens_seen = 0;
  std::array<uint64_t, 4> data_rng{};
};

void save_checkpoint(const std::string& dir, const Config& cfg, const Model& model, AdamW* opt,
                     const TrainState& st);
bool checkpoint_exists(const std::string& dir);
// DIR/config.json, validated.
Config load_checkpoint_config(const std::string& dir);
// Weights into `model` (whose config must match the checkpoint's); optimizer and state if given.
// Errors name the file and the tensor that is missing, mis-shaped or holds NaN / Inf (weights and
// optimizer moments; allow_nonfinite loads them anyway, for forensics on a diverged run), and the
// state that no run can have: a step outside [0, training.steps], an all-zero data-sampler RNG.
// Every tensor's checksum is verified first (a changed byte names the tensor) unless
// checksums = Skip (--no-verify).
void load_checkpoint(const std::string& dir, Model& model, AdamW* opt, TrainState* st, bool allow_nonfinite = false,
                     Checksums checksums = Checksums::Verify);

}  // namespace dsmoe
