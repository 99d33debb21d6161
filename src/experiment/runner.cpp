#include "experiment/runner.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include <omp.h>
#include <xxhash.h>

#include "core/error.h"
#include "core/progress.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "model/params.h"
#include "experiment/domain_eval.h"
#include "model/routing_stats.h"
#include "train/checkpoint.h"
#include "train/data.h"
#include "train/trainer.h"

namespace dsmoe::experiment {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// Parameters of all FFNs (dense FFNs, shared and routed experts): the "expert parameters" of the
// paper's comparisons (GShard x1.5 has 1.5 x GShard's).
int64_t ffn_params(const ModelConfig& m) {
  int64_t n = 0;
  for (int64_t l = 0; l < m.num_hidden_layers; ++l)
    n += m.is_moe_layer(l) ? 3 * m.hidden_size * m.moe_intermediate_size * (m.n_routed_experts + m.n_shared_experts)
                           : 3 * m.hidden_size * m.intermediate_size;
  return n;
}

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string fmt_secs(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = (int64_t)std::llround(s);
  return t >= 60 ? fmt::format("{}m{:02d}s", t / 60, t % 60) : fmt::format("{}s", t);
}

// The run's curves from its metrics.jsonl (written by the trainer).
// elapsed_s: the last record's training wall time; threads: its thread count (0 when the metrics predate
// the field, so a report does not guess it from the process that reads them).
json read_curve(const std::string& metrics_path, double* elapsed_s, int64_t* threads) {
  json c = {{"steps", json::array()}, {"tokens", json::array()}, {"train_loss", json::array()},
            {"val_steps", json::array()}, {"val_tokens", json::array()}, {"val_loss", json::array()},
            {"routing_entropy", json::array()}};
  std::ifstream in(metrics_path);
  if (!in) fail("{}: cannot read the run's metrics", metrics_path);
  std::string line;
  int64_t n = 0;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    json r = json::parse(line, nullptr, false);
    if (r.is_discarded() || !r.is_object() || !r.contains("step") || !r.contains("tokens"))
      fail("{}: line {} is not a metrics record", metrics_path, n);
    c["steps"].push_back(r["step"]);
    c["tokens"].push_back(r["tokens"]);
    c["train_loss"].push_back(r.value("lm_loss", NAN));
    // The mean over MoE layers of the normalised routing entropy (null: no learned router).
    double h = 0;
    int64_t layers = 0;
    if (r.contains("routing_entropy") && r["routing_entropy"].is_array())
      for (const auto& v : r["routing_entropy"])
        if (v.is_number()) h += v.get<double>(), ++layers;
    c["routing_entropy"].push_back(layers ? json(h / (double)layers) : json(nullptr));
    if (r.contains("val_loss")) {
      c["val_steps"].push_back(r["step"]);
      c["val_tokens"].push_back(r["tokens"]);
      c["val_loss"].push_back(r["val_loss"]);
    }
    if (elapsed_s && r.contains("elapsed_s")) *elapsed_s = r["elapsed_s"].get<double>();
    if (threads && r.contains("threads") && r["threads"].is_number_integer()) *threads = r["threads"].get<int64_t>();
  }
  return c;
}

// Finished, or resumable: a checkpoint of exactly this config (the seed included).
bool reusable(const std::string& dir, const Config& cfg) {
  if (!checkpoint_exists(dir)) return false;
  try {
    return to_json(load_checkpoint_config(dir)) == to_json(cfg);
  } catch (const Error&) {
    return false;  // an unreadable config.json: train afresh (the trainer rewrites the folder atomically)
  }
}

// What a run's recorded results depend on, besides its own code: the run's config (seed included),
// the analyses the suite runs on it, and the tokens it trained and was evaluated on.
bool runs_on(const AnalysisSpec& a, const SuiteModel& sm) {
  return std::find(a.models.begin(), a.models.end(), sm.id) != a.models.end();
}

json data_identity(const TokenSplit& s) {
  return {{"tokens", s.tokens.size()},
          {"xxh3", fmt::format("{:016x}", XXH3_64bits(s.tokens.data(), s.tokens.size() * sizeof(int32_t)))},
          {"vocab_size", s.vocab_size},
          {"documents", s.doc_ends.size()},
          {"domains", s.domains}};
}

json analyses_of(const Suite& s, const SuiteModel& sm, bool first_seed) {
  auto wants = [&](const AnalysisSpec& a) { return runs_on(a, sm); };
  json a = json::object();
  if (wants(s.disable_top)) a["disable_top"] = s.disable_top.ratios;
  if (wants(s.top_k)) a["top_k"] = s.top_k.k;
  if (wants(s.drop_shared)) a["drop_shared"] = true;
  if (wants(s.routing) && first_seed) a["routing"] = true;
  if (wants(s.per_domain)) a["per_domain"] = true;
  return a;
}

