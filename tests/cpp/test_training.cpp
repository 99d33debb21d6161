// Training-level integration tests, in-process: resume after --stop-after equals the uninterrupted
// run bit for bit (weights, optimizer moments, per-step losses), with and without gradient
// accumulation; two runs of the same config are bit-identical; NaN/Inf detection names the step
// and the loss or tensor, and the last good checkpoint survives a divergence (including an update
// that overflows while the loss and gradient are still finite).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/rng.h"
#include "io/safetensors.h"
#include "model/config.h"
#include "model/model.h"
#include "model/params.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/optimizer.h"
#include "train/trainer.h"

using namespace dsmoe;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// 3 layers (layer 0 dense, 1-2 MoE with 1 shared + 8 routed experts, top-2, 2 device groups so
// the device-level loss is live), byte vocabulary, batch 2 x 32 tokens.
json tiny_config_json() {
  return json{{"model_type", "deepseek"},
              {"vocab_size", 256},
              {"hidden_size", 32},
              {"intermediate_size", 64},
              {"moe_intermediate_size", 16},
              {"num_hidden_layers", 3},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"n_shared_experts", 1},
              {"n_routed_experts", 8},
              {"num_experts_per_tok", 2},
              {"first_k_dense_replace", 1},
              {"moe_layer_freq", 1},
              {"aux_loss_alpha", 0.01},
              {"n_device_groups", 2},
              {"device_aux_alpha", 0.01},
              {"max_position_embeddings", 64},
              {"bos_token_id", 1},
              {"eos_token_id", 2},
              {"training",
               {{"lr", 3e-3},
                {"warmup_steps", 2},
                {"steps", 8},
                {"schedule", "step"},  // LR drops at steps 7 and 8: after the resume point
                {"grad_clip", 1.0},
                {"batch_size", 2},
                {"seq_len", 32},
                {"grad_accum", 1},
                {"seed", 11},
                {"init_std", 0.02},
                {"log_interval", 1},
                {"eval_interval", 0},
                {"eval_batches", 2},
                {"checkpoint_interval", 0}}}};
}

Config tiny_config(const json& patch = json::object()) {
  json j = tiny_config_json();
  j.merge_patch(patch);
  return parse_config(j, "<test config>");
}

// A fresh word dataset (test_util) under the test folder.
std::string make_dataset(const std::string& name) {
  const std::string dir = dsmoe::test::tmp_path(name);
  fs::remove_all(dir);
  return dsmoe::test::make_word_dataset(dir, 20000, 3000);
}

struct MetricRow {
  int64_t step;
  json rec;
};

std::vector<MetricRow> read_metrics(const std::string& out_dir) {
  std::ifstream f(fs::path(out_dir) / "metrics.jsonl");
  std::vector<MetricRow> rows;
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    json j = json::parse(line);
    rows.push_back({j.at("step").get<int64_t>(), j});
  }
  return rows;
}

std::string hexbits(double d) {
  uint64_t u;
  std::memcpy(&u, &d, 8);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g (0x%016llx)", d, (unsigned long long)u);
  return buf;
}

// Every logged step 1..n exactly once, in order; the given fields bit-identical between the runs.
void expect_same_metrics(const std::string& a_dir, const std::string& b_dir, int64_t n,
                         const std::vector<std::string>& fields) {
  auto a = read_metrics(a_dir), b = read_metrics(b_dir);
  ASSERT_EQ((int64_t)a.size(), n) << a_dir << "/metrics.jsonl: expected one row per step 1.." << n;
  ASSERT_EQ((int64_t)b.size(), n) << b_dir << "/metrics.jsonl: expected one row per step 1.." << n
                                  << " (a resumed run must append steps K+1..N, not restart or repeat)";
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(a[i].step, i + 1) << a_dir << " row " << i;
    ASSERT_EQ(b[i].step, i + 1) << b_dir << " row " << i;
    for (const auto& f : fields) {
      const double x = a[i].rec.at(f).get<double>(), y = b[i].rec.at(f).get<double>();
      EXPECT_EQ(std::memcmp(&x, &y, 8), 0) << "step " << i + 1 << " field '" << f << "': " << hexbits(x) << " in "
                                           << a_dir << " vs " << hexbits(y) << " in " << b_dir;
    }
  }
}

