// Charts as self-contained SVG text: line charts (linear or log axes, error bands), grouped bar
// charts (with reference lines) and heatmaps (viridis-like colour map with a colour bar). No library:
// SVG is text, so results are drawn by dsmoe itself and open in any browser.
//
// Non-finite values (NaN, +-Inf) are skipped: a line breaks into a gap there, a bar or cell is left
// out (a heatmap cell is drawn hatched grey). On a log axis non-positive values are skipped the same
// way (they have no position), so one zero in a series never makes the chart fail. A chart without
// any drawable value shows its axes and "no data". Legends (two series or more) sit in a row above
// the plot area, so they never cover data; a single series is named by the title and axis labels.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace dsmoe::report {

struct Series {
  std::string name;
  std::vector<double> x, y;
  std::vector<double> y_err;  // empty or same size as y: drawn as a band (line charts) or error bars (bars)
};

struct LineChart {
  std::string title, x_label, y_label;
  bool log_x = false, log_y = false;
  std::vector<Series> series;
  bool x_integer = false;  // x values are counts (steps, layers): no ticks between whole numbers
  bool markers = false;  // dots at every point of every series (series of <= kAutoMarkerPoints get them anyway)
};
inline constexpr size_t kAutoMarkerPoints = 40;

// Grouped bars: one group per category, one bar per series (Series::y[i] = value for categories[i]).
struct BarChart {
  std::string title, y_label;
  std::vector<std::string> categories;
  std::vector<Series> series;
  double y_min = NAN;  // NaN = auto: 0 when the data are near it, else a floor below the smallest bar
                       // (bars of losses would otherwise all look equally tall)
  std::vector<std::pair<std::string, double>> ref_lines;  // horizontal dashed lines with labels
};

struct Heatmap {
  std::string title, x_label, y_label, value_label;
  int64_t rows = 0, cols = 0;
  std::vector<double> values;  // row-major rows * cols
  std::vector<std::string> row_labels, col_labels;  // optional (empty = indices)
  // Colour scale: NaN = the data's own minimum / maximum. Give both to share one scale across the
  // charts of models that are compared (values outside are drawn at the nearer end).
  double scale_lo = NAN, scale_hi = NAN;
  // Cell labels with this many decimals (-1: three significant digits); 0 keeps percentages short.
  int cell_decimals = -1;
};

// Canvas size of every chart (SVG user units = px at 100%).
inline constexpr double kWidth = 800, kHeight = 480;

// Throws dsmoe::Error on inconsistent input (x/y or y_err sizes differ, values.size() != rows*cols,
// label counts that do not match), naming the chart title and the series.
std::string to_svg(const LineChart& c);
std::string to_svg(const BarChart& c);
std::string to_svg(const Heatmap& h);

// Writes atomically (temp file + rename); a failure names the path.
void write_svg(const std::string& path, const std::string& svg);

}  // namespace dsmoe::report