// OUT/runs/<id>/seed-<s>/suite_run.json: the run's entry of results.json with the key it was made
// under. A folder whose record has the wanted key needs neither training nor its checkpoint, so a
// suite can be finished in several sittings on machines that do not keep each other's checkpoints
// (a report commits its records, not its 15 MB checkpoints). Returns null when absent or stale.
constexpr const char* kRunRecord = "suite_run.json";

json read_run_record(const std::string& dir, const json& key) {
  const fs::path p = fs::path(dir) / kRunRecord;
  if (!fs::exists(p)) return nullptr;
  std::ifstream in(p);
  json r = json::parse(in, nullptr, false);
  if (r.is_discarded() || !r.is_object() || !r.contains("key") || !r.contains("run") || !r["run"].is_object())
    fail("{}: not a suite run record (delete it to have the suite redo this run)", p.string());
  return r["key"] == key ? r["run"] : json();
}

double eval_loss(Model& model, const TokenSplit& val, const TrainConfig& t) {
  const double loss = evaluate(model, val, t.batch_size, t.seq_len, t.eval_batches);
  if (!std::isfinite(loss)) fail("evaluation gave a non-finite loss ({})", loss);
  return loss;
}

// The analyses of one trained model: evaluation-time routing overrides and routing statistics.
void analyse(const Suite& s, const SuiteModel& sm, bool first_seed, Model& model, const TokenSplit& val, json& run) {
  const ModelConfig& m = sm.config.model;
  const TrainConfig& t = sm.config.train;
  auto wants = [&](const AnalysisSpec& a) { return runs_on(a, sm); };
  auto loss_with = [&](const RoutingOverride& o) {
    model.set_routing_override(o);
    const double l = eval_loss(model, val, t);
    model.set_routing_override(RoutingOverride{});
    return l;
  };
  if (wants(s.disable_top)) {
    run["disable_top"] = json::array();
    for (double r : s.disable_top.ratios) {
      RoutingOverride o;
      o.disable_top = (int64_t)std::llround(r * (double)m.n_routed_experts);
      if (o.disable_top + m.num_experts_per_tok > m.n_routed_experts) continue;  // nothing left to route to
      run["disable_top"].push_back({{"ratio", r}, {"disabled", o.disable_top}, {"loss", loss_with(o)}});
    }
  }
  if (wants(s.top_k)) {
    run["top_k"] = json::array();
    for (int64_t k : s.top_k.k) {
      if (k > m.n_routed_experts) continue;
      RoutingOverride o;
      o.top_k = k;
      run["top_k"].push_back({{"k", k}, {"loss", loss_with(o)}});
    }
  }
  if (wants(s.drop_shared) && m.n_shared_experts > 0 && m.num_experts_per_tok < m.n_routed_experts) {
    RoutingOverride o;
    o.drop_shared = true;
    o.top_k = m.num_experts_per_tok + 1;  // the paper: remove the shared expert, activate one more routed
    RoutingOverride only_drop;
    only_drop.drop_shared = true;
    run["drop_shared"] = {{"top_k", o.top_k}, {"loss", loss_with(o)}, {"loss_without_extra_expert", loss_with(only_drop)}};
  }
  // Routing statistics are large (co-occurrence matrices): one seed is enough to look at.
  if (wants(s.routing) && first_seed && m.is_moe()) {
    RoutingStats stats;
    model.set_routing_stats(&stats);
    eval_loss(model, val, t);
    model.set_routing_stats(nullptr);
    run["routing"] = routing_stats_json(stats);
  }
  // Per-domain loss and specialisation, on every seed (the per-domain losses are compared over seeds).
  if (wants(s.per_domain)) {
    DomainEvalOptions o;
    o.batch = t.batch_size;
    o.seq_len = t.seq_len;
    o.n_batches = t.eval_batches;
    run["per_domain"] = evaluate_domains(model, val, o);
    if (m.is_moe() && m.n_shared_experts > 0) {  // the shared experts' role, domain by domain
      RoutingOverride no_shared;
      no_shared.drop_shared = true;
      model.set_routing_override(no_shared);
      o.expert_outputs = false;
      const json without = evaluate_domains(model, val, o);
      model.set_routing_override(RoutingOverride{});
      run["per_domain"]["loss_without_shared"] = without.at("loss");
    }
  }
}

}  // namespace