// Bit-identical checkpoints: the same tensors (weights, AdamW moments, data RNG) with the same bytes,
// and the same training-state metadata.
void expect_same_checkpoint(const std::string& a_dir, const std::string& b_dir) {
  SafeTensorsFile a((fs::path(a_dir) / "checkpoint.safetensors").string());
  SafeTensorsFile b((fs::path(b_dir) / "checkpoint.safetensors").string());
  ASSERT_EQ(a.tensors().size(), b.tensors().size()) << "different tensor sets";
  int differing = 0;
  for (const auto& [name, ta] : a.tensors()) {
    ASSERT_TRUE(b.has(name)) << b.path() << " lacks tensor " << name;
    const auto& tb = b.get(name);
    ASSERT_EQ(ta.shape, tb.shape) << name;
    ASSERT_EQ(ta.nbytes, tb.nbytes) << name;
    if (std::memcmp(ta.data, tb.data, ta.nbytes) != 0) {
      std::string detail;
      if (ta.dtype == DType::F32) {
        const float* fa = (const float*)ta.data;
        const float* fb = (const float*)tb.data;
        int64_t first = -1, count = 0;
        double maxd = 0;
        for (int64_t i = 0; i < ta.numel(); ++i)
          if (std::memcmp(fa + i, fb + i, 4) != 0) {
            if (first < 0) first = i;
            ++count;
            maxd = std::max(maxd, (double)std::fabs(fa[i] - fb[i]));
          }
        std::ostringstream os;
        os.precision(9);
        os << ": " << count << " of " << ta.numel() << " elements differ, first at " << first << " (" << fa[first]
           << " vs " << fb[first] << "), max abs diff " << maxd;
        detail = os.str();
      }
      if (++differing <= 10) ADD_FAILURE() << "tensor '" << name << "' differs between " << a_dir << " and " << b_dir << detail;
    }
  }
  EXPECT_EQ(differing, 0) << "tensors differing in total";
  for (const char* key : {"step", "tokens_seen", "format"})
    EXPECT_EQ(a.metadata().at(key), b.metadata().at(key)) << "checkpoint metadata '" << key << "'";
}

TrainOptions opts(const std::string& data, const std::string& out) {
  TrainOptions o;
  o.data_dir = data;
  o.out_dir = out;
  o.progress = false;
  return o;
}

std::string fresh_dir(const std::string& name) {
  std::string d = dsmoe::test::tmp_path(name);
  fs::remove_all(d);
  return d;
}

void check_resume(const std::string& tag, const Config& cfg, int64_t stop_after) {
  const std::string data = make_dataset("train_data_" + tag);
  const std::string full = fresh_dir("resume_full_" + tag), split = fresh_dir("resume_split_" + tag);
  TrainSummary s_full = train(cfg, opts(data, full));
  ASSERT_EQ(s_full.steps_done, cfg.train.steps);

  TrainOptions first = opts(data, split);
  first.stop_after = stop_after;
  TrainSummary s1 = train(cfg, first);
  ASSERT_EQ(s1.steps_done, stop_after);
  {
    // The interrupted run's checkpoint is at step K.
    SafeTensorsFile f((fs::path(split) / "checkpoint.safetensors").string());
    ASSERT_EQ(f.metadata().at("step"), std::to_string(stop_after));
  }
  TrainOptions second = opts(data, split);
  second.resume = true;
  TrainSummary s2 = train(cfg, second);
  ASSERT_EQ(s2.steps_done, cfg.train.steps);

  expect_same_metrics(full, split, cfg.train.steps, {"lm_loss", "expert_aux", "device_aux", "grad_norm", "lr", "max_load"});
  expect_same_checkpoint(full, split);
  EXPECT_EQ(std::memcmp(&s_full.val_loss, &s2.val_loss, 8), 0)
      << "final val loss " << hexbits(s_full.val_loss) << " vs " << hexbits(s2.val_loss);
  // Sanity: the run did learn something (so a no-op trainer could not pass the comparison).
  auto rows = read_metrics(full);
  EXPECT_LT(rows.back().rec.at("lm_loss").get<double>(), rows.front().rec.at("lm_loss").get<double>())
      << "loss did not decrease over " << cfg.train.steps << " steps";
  EXPECT_GT(rows.front().rec.at("device_aux").get<double>(), 0.0) << "device-level aux loss should be live";
}

}  // namespace

