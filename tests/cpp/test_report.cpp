// Charts (src/report): every SVG is checked by an independent XML parser (tests/oracle/svg_check.py:
// well-formed, finite geometry, resolvable url(#id)s), then the test reads the parsed elements to
// check that data landed where they should: line extremes at the plot-area corners, gaps at NaN,
// log axes, bar floors and reference lines, heatmap colours. Also metrics.jsonl parsing errors and
// `dsmoe plot` / `dsmoe train` writing the run's charts.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <sys/wait.h>

#include "core/error.h"
#include "report/chart.h"
#include "report/run_charts.h"
#include "test_util.h"
#include "train/data.h"

using namespace dsmoe;
using namespace dsmoe::report;
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// A fresh scratch folder for the current test (suffix: one per chart when a test draws several).
std::string test_dir(const std::string& suffix = "") {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string d = test::tmp_path(std::string("report_") + info->test_suite_name() + "_" + info->name() + suffix);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Parses SVG files with the Python checker; returns their elements (empty on failure, which the
// checker has already reported as a test failure).
std::vector<json> parse_files(const std::vector<std::string>& paths, const std::string& dir) {
  const std::string out = dir + "/parsed.json";
  std::vector<std::string> args = {out};
  args.insert(args.end(), paths.begin(), paths.end());
  if (!test::run_oracle("svg_check.py", args)) return {};
  json j = json::parse(slurp(out));
  std::vector<json> r;
  for (const auto& p : paths) r.push_back(j.at(p));
  return r;
}

json parse_svg(const std::string& svg, const std::string& name = "chart") {
  const std::string dir = test_dir("_" + name);
  const std::string path = dir + "/" + name + ".svg";
  write_svg(path, svg);
  auto r = parse_files({path}, dir);
  return r.empty() ? json::array() : r[0];
}

std::vector<json> find(const json& elems, const std::string& tag, const std::string& cls = "") {
  std::vector<json> r;
  for (const auto& e : elems)
    if (e["tag"] == tag && (cls.empty() || e["attrib"].value("class", "") == cls)) r.push_back(e);
  return r;
}

double attr(const json& e, const char* k) { return std::stod(e["attrib"].at(k).get<std::string>()); }

struct Pt {
  double x, y;
};
// A path's runs ("M x,y L x,y ... M ..."): one vector of points per M.
std::vector<std::vector<Pt>> path_runs(const std::string& d) {
  std::vector<std::vector<Pt>> runs;
  std::istringstream in(d);
  std::string tok;
  while (in >> tok) {
    if (tok[0] == 'M') runs.emplace_back();
    const auto comma = tok.find(',');
    runs.back().push_back({std::stod(tok.substr(1, comma - 1)), std::stod(tok.substr(comma + 1))});
  }
  return runs;
}

std::vector<std::string> texts(const json& elems, const std::string& group, const std::string& cls) {
  std::vector<std::string> r;
  for (const auto& e : elems)
    if (e["tag"] == "text" && e["group"] == group && e["attrib"].value("class", "") == cls) r.push_back(e["text"]);
  return r;
}

struct Rect {
  double x, y, w, h;
};
Rect plot_area(const json& elems) {
  auto r = find(elems, "rect", "plot-area");
  EXPECT_EQ(r.size(), 1u);
  if (r.empty()) return {0, 0, 0, 0};
  return {attr(r[0], "x"), attr(r[0], "y"), attr(r[0], "width"), attr(r[0], "height")};
}

Series series(const std::string& name, std::vector<double> x, std::vector<double> y, std::vector<double> err = {}) {
  Series s;
  s.name = name;
  s.x = std::move(x);
  s.y = std::move(y);
  s.y_err = std::move(err);
  return s;
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

// ================================================================ line charts

TEST(ReportLine, ExtremePointsLandOnPlotAreaCorners) {
  LineChart c;
  c.title = "corners";
  c.x_label = "step";
  c.y_label = "loss";
  // Whole-tick ranges ([0, 10] x [0, 1]) are the axis domains exactly.
  c.series.push_back(series("a", {0, 2.5, 5, 10}, {0, 0.7, 0.2, 1}));
  const json el = parse_svg(to_svg(c));
  const Rect p = plot_area(el);
  auto paths = find(el, "path", "series");
  ASSERT_EQ(paths.size(), 1u);
  EXPECT_EQ(paths[0]["attrib"]["data-series"], "a");
  auto runs = path_runs(paths[0]["attrib"]["d"]);
  ASSERT_EQ(runs.size(), 1u);
  ASSERT_EQ(runs[0].size(), 4u);
  EXPECT_NEAR(runs[0].front().x, p.x, 0.01);
  EXPECT_NEAR(runs[0].front().y, p.y + p.h, 0.01);  // (0, 0): bottom left
  EXPECT_NEAR(runs[0].back().x, p.x + p.w, 0.01);
  EXPECT_NEAR(runs[0].back().y, p.y, 0.01);  // (10, 1): top right
  EXPECT_NEAR(runs[0][2].x, p.x + p.w / 2, 0.01);
  EXPECT_NEAR(runs[0][2].y, p.y + p.h * 0.8, 0.01);
  // 1-2-5 ticks: 0..1 in steps of 0.2 on y (as many decimals as the step needs), 0..10 on x.
  EXPECT_EQ(texts(el, "y-axis", "tick"), (std::vector<std::string>{"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"}));
  auto xt = texts(el, "x-axis", "tick");
  EXPECT_EQ(xt.front(), "0");
  EXPECT_EQ(xt.back(), "10");
}

TEST(ReportLine, NiceTicksForAwkwardRanges) {
  LineChart c;
  c.series.push_back(series("tokens", {0, 1.234e6}, {2.71, 7.3}));
  const json el = parse_svg(to_svg(c));
  // 0..1.234M: steps of 200k, labelled with SI suffixes, domain extended to the next whole tick.
  EXPECT_EQ(texts(el, "x-axis", "tick"),
            (std::vector<std::string>{"0", "0.2M", "0.4M", "0.6M", "0.8M", "1.0M", "1.2M", "1.4M"}));
  EXPECT_EQ(texts(el, "y-axis", "tick"), (std::vector<std::string>{"2", "3", "4", "5", "6", "7", "8"}));
}

TEST(ReportLine, NonFiniteValuesBreakTheLine) {
  LineChart c;
  c.title = "gaps";
  std::vector<double> x, y;
  for (int i = 0; i < 50; ++i) {  // dense (no dots but for isolated points)
    x.push_back(i);
    y.push_back(i == 10 ? NAN : i == 20 ? INFINITY : i == 22 ? -INFINITY : i);
  }
  x[30] = NAN;
  c.series.push_back(series("s", x, y));
  const std::string svg = to_svg(c);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  const json el = parse_svg(svg);
  auto paths = find(el, "path", "series");
  ASSERT_EQ(paths.size(), 1u);
  auto runs = path_runs(paths[0]["attrib"]["d"]);
  // 0..9, 11..19, (21 alone: a dot), 23..29, 31..49
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_EQ(runs[0].size(), 10u);
  EXPECT_EQ(runs[1].size(), 9u);
  EXPECT_EQ(runs[2].size(), 7u);
  EXPECT_EQ(runs[3].size(), 19u);
  auto dots = find(el, "circle", "marker");
  ASSERT_EQ(dots.size(), 1u);
  const Rect p = plot_area(el);
  EXPECT_NEAR(attr(dots[0], "cx"), p.x + p.w * 21 / 50, 0.01);  // x axis 0..50
  EXPECT_NEAR(attr(dots[0], "cy"), p.y + p.h * (1 - 21.0 / 50), 0.01);
}

TEST(ReportLine, SparseSeriesGetDotsAndIntegerAxesWholeTicks) {
  LineChart c;
  c.x_integer = true;
  c.series.push_back(series("val", {1, 2, 3}, {3, 2.5, 2.2}));
  const json el = parse_svg(to_svg(c));
  EXPECT_EQ(find(el, "circle", "marker").size(), 3u);
  EXPECT_EQ(texts(el, "x-axis", "tick"), (std::vector<std::string>{"1", "2", "3"}));  // not 1.2, 1.4, ...
}

TEST(ReportLine, LogAxisSkipsNonPositiveValues) {
  LineChart c;
  c.log_x = true;
  c.log_y = true;
  std::vector<double> x, y;
  for (int i = 0; i < 60; ++i) {  // dense: no markers
    x.push_back(std::pow(10.0, i / 20.0));
    y.push_back(i == 30 ? 0.0 : i == 31 ? -2.0 : std::pow(10.0, 3 - i / 20.0));
  }
  c.series.push_back(series("power law", x, y));
  const json el = parse_svg(to_svg(c));
  const Rect p = plot_area(el);
  auto runs = path_runs(find(el, "path", "series").at(0)["attrib"]["d"]);
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].size() + runs[1].size(), 58u);
  // x spans 10^0 .. 10^2.95 -> domain [1, 1000]; y spans 10^0.05 .. 10^3 -> [1, 1000]: a straight
  // line from the top-left corner, equal steps per decade.
  EXPECT_NEAR(runs[0].front().x, p.x, 0.01);
  EXPECT_NEAR(runs[0].front().y, p.y, 0.01);
  EXPECT_NEAR(runs[0][20].x, p.x + p.w / 3, 0.01);
  EXPECT_NEAR(runs[0][20].y, p.y + p.h / 3, 0.01);
  EXPECT_EQ(texts(el, "y-axis", "tick"), (std::vector<std::string>{"1", "10", "100", "1k"}));
  EXPECT_EQ(texts(el, "x-axis", "tick"), (std::vector<std::string>{"1", "10", "100", "1k"}));
}

TEST(ReportLine, ErrorBandSpansPlusMinusError) {
  LineChart c;
  c.series.push_back(series("mean", {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, std::vector<double>(11, 0.5),
                            std::vector<double>(11, 0.5)));
  const json el = parse_svg(to_svg(c));
  const Rect p = plot_area(el);
  auto bands = find(el, "polygon", "band");
  ASSERT_EQ(bands.size(), 1u);
  std::istringstream in(bands[0]["attrib"]["points"].get<std::string>());
  std::string tok;
  double ymin = 1e9, ymax = -1e9;
  int n = 0;
  while (in >> tok) {
    const double y = std::stod(tok.substr(tok.find(',') + 1));
    ymin = std::min(ymin, y);
    ymax = std::max(ymax, y);
    ++n;
  }
  EXPECT_EQ(n, 22);  // upper edge forward, lower edge back
  EXPECT_NEAR(ymin, p.y, 0.01);        // 0.5 + 0.5 = 1: top
  EXPECT_NEAR(ymax, p.y + p.h, 0.01);  // 0.5 - 0.5 = 0: bottom
}

TEST(ReportLine, EscapesTextAndLegendNamesEverySeries) {
  LineChart c;
  c.title = "a<b & c";
  c.x_label = "x \"quoted\"";
  c.y_label = "it's > 0";
  c.series.push_back(series("train <lm>", {0, 1}, {1, 2}));
  c.series.push_back(series("val & \"test\"", {0, 1}, {2, 1}));
  const std::string svg = to_svg(c);
  EXPECT_NE(svg.find("a&lt;b &amp; c"), std::string::npos);
  const json el = parse_svg(svg);
  ASSERT_FALSE(el.empty());
  EXPECT_EQ(find(el, "title").at(0)["text"], "a<b & c");
  EXPECT_EQ(find(el, "text", "chart-title").at(0)["text"], "a<b & c");
  std::vector<std::string> legend;
  for (const auto& e : el)
    if (e["tag"] == "text" && e["group"] == "legend") legend.push_back(e["text"]);
  EXPECT_EQ(legend, (std::vector<std::string>{"train <lm>", "val & \"test\""}));
  EXPECT_EQ(find(el, "path", "series").at(1)["attrib"]["data-series"], "val & \"test\"");
  // The legend sits above the plot area: it cannot cover data.
  const Rect p = plot_area(el);
  for (const auto& e : el)
    if (e["group"] == "legend" && e["attrib"].contains("y")) EXPECT_LT(attr(e, "y"), p.y);
}

TEST(ReportLine, EmptyAndAllNaNSeriesDrawAxesAndNoData) {
  LineChart c;
  c.title = "nothing yet";
  c.series.push_back(series("empty", {}, {}));
  c.series.push_back(series("nan", {1, 2}, {NAN, NAN}));
  const json el = parse_svg(to_svg(c), "line");
  EXPECT_EQ(find(el, "text", "no-data").size(), 1u);
  EXPECT_TRUE(find(el, "path", "series").empty());
  LineChart none;  // no series at all, log axes
  none.log_y = true;
  EXPECT_EQ(find(parse_svg(to_svg(none), "none"), "text", "no-data").size(), 1u);
}

TEST(ReportLine, TinySpansOfHugeValuesTerminate) {
  LineChart c;  // 1e17 + 16: ticks 0.2 apart cannot be reached by adding 1 to a tick counter
  c.series.push_back(series("s", {0, 1}, {1e17, 1e17 + 16}));
  EXPECT_FALSE(parse_svg(to_svg(c)).empty());
}

TEST(ReportLine, InconsistentSeriesAreRefusedByName) {
  LineChart c;
  c.title = "bad";
  c.series.push_back(series("s1", {1, 2, 3}, {1, 2}));
  std::string e = error_of([&] { to_svg(c); });
  EXPECT_NE(e.find("'bad'"), std::string::npos) << e;
  EXPECT_NE(e.find("'s1'"), std::string::npos) << e;
  EXPECT_NE(e.find("3 x values but 2 y values"), std::string::npos) << e;
  c.series[0] = series("s2", {1, 2}, {1, 2}, {0.1});
  e = error_of([&] { to_svg(c); });
  EXPECT_NE(e.find("'s2' has 1 error values but 2 y values"), std::string::npos) << e;
}

// ================================================================ bar charts

TEST(ReportBar, LossBarsGetAFloorBelowTheSmallestBar) {
  BarChart c;
  c.title = "validation loss";
  c.y_label = "loss";
  c.categories = {"Dense", "Hash", "Switch", "GShard", "DeepSeekMoE"};
  c.series.push_back(series("val", {}, {2.40, 2.31, 2.25, 2.22, 2.12}, {0.01, 0.02, 0.01, 0.02, NAN}));
  c.ref_lines = {{"unigram 3.10", 3.10}};
  const json el = parse_svg(to_svg(c));
  auto ticks = texts(el, "y-axis", "tick");
  ASSERT_FALSE(ticks.empty());
  EXPECT_GT(std::stod(ticks.front()), 1.5) << "auto floor should not be 0 for losses";
  EXPECT_LT(std::stod(ticks.front()), 2.12);
  auto bars = find(el, "rect", "bar");
  ASSERT_EQ(bars.size(), 5u);
  // Taller bar = larger value; all bars share the floor.
  for (size_t i = 1; i < bars.size(); ++i) EXPECT_LT(attr(bars[i], "height"), attr(bars[i - 1], "height"));
  EXPECT_NEAR(attr(bars[0], "y") + attr(bars[0], "height"), attr(bars[4], "y") + attr(bars[4], "height"), 0.01);
  EXPECT_EQ(bars[4]["attrib"]["data-category"], "DeepSeekMoE");
  EXPECT_EQ(find(el, "line", "error-bar").size(), 4u * 3);  // the NaN error is skipped
  auto refs = find(el, "line", "ref-line");
  ASSERT_EQ(refs.size(), 1u);
  EXPECT_LT(attr(refs[0], "y1"), attr(bars[0], "y"));  // 3.10 is above every bar
  EXPECT_EQ(find(el, "text", "ref-label").at(0)["text"], "unigram 3.10");
}

TEST(ReportBar, CountsStartAtZeroAndExplicitFloorIsKept) {
  BarChart c;
  c.categories = {"a", "b"};
  c.series.push_back(series("x", {}, {3, 8}));
  c.series.push_back(series("y", {}, {5, NAN}));
  json el = parse_svg(to_svg(c), "zero");
  EXPECT_EQ(texts(el, "y-axis", "tick").front(), "0");
  EXPECT_EQ(find(el, "rect", "bar").size(), 3u);  // the NaN bar is left out
  c.y_min = 2;
  el = parse_svg(to_svg(c), "floor");
  EXPECT_EQ(texts(el, "y-axis", "tick").front(), "2");
  c.series[1].y = {1};
  EXPECT_NE(error_of([&] { to_svg(c); }).find("'y' has 1 values but the chart has 2 categories"), std::string::npos);
}

// ================================================================ heatmaps

TEST(ReportHeatmap, ColoursFollowTheValuesAndMissingCellsAreHatched) {
  Heatmap h;
  h.title = "load <per> expert";
  h.rows = 2;
  h.cols = 3;
  h.values = {0.5, 1.0, 1.5, 2.5, NAN, 1.0};
  h.row_labels = {"layer 1", "layer 2"};
  h.value_label = "load / mean";
  const std::string svg = to_svg(h);
  EXPECT_EQ(svg.find("nan"), std::string::npos) << "a missing cell's tooltip should say so in words";
  EXPECT_NE(svg.find("layer 2, column 1: no value"), std::string::npos);
  const json el = parse_svg(svg);
  auto cells = find(el, "rect", "cell");
  ASSERT_EQ(cells.size(), 6u);
  auto cell = [&](int r, int c) { return cells[r * 3 + c]; };
  EXPECT_EQ(cell(1, 0)["attrib"]["fill"], "#fde725");  // max: top of viridis
  EXPECT_EQ(cell(0, 0)["attrib"]["fill"], "#440154");  // min: bottom
  EXPECT_EQ(cell(1, 1)["attrib"]["fill"], "url(#missing)");
  EXPECT_EQ(cell(0, 1)["attrib"]["fill"], cell(1, 2)["attrib"]["fill"]);  // equal values, equal colours
  // Row 0 on top, columns left to right, cells tile the plot area.
  const Rect p = plot_area(el);
  EXPECT_NEAR(attr(cell(0, 0), "x"), p.x, 0.01);
  EXPECT_NEAR(attr(cell(0, 0), "y"), p.y, 0.01);
  EXPECT_NEAR(attr(cell(1, 2), "x"), p.x + p.w * 2 / 3, 0.01);
  EXPECT_NEAR(attr(cell(1, 2), "y"), p.y + p.h / 2, 0.01);
  EXPECT_EQ(find(el, "rect", "colorbar").size(), 1u);
  auto cb_ticks = texts(el, "", "tick");
  ASSERT_FALSE(cb_ticks.empty());
  EXPECT_GE(std::stod(cb_ticks.front()), 0.5);
  EXPECT_LE(std::stod(cb_ticks.back()), 2.5);
}

TEST(ReportHeatmap, ConstantEmptyAndInconsistentInputs) {
  Heatmap h;
  h.rows = 2;
  h.cols = 2;
  h.values = {1, 1, 1, 1};
  json el = parse_svg(to_svg(h), "constant");
  EXPECT_EQ(find(el, "rect", "cell").size(), 4u);
  Heatmap empty;
  el = parse_svg(to_svg(empty), "empty");
  EXPECT_EQ(find(el, "text", "no-data").size(), 1u);
  h.title = "hm";
  h.values.pop_back();
  EXPECT_NE(error_of([&] { to_svg(h); }).find("heatmap 'hm': 3 values for 2 rows x 2 columns"), std::string::npos);
  h.values.push_back(1);
  h.col_labels = {"only one"};
  EXPECT_NE(error_of([&] { to_svg(h); }).find("1 column labels for 2 columns"), std::string::npos);
}

TEST(ReportSvg, WriteSvgNamesThePathOnFailure) {
  const std::string dir = test_dir();
  const std::string bad = dir + "/no_such_folder/x.svg";
  EXPECT_NE(error_of([&] { write_svg(bad, "<svg/>"); }).find(bad), std::string::npos);
  write_svg(dir + "/ok.svg", "<svg/>");
  EXPECT_EQ(slurp(dir + "/ok.svg"), "<svg/>");
}

// ================================================================ metrics.jsonl

TEST(ReportMetrics, ReadsTheTrainerColumnsAndLastExpertLoad) {
  const std::string dir = test_dir();
  const std::string path = dir + "/metrics.jsonl";
  std::ofstream(path) << R"({"step":1,"lr":0.001,"lm_loss":5.5,"tokens":64,"max_load":1.5,"expert_load":[[0.5,1.5],[1,1]]})"
                         "\n\n"
                      << R"({"step":2,"lr":0.002,"lm_loss":null,"tokens":128,"val_loss":5.0,"expert_load":[[2,0]]})"
                         "\n"
                      << R"({"step":3,"lr":0.0)";  // torn last line: a run killed while writing it
  MetricsLog m = read_metrics(path);
  EXPECT_EQ(m.step, (std::vector<double>{1, 2}));
  EXPECT_EQ(m.tokens, (std::vector<double>{64, 128}));
  EXPECT_TRUE(std::isnan(m.lm_loss[1]));
  EXPECT_TRUE(std::isnan(m.max_load[1]));
  EXPECT_EQ(m.val_step, (std::vector<double>{2}));
  EXPECT_EQ(m.load_step, 2);
  EXPECT_EQ(m.expert_load, (std::vector<std::vector<double>>{{2, 0}}));

  RunChartOptions o;
  o.name = "t";
  auto files = write_run_charts(m, dir + "/charts", o);
  EXPECT_EQ(files.size(), 4u);
  parse_files(files, dir);
}

TEST(ReportMetrics, ReadsRoutingEntropyRows) {
  const std::string dir = test_dir();
  const std::string path = dir + "/metrics.jsonl";
  std::ofstream(path) << R"({"step":1,"tokens":64,"routing_entropy":[0.99,null]})" "\n"
                      << R"({"step":2,"tokens":128})" "\n"
                      << R"({"step":3,"tokens":192,"routing_entropy":[0.9,0.8]})" "\n"
                      << R"({"step":4,"tokens":256,"routing_entropy":[0.85,0.7]})" "\n";
  MetricsLog m = read_metrics(path);
  EXPECT_EQ(m.entropy_step, (std::vector<double>{1, 3, 4}));
  EXPECT_EQ(m.entropy_tokens, (std::vector<double>{64, 192, 256}));
  ASSERT_EQ(m.routing_entropy.size(), 3u);
  EXPECT_TRUE(std::isnan(m.routing_entropy[0][1]));
  EXPECT_EQ(m.routing_entropy[1], (std::vector<double>{0.9, 0.8}));
  RunChartOptions o;
  o.moe_layer_ids = {1, 3};
  auto files = write_run_charts(m, dir + "/charts", o);
  ASSERT_EQ(files.size(), 3u);  // loss, lr, routing entropy (no expert load logged)
  auto parsed = parse_files({files[2]}, dir);
  auto series = find(parsed[0], "path", "series");
  ASSERT_EQ(series.size(), 2u);
  EXPECT_EQ(series[0]["attrib"]["data-series"], "layer 1");
  EXPECT_EQ(series[1]["attrib"]["data-series"], "layer 3");
  std::ofstream(path, std::ios::trunc) << R"({"step":1,"routing_entropy":0.5})" "\n";
  const std::string e = error_of([&] { read_metrics(path); });
  EXPECT_NE(e.find(path + ":1: 'routing_entropy' must be an array"), std::string::npos) << e;
}

TEST(ReportMetrics, BadFilesNameTheFileAndLine) {
  const std::string dir = test_dir();
  const std::string missing = dir + "/nope/metrics.jsonl";
  std::string e = error_of([&] { read_metrics(missing); });
  EXPECT_NE(e.find(missing + ": cannot open"), std::string::npos) << e;
  const std::string path = dir + "/metrics.jsonl";
  auto expect_error = [&](const std::string& content, const std::string& want) {
    std::ofstream(path, std::ios::trunc) << content;
    const std::string msg = error_of([&] { read_metrics(path); });
    EXPECT_NE(msg.find(path + ":" + want), std::string::npos) << msg;
  };
  expect_error("{\"step\":1}\n{\"step\":2,\n{\"step\":3}\n", "2: not valid JSON");
  expect_error("{\"step\":1}\n[1,2]\n", "2: expected a JSON object with an integer \"step\"");
  expect_error("{\"step\":1.5}\n", "1: expected a JSON object with an integer \"step\"");
  expect_error("{\"step\":1,\"lm_loss\":\"low\"}\n", "1: 'lm_loss' must be a number");
  expect_error("{\"step\":1,\"expert_load\":[1,2]}\n", "1: 'expert_load' must hold one array of numbers per MoE layer");
}

// ================================================================ the CLI

namespace {

struct CliRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

CliRun run_dsmoe(const std::string& args) {
  const std::string cmd = std::string("OMP_WAIT_POLICY=passive ") + DSMOE_BINARY + " " + args + " 2>&1";
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.output.append(buf, n);
  const int st = pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace

TEST(ReportCli, TrainWritesChartsAndPlotRedrawsThem) {
  const std::string dir = test_dir();
  // A tiny MoE (2 layers, the second MoE with 8 experts) on byte-level text, 3 steps, one evaluation.
  TokenSplit s;
  s.vocab_size = 256;
  s.tokenizer = "bytes";
  const std::string text = "the cat sat on a mat. dogs run fast and birds sing\n";
  while (s.tokens.size() < 6000)
    for (char c : text) s.tokens.push_back((unsigned char)c);
  save_split(dir + "/data", "train", s);
  save_split(dir + "/data", "val", s);
  json cfg = {{"vocab_size", 256}, {"hidden_size", 32}, {"intermediate_size", 64}, {"moe_intermediate_size", 16},
              {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 4},
              {"n_shared_experts", 1}, {"n_routed_experts", 8}, {"num_experts_per_tok", 2},
              {"first_k_dense_replace", 1}, {"max_position_embeddings", 64}, {"bos_token_id", 1}, {"eos_token_id", 2},
              {"training", {{"lr", 3e-3}, {"warmup_steps", 1}, {"steps", 3}, {"batch_size", 2}, {"seq_len", 16},
                            {"log_interval", 1}, {"eval_interval", 0}, {"eval_batches", 1}, {"checkpoint_interval", 0}}}};
  std::ofstream(dir + "/config.json") << cfg.dump(2);
  const std::string run = dir + "/run";
  CliRun t = run_dsmoe("train --config " + dir + "/config.json --data " + dir + "/data --out " + run +
                    " --quiet --sample-tokens 0");
  ASSERT_EQ(t.exit_code, 0) << t.output;
  for (const char* f : {"loss.svg", "lr.svg", "expert_load.svg", "load_balance.svg", "routing_entropy.svg"})
    EXPECT_TRUE(fs::exists(run + "/" + f)) << "train should leave " << f << " in the run folder";
  // Every logged step carries the one MoE layer's routing entropy; a freshly initialised router
  // (weights of std 0.02 on 32 inputs: logits of ~0.1) is close to uniform, and it cannot exceed 1.
  {
    std::ifstream in(run + "/metrics.jsonl");
    std::string line;
    int rows = 0;
    while (std::getline(in, line)) {
      const json r = json::parse(line);
      ASSERT_TRUE(r.contains("routing_entropy")) << line;
      ASSERT_EQ(r["routing_entropy"].size(), 1u) << line;
      const double h = r["routing_entropy"][0].get<double>();
      EXPECT_GT(h, 0.95) << line;
      EXPECT_LE(h, 1.0) << line;
      ++rows;
    }
    EXPECT_EQ(rows, 3);
  }

  CliRun p = run_dsmoe("plot --run " + run + " --out " + dir + "/charts --x tokens");
  ASSERT_EQ(p.exit_code, 0) << p.output;
  std::vector<std::string> files;
  for (const char* f : {"loss.svg", "lr.svg", "load_balance.svg", "expert_load.svg", "routing_entropy.svg"}) {
    files.push_back(dir + "/charts/" + f);
    EXPECT_NE(p.output.find(files.back()), std::string::npos) << p.output;
  }
  auto parsed = parse_files(files, dir);
  ASSERT_EQ(parsed.size(), 5u);
  // One line: the one MoE layer, named by its model layer.
  auto entropy = find(parsed[4], "path", "series");
  ASSERT_EQ(entropy.size(), 1u);
  EXPECT_EQ(entropy[0]["attrib"]["data-series"], "layer 1");
  // Train loss: a line with a dot per step (sparse); validation (one evaluation): a dot.
  auto series = find(parsed[0], "path", "series");
  ASSERT_EQ(series.size(), 1u);
  EXPECT_EQ(series[0]["attrib"]["data-series"], "train LM loss");
  EXPECT_EQ(find(parsed[0], "circle", "marker").size(), 4u);
  auto cells = find(parsed[3], "rect", "cell");
  EXPECT_EQ(cells.size(), 8u);  // one MoE layer x 8 experts
  EXPECT_EQ(texts(parsed[3], "", "row-label"), (std::vector<std::string>{"1"}));  // model layer 1
}

TEST(ReportCli, PlotRefusesBadRunsNamingTheFile) {
  const std::string dir = test_dir();
  CliRun r = run_dsmoe("plot --run " + dir + "/missing");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(dir + "/missing"), std::string::npos) << r.output;
  r = run_dsmoe("plot --run " + dir);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(dir + "/metrics.jsonl: cannot open"), std::string::npos) << r.output;
  std::ofstream(dir + "/metrics.jsonl") << "{\"step\":1}\nnot json\n";
  r = run_dsmoe("plot --run " + dir);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(dir + "/metrics.jsonl:2: not valid JSON"), std::string::npos) << r.output;
}
