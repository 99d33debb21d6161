// The gradient all-reduce's buckets (train/gradient_sync.h) and the backward's "final from here"
// hook that starts them (Model::backward's grads_final_from), in one process, with a recording
// stand-in for the communicators of 2 x 2 ranks: every gradient float is in exactly one bucket, on
// the communicator of its kind (replicated: world; routed experts: the expert replicas), no bucket
// exceeds its size, and a bucket starts only once backward will not change its floats (their values
// when it starts are their final values, bit for bit). The multi-process sums themselves are
// checked by test_parallel_training (overlapped and not: the same bits). And the switch's config key.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "core/rng.h"
#include "dist/parallel_groups.h"
#include "model/model.h"
#include "test_util.h"
#include "train/gradient_sync.h"

namespace dsmoe {
namespace {

struct Started {
  Communicator* comm;
  const float* data;
  int64_t n;
  std::vector<float> values;  // the floats when the all-reduce started
};

// Size 2; records the started sums (and does nothing else: these tests never call the rest).
class RecordingCommunicator final : public Communicator {
 public:
  explicit RecordingCommunicator(std::vector<Started>& log) : log_(log) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  void all_reduce_sum(float*, int64_t) override { ADD_FAILURE() << "blocking all_reduce_sum"; }
  void all_reduce_sum(double*, int64_t) override { ADD_FAILURE() << "blocking all_reduce_sum"; }
  void all_reduce_sum(int64_t*, int64_t) override { ADD_FAILURE() << "blocking all_reduce_sum"; }
  void all_to_all(const int64_t*, int64_t*, int64_t) override { ADD_FAILURE() << "all_to_all"; }
  void all_to_allv(const float*, const int64_t*, float*, const int64_t*) override { ADD_FAILURE() << "all_to_allv"; }
  void broadcast(void*, int64_t, int) override { ADD_FAILURE() << "broadcast"; }
  void all_gather(const int64_t*, int64_t*, int64_t) override { ADD_FAILURE() << "all_gather"; }
  void barrier() override { ++barriers; }
  void start_all_reduce_sum(float* data, int64_t n) override {
    EXPECT_FALSE(waited) << "a sum started after wait_started";
    log_.push_back({this, data, n, std::vector<float>(data, data + n)});
  }
  void progress() override {}
  void wait_started() override { waited = true; }
  std::unique_ptr<Communicator> split(int, int) override { return nullptr; }
  int barriers = 0;
  bool waited = false;