TEST(TrainingTest, ResumeEqualsUninterrupted) {
  check_resume("accum1", tiny_config(), 3);
}

TEST(TrainingTest, ResumeEqualsUninterruptedGradAccum2) {
  check_resume("accum2", tiny_config({{"training", {{"grad_accum", 2}, {"steps", 6}}}}), 4);
}

TEST(TrainingTest, SameConfigSeedAndThreadsGiveBitIdenticalRuns) {
  const std::string data = make_dataset("train_data_det");
  const Config cfg = tiny_config({{"training", {{"steps", 5}}}});
  const std::string a = fresh_dir("det_a"), b = fresh_dir("det_b");
  train(cfg, opts(data, a));
  train(cfg, opts(data, b));
  expect_same_metrics(a, b, 5, {"lm_loss", "expert_aux", "device_aux", "grad_norm"});
  expect_same_checkpoint(a, b);
  // And the seed matters: a different seed must give a different trajectory.
  const std::string c = fresh_dir("det_c");
  train(tiny_config({{"training", {{"steps", 5}, {"seed", 12}}}}), opts(data, c));
  const double la = read_metrics(a)[0].rec.at("lm_loss").get<double>();
  const double lc = read_metrics(c)[0].rec.at("lm_loss").get<double>();
  EXPECT_NE(la, lc) << "seed 11 and seed 12 gave the same step-1 loss";
}

TEST(TrainingTest, FirstNonfiniteNamesTheTensor) {
  const Config cfg = tiny_config();
  ParamLayout layout(cfg.model);
  std::vector<float> buf(layout.total(), 0.5f);
  EXPECT_EQ(first_nonfinite(layout, buf), "");
  const ParamTensor* down = layout.find("layers.2.experts.down");
  ASSERT_NE(down, nullptr);
  buf[down->offset + down->numel - 1] = NAN;  // last element of the tensor
  EXPECT_EQ(first_nonfinite(layout, buf), "layers.2.experts.down");
  const ParamTensor* q = layout.find("layers.1.q");
  ASSERT_NE(q, nullptr);
  buf[q->offset] = -INFINITY;  // first element of an earlier tensor: the first in layout order wins
  EXPECT_EQ(first_nonfinite(layout, buf), "layers.1.q");
  buf[q->offset] = 0;
  buf[down->offset + down->numel - 1] = 0;
  const ParamTensor* head = layout.find("lm_head");
  buf[head->offset + head->numel / 2] = INFINITY;
  EXPECT_EQ(first_nonfinite(layout, buf), "lm_head");
}

TEST(TrainingTest, TrainStepNamesStepOnNonFiniteLoss) {
  const Config cfg = tiny_config();
  Model model(cfg.model);
  Rng rng(3);
  model.init_weights(rng, 0.02);
  AdamW opt(model.layout(), cfg.train);
  const std::vector<float> before = model.params();
  // A NaN in the embedding row of token 7 poisons every forward that reads token 7.
  const ParamTensor* emb = model.layout().find("embed");
  model.params()[emb->offset + 7 * cfg.model.hidden_size + 3] = NAN;
  auto batch = [&](int64_t, std::vector<int32_t>& x, std::vector<int32_t>& y) {
    x.assign(cfg.train.batch_size * cfg.train.seq_len, 7);
    y.assign(cfg.train.batch_size * cfg.train.seq_len, 8);
  };
  try {
    train_step(model, opt, cfg.train, 42, batch);
    FAIL() << "train_step accepted a NaN loss";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("step 42"), std::string::npos) << msg;
    EXPECT_NE(msg.find("non-finite loss"), std::string::npos) << msg;
  }
  // No update was applied to the other weights.
  std::vector<float> after = model.params();
  after[emb->offset + 7 * cfg.model.hidden_size + 3] = before[emb->offset + 7 * cfg.model.hidden_size + 3];
  EXPECT_EQ(std::memcmp(after.data(), before.data(), before.size() * 4), 0) << "weights changed by a failed step";
}