json run_suite(const Suite& s, const RunOptions& opt) {
  const auto t0 = Clock::now();
  fs::create_directories(opt.out_dir);
  const TokenSplit train_data = load_split(s.data_dir, "train");
  const TokenSplit val = load_split(s.data_dir, "val");
  if (!s.per_domain.models.empty() && !val.has_domains())
    fail("{}: analyses.per_domain needs data with domain labels, and {} has none (prepare it with `dsmoe prepare "
         "--corpus mixed` or --manifest)", s.path, val.path);
  const TrainConfig& budget = s.models.front().config.train;
  const int64_t tokens_per_model = budget.steps * budget.batch_size * budget.seq_len * budget.grad_accum;

  json res = {{"suite", s.name},
              {"suite_file", s.path},
              {"quick", s.quick},
              {"data", s.data_dir},
              {"seeds", s.seeds},
              {"suite_seeds", s.suite_seeds.empty() ? s.seeds : s.suite_seeds},
              {"missing_runs", json::array()},
              {"threads", omp_get_max_threads()},
              {"unigram_baseline", unigram_baseline(train_data, val)},
              {"tokens_per_model", tokens_per_model},
              {"steps", budget.steps},
              {"batch_tokens", budget.batch_size * budget.seq_len * budget.grad_accum},
              {"seq_len", budget.seq_len},
              {"eval_tokens", budget.eval_batches * budget.batch_size * budget.seq_len},
              {"hidden_size", s.models.front().config.model.hidden_size},
              {"layers", s.models.front().config.model.num_hidden_layers},
              {"top_k_reference", s.top_k.reference},
              {"models", json::array()},
              {"runs", json::array()}};

  // The plan, with its training FLOPs, for the suite's ETA.
  struct Planned {
    const SuiteModel* m;
    uint64_t seed;
    double flops;
  };
  std::vector<Planned> plan;
  double flops_total = 0;
  std::map<const SuiteModel*, double> run_flops;  // training FLOPs of one run of each model
  for (const auto& m : s.models) {
    const ModelStats st = model_stats(m.config.model, m.config.train.seq_len);
    run_flops[&m] = st.train_flops_per_token * (double)tokens_per_model;
    const ModelStats st2k = model_stats(m.config.model, 2048);
    res["models"].push_back({{"id", m.id},
                             {"label", m.label},
                             {"groups", m.groups},
                             {"config", m.config_path},
                             {"seeds", m.seeds},
                             {"total_params", st.total_params},
                             {"activated_params", st.activated_params},
                             {"ffn_params", ffn_params(m.config.model)},
                             {"train_flops_per_token", st.train_flops_per_token},
                             {"flops_per_2k_tokens", st2k.train_flops_per_token * 2048},
                             {"shared_experts", m.config.model.n_shared_experts},
                             {"routed_experts", m.config.model.n_routed_experts},
                             {"active_routed", m.config.model.num_experts_per_tok},
                             {"expert_width", m.config.model.is_moe() ? m.config.model.moe_intermediate_size
                                                                      : m.config.model.intermediate_size}});
  }
  // Seed by seed, so that an interrupted suite has every model of the first seed first.
  for (uint64_t seed : s.seeds)
    for (const auto& m : s.models)
      if (std::find(m.seeds.begin(), m.seeds.end(), seed) != m.seeds.end()) {
        plan.push_back({&m, seed, run_flops.at(&m)});
        flops_total += plan.back().flops;
      }
  for (const auto& m : s.models)  // seeds outside the suite's list (a model's own "seeds")
    for (uint64_t seed : m.seeds)
      if (std::find(s.seeds.begin(), s.seeds.end(), seed) == s.seeds.end()) {
        plan.push_back({&m, seed, run_flops.at(&m)});
        flops_total += plan.back().flops;
      }

  if (opt.shard_count < 1 || opt.shard_index < 0 || opt.shard_index >= opt.shard_count)
    fail("suite shard {}/{}: expected 0 <= index < count", opt.shard_index, opt.shard_count);
  if (!opt.train && opt.shard_count > 1) fail("a suite shard trains runs: it cannot go without training");
  const bool sharded = opt.shard_count > 1;
  if (sharded) {  // round robin over the plan: each shard gets every seed's mix of cheap and costly runs
    std::vector<Planned> mine;
    flops_total = 0;
    for (size_t i = 0; i < plan.size(); ++i)
      if ((int64_t)(i % (size_t)opt.shard_count) == opt.shard_index) {
        mine.push_back(plan[i]);
        flops_total += plan[i].flops;
      }
    plan = std::move(mine);
  }

  const json train_identity = data_identity(train_data), val_identity = data_identity(val);
  auto save_results = [&] {
    res["wall_s"] = seconds_since(t0);
    write_file_atomic((fs::path(opt.out_dir) / "results.json").string(), res.dump(1));
  };
  double flops_done = 0, secs_training = 0;
  ProgressOptions po;
  po.enabled = opt.progress;
  po.show_rate = po.show_eta = false;  // runs differ in cost: the ETA below weighs them by FLOPs
  Progress progress("experiment", (int64_t)plan.size(), "runs", po);
  for (size_t i = 0; i < plan.size(); ++i) {
    const SuiteModel& sm = *plan[i].m;
    const uint64_t seed = plan[i].seed;
    Config cfg = config_for_data(sm.config, train_data);  // what the run folder's config.json holds
    cfg.train.seed = seed;
    const std::string dir = (fs::path(opt.out_dir) / "runs" / sm.id / fmt::format("seed-{}", seed)).string();
    const json key = {{"config", to_json(cfg)},
                      {"analyses", analyses_of(s, sm, seed == sm.seeds.front())},
                      {"train_data", train_identity},
                      {"val_data", val_identity}};
    if (json recorded = read_run_record(dir, key); !recorded.is_null()) {
      flops_total -= plan[i].flops;
      if (opt.progress)
        progress.update((int64_t)i + 1, fmt::format("{} seed {}: val loss {:.4f} | recorded in {}", sm.id, seed,
                                                    recorded.at("val_loss").get<double>(), kRunRecord),
                        /*force=*/true);
      if (sharded) continue;
      recorded["dir"] = dir;
      res["runs"].push_back(std::move(recorded));
      save_results();
      continue;
    }
    const bool resume = reusable(dir, cfg);
    if (!opt.train) {  // only a finished checkpoint
      TrainState st;
      if (resume) {
        Model probe(cfg.model);
        load_checkpoint(dir, probe, nullptr, &st, false, opt.checksums);
      }
      if (!resume || st.step < cfg.train.steps) {
        flops_total -= plan[i].flops;
        res["missing_runs"].push_back({{"model", sm.id}, {"seed", seed}, {"steps_done", st.step}});
        if (opt.progress)
          progress.update((int64_t)i + 1, fmt::format("{} seed {}: not trained yet ({} of {} steps), left out", sm.id,
                                                      seed, st.step, cfg.train.steps), /*force=*/true);
        continue;
      }
    }
    if (opt.progress)
      progress.message(fmt::format("[experiment] run {}/{}: {} ({}), seed {}{}", i + 1, plan.size(), sm.label, sm.id, seed,
                                   resume ? " (reusing its checkpoint)" : ""));
    TrainOptions to;
    to.data_dir = s.data_dir;
    to.out_dir = dir;
    to.resume = resume;
    to.force = !resume;  // a run folder of this suite whose config changed: the suite retrains it
    to.progress = opt.progress;
    to.checksums = opt.checksums;
    const auto t_run = Clock::now();
    const TrainSummary sum = train(cfg, to);
    double train_s = seconds_since(t_run);
    if (!std::isfinite(sum.val_loss)) fail("{}: validation loss is {}", dir, sum.val_loss);

    if (!resume || sum.steps_done > 0) {  // the rate of runs actually trained now, not of reused ones
      flops_done += plan[i].flops;
      secs_training += seconds_since(t_run);
    } else {
      flops_total -= plan[i].flops;
    }
    const double eta = flops_done > 0 ? secs_training * (flops_total - flops_done) / flops_done : NAN;
    const std::string where = sharded ? fmt::format("shard {}/{}", opt.shard_index, opt.shard_count) : "suite";
    auto report_run = [&] {
      progress.update((int64_t)i + 1,
                      fmt::format("{} seed {}: val loss {:.4f} | trained in {} | {} {} elapsed, ETA {}", sm.id, seed,
                                  sum.val_loss, fmt_secs(train_s), where, fmt_secs(seconds_since(t0)), fmt_secs(eta)),
                      /*force=*/true);
    };
    if (sharded) {  // training only: the unsharded pass analyses and writes the results
      report_run();
      continue;
    }
    double logged_elapsed = NAN;
    json run = {{"model", sm.id}, {"seed", seed}, {"dir", dir}, {"val_loss", sum.val_loss}};
    int64_t logged_threads = 0;
    run["curve"] = read_curve((fs::path(dir) / "metrics.jsonl").string(), &logged_elapsed, &logged_threads);
    if (resume && std::isfinite(logged_elapsed)) train_s = logged_elapsed;  // the time it took when trained
    run["train_s"] = train_s;
    if (logged_threads > 0) run["train_threads"] = logged_threads;

    Model model(cfg.model);
    load_checkpoint(dir, model, nullptr, nullptr, false, opt.checksums);
    const auto t_an = Clock::now();
    analyse(s, sm, seed == sm.seeds.front(), model, val, run);
    run["analysis_s"] = seconds_since(t_an);
    write_file_atomic((fs::path(dir) / kRunRecord).string(), json{{"key", key}, {"run", run}}.dump(1));
    res["runs"].push_back(std::move(run));
    report_run();
    save_results();  // partial results survive an interruption (the report can be drawn from them)
  }
  if (sharded) return json();
  save_results();
  return res;
}

}  // namespace dsmoe::experiment