 private:
  std::vector<Started>& log_;
};

struct FakeGroups {
  std::vector<Started> log;
  RecordingCommunicator world{log};
  ParallelGroups groups;
  FakeGroups() {
    groups.world = &world;
    groups.expert_parallel = 2;
    groups.experts = std::make_unique<RecordingCommunicator>(log);
    groups.expert_replicas = std::make_unique<RecordingCommunicator>(log);
  }
};

// A model with every kind of tensor: dense and MoE layers, shared and routed experts, a router.
Config sync_config() {
  Config c = test::tiny_byte_model_config(32, 8);
  c.model.num_hidden_layers = 3;
  validate(c, "sync_config");
  return c;
}

void expect_partition(const ParamLayout& layout, const FakeGroups& g, int64_t bucket_floats, const float* grads) {
  std::vector<int> covered((size_t)layout.total(), 0);
  int64_t max_offset = layout.total();
  for (const Started& s : g.log) {
    EXPECT_LE(s.n, bucket_floats);
    EXPECT_GT(s.n, 0);
    const int64_t off = (int64_t)(s.data - grads);
    ASSERT_TRUE(off >= 0 && off + s.n <= layout.total()) << "a bucket outside the buffer";
    EXPECT_LE(off + s.n, max_offset) << "buckets in backward order (descending offsets)";
    max_offset = off;
    for (int64_t i = off; i < off + s.n; ++i) covered[(size_t)i]++;
    for (const auto& t : layout.tensors())
      if (off < t.offset + t.numel && t.offset < off + s.n)
        EXPECT_EQ(s.comm, t.routed_experts ? (Communicator*)g.groups.expert_replicas.get() : g.groups.world)
            << t.name << " in a bucket of the wrong kind";
  }
  for (int64_t i = 0; i < layout.total(); ++i)
    ASSERT_EQ(covered[(size_t)i], 1) << "float " << i << " is in " << covered[(size_t)i] << " buckets";
}

TEST(GradientSync, BucketsCoverEveryFloatOnceOnItsCommunicator) {
  const Config c = sync_config();
  const ParamLayout layout(c.model);
  for (int64_t bucket : {int64_t(1000), int64_t(1) << 14, kGradientBucketFloats}) {
    FakeGroups g;
    std::vector<float> grads((size_t)layout.total(), 1.0f);
    GradientSync sync(layout, g.groups, bucket);
    sync.finish(grads.data());
    EXPECT_EQ(g.world.barriers, 1) << "the waiting for the slowest rank";
    EXPECT_TRUE(g.world.waited && static_cast<RecordingCommunicator*>(g.groups.expert_replicas.get())->waited);
    EXPECT_EQ((int64_t)g.log.size(), sync.buckets());
    expect_partition(layout, g, bucket, grads.data());
  }
}

// Buckets started from inside backward hold their final values when they start.
TEST(GradientSync, BucketsStartOnlyWhenBackwardHasFinishedThem) {
  const Config c = sync_config();
  Model model(c.model);
  Rng rng(test::test_seed());
  model.init_weights(rng, 0.2);
  const int64_t B = 2, T = 8;
  const std::vector<int32_t> x = test::random_tokens(rng, B * T, 256), y = test::random_tokens(rng, B * T, 256);
  FakeGroups g;
  GradientSync sync(model.layout(), g.groups, 1000);
  model.zero_grads();
  model.forward(x.data(), y.data(), B, T, true);
  std::vector<int64_t> froms;
  size_t started_in_backward = 0;
  model.backward(1.0f / (B * T), true, [&](int64_t from) {
    froms.push_back(from);
    sync.ready_from(model.grads().data(), from);
    started_in_backward = g.log.size();
  });
  // lm_head + final norm, each layer, the embedding: strictly descending, the last 0.
  ASSERT_EQ(froms.size(), (size_t)c.model.num_hidden_layers + 2);
  for (size_t i = 1; i < froms.size(); ++i) EXPECT_LT(froms[i], froms[i - 1]);
  EXPECT_EQ(froms.back(), 0);
  EXPECT_EQ(froms.front(), model.layout().find("final_norm")->offset);
  EXPECT_EQ(started_in_backward, (size_t)sync.buckets()) << "every bucket starts during backward";
  sync.finish(model.grads().data());
  ASSERT_EQ((int64_t)g.log.size(), sync.buckets());
  expect_partition(model.layout(), g, 1000, model.grads().data());
  for (const Started& s : g.log) {
    const int64_t off = (int64_t)(s.data - model.grads().data());
    EXPECT_EQ(std::memcmp(s.values.data(), s.data, sizeof(float) * (size_t)s.n), 0)
        << "the bucket at offset " << off << " (" << s.n << " floats) changed after its all-reduce started";
  }
  // The comparison can fail: the first bucket to start lies in lm_head, which is non-zero by then.
  double sum = 0;
  for (float v : g.log.front().values) sum += std::fabs(v);
  EXPECT_GT(sum, 0);
}

// The switch is a config key: a boolean, read, and named when it is anything else.
TEST(GradientSyncConfig, OverlapIsABooleanKeyOfParallel) {
  nlohmann::json j = to_json(sync_config());
  EXPECT_TRUE(parse_config(j, "c.json").parallel.overlap_grad_sync);  // on unless switched off
  j["parallel"] = {{"overlap_grad_sync", false}};
  EXPECT_FALSE(parse_config(j, "c.json").parallel.overlap_grad_sync);
  j["parallel"] = {{"overlap_grad_sync", true}};
  EXPECT_TRUE(parse_config(j, "c.json").parallel.overlap_grad_sync);
  j["parallel"] = {{"overlap_grad_sync", 1}};
  EXPECT_TRUE(test::error_mentions([&] { parse_config(j, "c.json"); },
                                   {"c.json", "parallel.overlap_grad_sync", "must be true or false", "1"}));
}

}  // namespace
}  // namespace dsmoe