// Three good steps with a checkpoint, then the run continues with a learning rate of 1e30: the
// update after step 4 blows the weights up and a later step's loss (or gradient) is non-finite.
// The trainer must stop naming that step, and the step-3 checkpoint must be untouched and loadable.
TEST(TrainingTest, DivergenceStopsAndKeepsLastGoodCheckpoint) {
  const std::string data = make_dataset("train_data_nan");
  const std::string out = fresh_dir("nan_run");
  const Config good = tiny_config({{"training", {{"steps", 12}, {"checkpoint_interval", 3}, {"warmup_steps", 0}}}});
  TrainOptions o = opts(data, out);
  o.stop_after = 3;
  train(good, o);
  const std::string ckpt = (fs::path(out) / "checkpoint.safetensors").string();
  const std::string saved = read_text_file(ckpt);

  const Config bad = tiny_config({{"training", {{"steps", 12}, {"checkpoint_interval", 3}, {"warmup_steps", 0},
                                                {"lr", 1e30}, {"grad_clip", 0.0}, {"schedule", "constant"}}}});
  TrainOptions r = opts(data, out);
  r.resume = true;
  std::string msg;
  try {
    train(bad, r);
  } catch (const Error& e) {
    msg = e.what();
  }
  ASSERT_FALSE(msg.empty()) << "a run with lr 1e30 finished without a NaN/Inf error";
  std::printf("[divergence] %s\n", msg.c_str());
  // The step that failed: 5 (first forward after the 1e30 update) or 6 at the latest.
  const bool names_step = msg.find("step 5:") != std::string::npos || msg.find("step 6:") != std::string::npos;
  EXPECT_TRUE(names_step) << "message should name step 5 or 6: " << msg;
  const bool names_what = msg.find("non-finite loss") != std::string::npos ||
                          msg.find("non-finite gradient in tensor '") != std::string::npos;
  EXPECT_TRUE(names_what) << "message should name the loss or the tensor: " << msg;
  // Step 6 would be a checkpoint step; the failing run must not have written a new checkpoint.
  EXPECT_TRUE(read_text_file(ckpt) == saved) << ckpt << " changed after the diverged run";
  Config back = load_checkpoint_config(out);
  Model m(back.model);
  TrainState st;
  AdamW adam(m.layout(), back.train);
  ASSERT_NO_THROW(load_checkpoint(out, m, &adam, &st));
  EXPECT_EQ(st.step, 3);
  EXPECT_EQ(first_nonfinite(m.layout(), m.params()), "") << "the kept checkpoint holds non-finite weights";
  const double val = evaluate(m, load_split(data, "val"), 2, 32, 2);
  EXPECT_TRUE(std::isfinite(val) && val < 6.0) << "val loss of the kept checkpoint: " << val;
}

// A learning rate beyond float range makes the AdamW update itself non-finite while the loss and the
// gradient of that step are finite. The trainer must stop at that step, naming the tensor, before
// the NaN weights are checkpointed over the last good checkpoint (checkpoint_interval 1).
TEST(TrainingTest, NonFiniteUpdateIsCaughtBeforeTheCheckpoint) {
  const std::string data = make_dataset("train_data_inf");
  const std::string out = fresh_dir("inf_run");
  const json t = {{"steps", 6}, {"checkpoint_interval", 1}, {"warmup_steps", 0}, {"schedule", "constant"}};
  TrainOptions o = opts(data, out);
  o.stop_after = 2;
  train(tiny_config({{"training", t}}), o);
  const std::string ckpt = (fs::path(out) / "checkpoint.safetensors").string();
  const std::string saved = read_text_file(ckpt);

  json bad = t;
  bad["lr"] = 1e39;  // (float)1e39 = inf
  TrainOptions r = opts(data, out);
  r.resume = true;
  std::string msg;
  try {
    train(tiny_config({{"training", bad}}), r);
  } catch (const Error& e) {
    msg = e.what();
  }
  ASSERT_FALSE(msg.empty()) << "a run with lr 1e39 finished without a NaN/Inf error";
  EXPECT_NE(msg.find("step 3: non-finite weight in tensor 'embed' after the AdamW update"), std::string::npos) << msg;
  EXPECT_TRUE(read_text_file(ckpt) == saved) << ckpt << " was overwritten by the diverged step";
  Config back = load_checkpoint_config(out);
  Model m(back.model);
  TrainState st;
  load_checkpoint(out, m, nullptr, &st);
  EXPECT_EQ(st.step, 2);
  EXPECT_EQ(first_nonfinite(m.layout(), m.params()), "");
  // The metrics log ends at the last completed step.
  EXPECT_EQ(read_metrics(out).back().step, 2);
}
