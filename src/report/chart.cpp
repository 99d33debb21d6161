#include "report/chart.h"

#include <algorithm>
#include <array>
#include <fmt/format.h>

#include "core/error.h"
#include "io/safetensors.h"

namespace dsmoe::report {

namespace {

// ---------------------------------------------------------------- text and numbers

std::string esc(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default:
        // Control characters other than tab/newline are not allowed in XML 1.0 at all.
        if ((unsigned char)c < 0x20 && c != '\t' && c != '\n') o += ' ';
        else o += c;
    }
  }
  return o;
}

// A coordinate: two decimals are far below a pixel, and trimming keeps the file small. A non-finite
// coordinate here is a bug (every input value is filtered before it is mapped), never invalid SVG.
std::string num(double v) {
  DSMOE_ASSERT(std::isfinite(v), "non-finite SVG coordinate {}", v);
  std::string s = fmt::format("{:.2f}", v);
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s == "-0" ? "0" : s;
}

// A data value for labels and tooltips: 4 significant digits, exponents without padding.
std::string short_value(double v) {
  // Words rather than "nan"/"inf", which read like a corrupt number (and are what checks grep for).
  if (std::isnan(v)) return "no value";
  if (std::isinf(v)) return v > 0 ? "+infinity" : "-infinity";
  std::string s = fmt::format("{:.4g}", v);
  auto e = s.find('e');
  if (e != std::string::npos) {  // 1e-05 -> 1e-5, 2e+06 -> 2e6
    std::string mant = s.substr(0, e), ex = s.substr(e + 1);
    const bool neg = ex[0] == '-';
    ex = ex.substr(1);
    while (ex.size() > 1 && ex[0] == '0') ex.erase(0, 1);
    s = mant + "e" + (neg ? "-" : "") + ex;
  }
  return s;
}

// Tick label for value v on an axis whose ticks are `step` apart and whose largest |value| is `amax`:
// large axes (token counts) use k/M/G/T, tiny ones (learning rates) exponents, the rest just enough
// decimals to tell neighbouring ticks apart.
std::string tick_label(double v, double step, double amax) {
  if (std::fabs(v) < step * 1e-9) v = 0;  // 0.1 * 3 - 0.3 is a tick at zero, not at -5.6e-17
  static const std::array<std::pair<double, const char*>, 4> si = {
      {{1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}}};
  if (amax >= 1e4)
    for (auto [scale, suffix] : si)
      if (amax >= scale) {
        if (v == 0) return "0";
        const int dec = std::max(0, (int)-std::floor(std::log10(step / scale) + 1e-9));
        return fmt::format("{:.{}f}{}", v / scale, std::min(dec, 3), suffix);
      }
  if (amax < 1e-3) return short_value(v);
  const int dec = std::max(0, (int)-std::floor(std::log10(step) + 1e-9));
  return fmt::format("{:.{}f}", v, std::min(dec, 9));
}

// Rough width of a sans-serif string at font size `px` (no font metrics without a renderer; this
// only decides wrapping, rotation and label thinning).
double text_w(const std::string& s, double px) {
  size_t chars = 0;
  for (unsigned char c : s) chars += (c & 0xC0) != 0x80;  // count UTF-8 code points
  return (double)chars * px * 0.58;
}

// ---------------------------------------------------------------- colours

// Okabe & Ito's colour-blind-safe palette, yellow last (it is faint on white).
constexpr std::array<const char*, 8> kPalette = {"#0072B2", "#E69F00", "#009E73", "#D55E00",
                                                 "#CC79A7", "#56B4E9", "#000000", "#F0E442"};
const char* series_colour(size_t i) { return kPalette[i % kPalette.size()]; }
// Past the palette, series repeat colours with a dash pattern so they stay distinguishable.
std::string series_dash(size_t i) {
  static const std::array<const char*, 3> dashes = {"", "6 3", "2 2"};
  const char* d = dashes[(i / kPalette.size()) % dashes.size()];
  return *d ? fmt::format(" stroke-dasharray=\"{}\"", d) : "";
}

struct Rgb {
  double r, g, b;
};
// Viridis (perceptually uniform, colour-blind safe, prints in grey) at 9 evenly spaced points;
// linear interpolation between them is visually indistinguishable from the full map.
constexpr std::array<Rgb, 9> kViridis = {{{0x44, 0x01, 0x54}, {0x47, 0x2D, 0x7B}, {0x3B, 0x52, 0x8B},
                                          {0x2C, 0x72, 0x8E}, {0x21, 0x90, 0x8C}, {0x27, 0xAD, 0x81},
                                          {0x5D, 0xC8, 0x63}, {0xAA, 0xDC, 0x32}, {0xFD, 0xE7, 0x25}}};
Rgb viridis_rgb(double t) {
  t = std::clamp(t, 0.0, 1.0) * (double)(kViridis.size() - 1);
  const size_t i = std::min((size_t)t, kViridis.size() - 2);
  const double f = t - (double)i;
  const Rgb &a = kViridis[i], &b = kViridis[i + 1];
  return {a.r + (b.r - a.r) * f, a.g + (b.g - a.g) * f, a.b + (b.b - a.b) * f};
}
std::string hex(const Rgb& c) {
  return fmt::format("#{:02x}{:02x}{:02x}", (int)std::lround(c.r), (int)std::lround(c.g), (int)std::lround(c.b));
}

// ---------------------------------------------------------------- axes

struct Axis {
  double lo = 0, hi = 1;  // domain (for log: the values themselves, not their logs)
  bool log = false;
  std::vector<double> ticks;        // labelled, with grid lines
  std::vector<double> minor_ticks;  // log axes: 2..9 x 10^k
  double step = 1;                  // linear tick spacing (for labels)
  double t(double v) const {        // position in [0, 1]
    if (log) return (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
    return (v - lo) / (hi - lo);
  }
};

// The 1-2-5 step giving about `target` intervals over `span`.
double nice_step(double span, int target) {
  const double raw = span / target;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
}

// Linear axis over [lo, hi] (finite, lo <= hi). `extend` widens the domain to whole ticks (line
// charts); otherwise the domain is kept and ticks lie inside it (colour bars).
Axis linear_axis(double lo, double hi, int target, bool extend, double min_step = 0) {
  Axis a;
  if (hi - lo <= std::max(std::fabs(lo), std::fabs(hi)) * 1e-12) {  // one value: centre it
    const double pad = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  a.step = std::max(nice_step(hi - lo, target), min_step);
  if (extend) {
    lo = std::floor(lo / a.step + 1e-9) * a.step;
    hi = std::ceil(hi / a.step - 1e-9) * a.step;
  }
  a.lo = lo;
  a.hi = hi;
  // Counted, not stepped until hi: at 1e17 + 16, k += 1 would not change k.
  const double k0 = std::ceil(lo / a.step - 1e-9);
  const int n = (int)std::floor((hi - k0 * a.step) / a.step + 1e-9);
  for (int i = 0; i <= std::min(n, 100); ++i) a.ticks.push_back((k0 + i) * a.step);
  return a;
}

// Log axis over [lo, hi] (both > 0): whole decades, every decade labelled (every n-th when there are
// many), 2 and 5 labelled too when the axis spans at most two decades.
Axis log_axis(double lo, double hi) {
  Axis a;
  a.log = true;
  int d0 = (int)std::floor(std::log10(lo) + 1e-9), d1 = (int)std::ceil(std::log10(hi) - 1e-9);
  if (d1 <= d0) d1 = d0 + 1;
  a.lo = std::pow(10.0, d0);
  a.hi = std::pow(10.0, d1);
  const int every = (d1 - d0 + 7) / 8;
  for (int d = d0; d <= d1; ++d) {
    const double p = std::pow(10.0, d);
    if ((d - d0) % every == 0) a.ticks.push_back(p);
    if (d == d1) break;
    for (int m = 2; m <= 9; ++m) {
      if (d1 - d0 <= 2 && (m == 2 || m == 5)) a.ticks.push_back(m * p);
      else a.minor_ticks.push_back(m * p);
    }
  }
  std::sort(a.ticks.begin(), a.ticks.end());
  return a;
}

// Log ticks are decades (and 2, 5): each labelled on its own, large ones with k/M/G/T.
std::string log_label(double v) {
  static const std::array<std::pair<double, const char*>, 4> si = {
      {{1e12, "T"}, {1e9, "G"}, {1e6, "M"}, {1e3, "k"}}};
  for (auto [scale, suffix] : si)
    if (v >= scale * (1 - 1e-9)) return short_value(v / scale) + suffix;
  return short_value(v);
}

std::string axis_label(const Axis& a, double v) {
  return a.log ? log_label(v) : tick_label(v, a.step, std::max(std::fabs(a.lo), std::fabs(a.hi)));
}

// ---------------------------------------------------------------- canvas and frame

struct Box {
  double x, y, w, h;
};

class Svg {
 public:
  std::string s;
  void open(const std::string& title) {
    s += fmt::format(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
        "font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n<title>{2}</title>\n"
        "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>\n",
        num(kWidth), num(kHeight), esc(title));
    if (!title.empty())
      text(kWidth / 2, 22, title, "middle", "font-size=\"16\" font-weight=\"bold\" class=\"chart-title\"");
  }
  std::string close() { return s + "</svg>\n"; }
  void text(double x, double y, const std::string& t, const char* anchor, const std::string& extra = "") {
    s += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"{}\"{}{}>{}</text>\n", num(x), num(y), anchor,
                     extra.empty() ? "" : " ", extra, esc(t));
  }
  void line(double x1, double y1, double x2, double y2, const std::string& style) {
    s += fmt::format("<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" {}/>\n", num(x1), num(y1), num(x2), num(y2), style);
  }
};

// Legend as a row (wrapping) under the title: it can never cover the data. Returns its height.
double legend_height(const std::vector<Series>& series, double width) {
  if (series.size() < 2) return 0;
  double x = 0, rows = 1;
  for (const auto& s : series) {
    const double w = 28 + text_w(s.name, 12) + 16;
    if (x > 0 && x + w > width) {
      rows += 1;
      x = 0;
    }
    x += w;
  }
  return rows * 18 + 4;
}

void draw_legend(Svg& svg, const std::vector<Series>& series, const Box& plot, double top, bool bars) {
  if (series.size() < 2) return;
  svg.s += "<g class=\"legend\">\n";
  double x = 0, y = top + 12;
  for (size_t i = 0; i < series.size(); ++i) {
    const double w = 28 + text_w(series[i].name, 12) + 16;
    if (x > 0 && x + w > plot.w) {
      x = 0;
      y += 18;
    }
    const double x0 = plot.x + x;
    if (bars)
      svg.s += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"18\" height=\"10\" fill=\"{}\"/>\n", num(x0), num(y - 9),
                           series_colour(i));
    else
      svg.line(x0, y - 4, x0 + 22, y - 4,
               fmt::format("stroke=\"{}\" stroke-width=\"2.5\"{}", series_colour(i), series_dash(i)));
    svg.text(x0 + 28, y, series[i].name, "start");
    x += w;
  }
  svg.s += "</g>\n";
}

// Grid, ticks and labels of the y axis (left of the plot) and of the x axis (below it).
void draw_y_axis(Svg& svg, const Axis& a, const Box& p, const std::string& label) {
  svg.s += "<g class=\"y-axis\">\n";
  for (double v : a.minor_ticks) {
    const double y = p.y + p.h * (1 - a.t(v));
    svg.line(p.x - 3, y, p.x, y, "stroke=\"#444\"");
  }
  for (double v : a.ticks) {
    const double y = p.y + p.h * (1 - a.t(v));
    svg.line(p.x, y, p.x + p.w, y, "stroke=\"#e4e4e4\"");
    svg.line(p.x - 5, y, p.x, y, "stroke=\"#444\"");
    svg.text(p.x - 8, y + 4, axis_label(a, v), "end", "class=\"tick\"");
  }
  if (!label.empty()) {  // just left of the widest tick label
    double w = 0;
    for (double v : a.ticks) w = std::max(w, text_w(axis_label(a, v), 12));
    svg.s += fmt::format("<text transform=\"translate({},{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                         num(std::max(14.0, p.x - w - 22)), num(p.y + p.h / 2), esc(label));
  }
  svg.s += "</g>\n";
}

void draw_x_axis(Svg& svg, const Axis& a, const Box& p, const std::string& label) {
  svg.s += "<g class=\"x-axis\">\n";
  const double bottom = p.y + p.h;
  for (double v : a.minor_ticks) {
    const double x = p.x + p.w * a.t(v);
    svg.line(x, bottom, x, bottom + 3, "stroke=\"#444\"");
  }
  for (double v : a.ticks) {
    const double x = p.x + p.w * a.t(v);
    svg.line(x, p.y, x, bottom, "stroke=\"#e4e4e4\"");
    svg.line(x, bottom, x, bottom + 5, "stroke=\"#444\"");
    svg.text(x, bottom + 18, axis_label(a, v), "middle", "class=\"tick\"");
  }
  if (!label.empty()) svg.text(p.x + p.w / 2, kHeight - 10, label, "middle");
  svg.s += "</g>\n";
}

void draw_frame(Svg& svg, const Box& p) {
  svg.s += fmt::format(
      "<rect class=\"plot-area\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#444\"/>\n",
      num(p.x), num(p.y), num(p.w), num(p.h));
}

void no_data(Svg& svg, const Box& p) {
  svg.text(p.x + p.w / 2, p.y + p.h / 2, "no data", "middle", "fill=\"#888\" font-size=\"14\" class=\"no-data\"");
}

void check_series(const std::string& chart, const Series& s, size_t n_expected, bool need_x) {
  if (need_x && s.x.size() != s.y.size())
    fail("chart '{}': series '{}' has {} x values but {} y values", chart, s.name, s.x.size(), s.y.size());
  if (!need_x && s.y.size() != n_expected)
    fail("chart '{}': series '{}' has {} values but the chart has {} categories", chart, s.name, s.y.size(),
         n_expected);
  if (!s.y_err.empty() && s.y_err.size() != s.y.size())
    fail("chart '{}': series '{}' has {} error values but {} y values (give none or one per value)", chart, s.name,
         s.y_err.size(), s.y.size());
}

// Data range over finite values (and positive ones on a log axis); false when there is none.
struct Range {
  double lo = INFINITY, hi = -INFINITY;
  void add(double v) {
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return lo > hi; }
};
bool usable(double v, bool log) { return std::isfinite(v) && (!log || v > 0); }

}  // namespace

// ---------------------------------------------------------------- line chart

std::string to_svg(const LineChart& c) {
  for (const auto& s : c.series) check_series(c.title, s, 0, true);
  auto err_at = [](const Series& s, size_t i) {
    return s.y_err.empty() || !std::isfinite(s.y_err[i]) ? 0.0 : std::fabs(s.y_err[i]);
  };
  Range rx, ry;
  for (const auto& s : c.series)
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!usable(s.x[i], c.log_x) || !usable(s.y[i], c.log_y)) continue;
      rx.add(s.x[i]);
      const double e = err_at(s, i);
      ry.add(c.log_y && s.y[i] - e <= 0 ? s.y[i] : s.y[i] - e);
      ry.add(s.y[i] + e);
    }
  const bool empty = rx.empty();
  if (empty) {  // axes without data still show what they would measure
    rx = c.log_x ? Range{1, 10} : Range{0, 1};
    ry = c.log_y ? Range{1, 10} : Range{0, 1};
  }
  const Axis ax = c.log_x ? log_axis(rx.lo, rx.hi) : linear_axis(rx.lo, rx.hi, 8, true, c.x_integer ? 1 : 0);
  const Axis ay = c.log_y ? log_axis(ry.lo, ry.hi) : linear_axis(ry.lo, ry.hi, 6, true);

  double label_w = 0;  // the left margin fits the longest y tick label
  for (double v : ay.ticks) label_w = std::max(label_w, text_w(axis_label(ay, v), 12));
  const double left = 34 + label_w + 8, right = 24;
  const double top = c.title.empty() ? 16 : 36;
  const double leg = legend_height(c.series, kWidth - left - right);
  const Box p{left, top + leg, kWidth - left - right, kHeight - top - leg - 48};
  auto px = [&](double x) { return p.x + p.w * ax.t(x); };
  auto py = [&](double y) { return p.y + p.h * (1 - ay.t(y)); };

  Svg svg;
  svg.open(c.title);
  draw_legend(svg, c.series, p, top, false);
  draw_y_axis(svg, ay, p, c.y_label);
  draw_x_axis(svg, ax, p, c.x_label);
  svg.s += fmt::format("<clipPath id=\"plot-clip\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/></clipPath>\n",
                       num(p.x - 4), num(p.y - 4), num(p.w + 8), num(p.h + 8));
  svg.s += "<g clip-path=\"url(#plot-clip)\">\n";
  for (size_t k = 0; k < c.series.size(); ++k) {
    const Series& s = c.series[k];
    const char* col = series_colour(k);
    // Contiguous runs of usable points: a skipped value breaks the line (a gap, not a jump).
    std::vector<std::vector<size_t>> runs(1);
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (usable(s.x[i], c.log_x) && usable(s.y[i], c.log_y)) runs.back().push_back(i);
      else if (!runs.back().empty()) runs.emplace_back();
    }
    if (runs.back().empty()) runs.pop_back();
    if (!s.y_err.empty())
      for (const auto& r : runs) {
        std::string pts;
        for (size_t i : r) pts += num(px(s.x[i])) + "," + num(py(s.y[i] + err_at(s, i))) + " ";
        for (auto it = r.rbegin(); it != r.rend(); ++it) {
          const double lo = s.y[*it] - err_at(s, *it);
          pts += num(px(s.x[*it])) + "," + num(py(usable(lo, c.log_y) ? lo : s.y[*it])) + " ";
        }
        pts.pop_back();
        svg.s += fmt::format("<polygon class=\"band\" points=\"{}\" fill=\"{}\" fill-opacity=\"0.2\" stroke=\"none\"/>\n",
                             pts, col);
      }
    std::string d;
    for (const auto& r : runs)  // one-point runs have no line: they get a dot below
      for (size_t j = 0; j < r.size() && r.size() > 1; ++j) d += fmt::format("{}{},{} ", j ? "L" : "M", num(px(s.x[r[j]])), num(py(s.y[r[j]])));
    if (!d.empty()) {
      d.pop_back();
      svg.s += fmt::format(
          "<path class=\"series\" data-series=\"{}\" d=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
          "stroke-linejoin=\"round\"{}/>\n",
          esc(s.name), d, col, series_dash(k));
    }
    // Dots on sparse series (a few evaluations read better as points), on every series when asked,
    // and always on isolated points (a one-point run has no line to show).
    size_t n_points = 0;
    for (const auto& r : runs) n_points += r.size();
    const bool dots = c.markers || n_points <= kAutoMarkerPoints;
    for (const auto& r : runs)
      if (dots || r.size() == 1)
        for (size_t i : r)
          svg.s += fmt::format("<circle class=\"marker\" cx=\"{}\" cy=\"{}\" r=\"3.5\" fill=\"{}\"><title>{}: ({}, {})</title></circle>\n",
                               num(px(s.x[i])), num(py(s.y[i])), col, esc(s.name), short_value(s.x[i]),
                               short_value(s.y[i]));
  }
  svg.s += "</g>\n";
  draw_frame(svg, p);
  if (empty) no_data(svg, p);
  return svg.close();
}

// ---------------------------------------------------------------- bar chart

std::string to_svg(const BarChart& c) {
  for (const auto& s : c.series) check_series(c.title, s, c.categories.size(), false);
  Range r;
  for (const auto& s : c.series)
    for (size_t i = 0; i < s.y.size(); ++i) {
      if (!std::isfinite(s.y[i])) continue;
      const double e = s.y_err.empty() || !std::isfinite(s.y_err[i]) ? 0.0 : std::fabs(s.y_err[i]);
      r.add(s.y[i] - e);
      r.add(s.y[i] + e);
    }
  const bool empty = r.empty();
  for (const auto& [name, v] : c.ref_lines)
    if (std::isfinite(v)) r.add(v);
  if (r.empty()) r = Range{0, 1};
  double floor = c.y_min;
  if (!std::isfinite(floor)) {
    // Start at 0 when the data are not far from it (bar lengths are then proportional); otherwise
    // below the smallest value by a fraction of the spread, so differences between bars are visible.
    if (r.lo >= 0 && r.lo <= 0.5 * r.hi) floor = 0;
    else if (r.hi <= 0) floor = r.lo - 0.05 * std::max(r.hi - r.lo, std::fabs(r.lo));
    else floor = r.lo - 0.25 * std::max(r.hi - r.lo, std::fabs(r.hi) * 0.02);
  }
  // Headroom above the tallest bar for its value label, then whole ticks at both ends; an explicit
  // y_min is kept as it is (ticks below it dropped).
  const double top_v = std::max(r.hi, floor);
  Axis ay = linear_axis(floor, top_v + 0.06 * (top_v - floor), 6, true);
  if (std::isfinite(c.y_min)) {
    ay.lo = c.y_min;
    std::erase_if(ay.ticks, [&](double t) { return t < c.y_min - ay.step * 1e-9; });
  }

  double label_w = 0;
  for (double v : ay.ticks) label_w = std::max(label_w, text_w(axis_label(ay, v), 12));
  double left = 34 + label_w + 8;
  const double right = 24, top = c.title.empty() ? 16 : 36;
  const size_t ncat = std::max<size_t>(c.categories.size(), 1), nser = std::max<size_t>(c.series.size(), 1);
  // Category labels rotate (-30 degrees, ending under their group) when they would overlap their
  // neighbours; the left margin then grows so that the first ones are not cut off.
  double cat_w = 0;
  for (const auto& name : c.categories) cat_w = std::max(cat_w, text_w(name, 12));
  const bool rotate = cat_w > (kWidth - left - right) / (double)ncat - 6;
  if (rotate) {
    const double group_w0 = (kWidth - left - right) / (double)ncat;
    for (size_t i = 0; i < c.categories.size(); ++i)
      left = std::max(left, 6 + 0.87 * text_w(c.categories[i], 12) - group_w0 * ((double)i + 0.5));
    left = std::min(left, kWidth / 3);
  }
  const double plot_w = kWidth - left - right, group_w = plot_w / (double)ncat;
  const double leg = legend_height(c.series, plot_w);
  const double bottom = rotate ? std::min(150.0, 20 + cat_w * 0.5 + 12) : 32;
  const Box p{left, top + leg, plot_w, kHeight - top - leg - bottom};
  auto py = [&](double y) { return p.y + p.h * (1 - std::clamp(ay.t(y), 0.0, 1.0)); };

  Svg svg;
  svg.open(c.title);
  draw_legend(svg, c.series, p, top, true);
  draw_y_axis(svg, ay, p, c.y_label);
  const double bar_w = group_w * 0.8 / (double)nser;
  const bool value_labels = bar_w >= text_w("0.0000", 10) && c.categories.size() * nser <= 40;
  for (size_t i = 0; i < c.categories.size(); ++i) {
    const double gx = p.x + group_w * (double)i;
    const double cx = gx + group_w / 2;
    if (rotate)
      svg.s += fmt::format("<text transform=\"translate({},{}) rotate(-30)\" text-anchor=\"end\">{}</text>\n", num(cx + 4),
                           num(p.y + p.h + 14), esc(c.categories[i]));
    else
      svg.text(cx, p.y + p.h + 18, c.categories[i], "middle", "class=\"category\"");
    for (size_t k = 0; k < c.series.size(); ++k) {
      const Series& s = c.series[k];
      if (!std::isfinite(s.y[i])) continue;
      const double x = gx + group_w * 0.1 + bar_w * (double)k;
      const double y0 = py(std::max(ay.lo, std::min(0.0, ay.hi))), y1 = py(s.y[i]);
      svg.s += fmt::format(
          "<rect class=\"bar\" data-series=\"{}\" data-category=\"{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" "
          "fill=\"{}\"><title>{} / {}: {}</title></rect>\n",
          esc(s.name), esc(c.categories[i]), num(x + 1), num(std::min(y0, y1)), num(std::max(bar_w - 2, 1.0)),
          num(std::fabs(y1 - y0)), series_colour(k), esc(s.name), esc(c.categories[i]), short_value(s.y[i]));
      const double e = s.y_err.empty() || !std::isfinite(s.y_err[i]) ? 0.0 : std::fabs(s.y_err[i]);
      const double bx = x + bar_w / 2;
      if (e > 0) {
        const double ya = py(s.y[i] - e), yb = py(s.y[i] + e), cap = std::min(bar_w * 0.25, 6.0);
        const std::string st = "stroke=\"#222\" stroke-width=\"1.2\" class=\"error-bar\"";
        svg.line(bx, ya, bx, yb, st);
        svg.line(bx - cap, ya, bx + cap, ya, st);
        svg.line(bx - cap, yb, bx + cap, yb, st);
      }
      if (value_labels)
        svg.text(bx, std::min(y1, py(s.y[i] + e)) - 4, short_value(s.y[i]), "middle",
                 "font-size=\"10\" fill=\"#333\" class=\"value\"");
    }
  }
  for (const auto& [name, v] : c.ref_lines) {
    if (!std::isfinite(v)) continue;
    const double y = py(v);
    svg.line(p.x, y, p.x + p.w, y, "class=\"ref-line\" stroke=\"#555\" stroke-width=\"1.2\" stroke-dasharray=\"6 4\"");
    svg.text(p.x + p.w - 4, y - 4, name, "end", "font-size=\"11\" fill=\"#333\" class=\"ref-label\"");
  }
  svg.line(p.x, p.y + p.h, p.x + p.w, p.y + p.h, "stroke=\"#444\"");
  svg.line(p.x, p.y, p.x, p.y + p.h, "stroke=\"#444\"");
  if (empty) no_data(svg, p);
  return svg.close();
}

// ---------------------------------------------------------------- heatmap

std::string to_svg(const Heatmap& h) {
  if (h.rows < 0 || h.cols < 0 || (int64_t)h.values.size() != h.rows * h.cols)
    fail("heatmap '{}': {} values for {} rows x {} columns (expected rows * cols, row-major)", h.title,
         h.values.size(), h.rows, h.cols);
  if (!h.row_labels.empty() && (int64_t)h.row_labels.size() != h.rows)
    fail("heatmap '{}': {} row labels for {} rows", h.title, h.row_labels.size(), h.rows);
  if (!h.col_labels.empty() && (int64_t)h.col_labels.size() != h.cols)
    fail("heatmap '{}': {} column labels for {} columns", h.title, h.col_labels.size(), h.cols);
  auto row_label = [&](int64_t r) { return h.row_labels.empty() ? std::to_string(r) : h.row_labels[r]; };
  auto col_label = [&](int64_t c) { return h.col_labels.empty() ? std::to_string(c) : h.col_labels[c]; };
  if (std::isfinite(h.scale_lo) != std::isfinite(h.scale_hi) ||
      (std::isfinite(h.scale_lo) && !(h.scale_lo <= h.scale_hi)))
    fail("heatmap '{}': colour scale [{}, {}]: give both ends, lo <= hi (or neither)", h.title, h.scale_lo, h.scale_hi);
  if (h.cell_decimals < -1 || h.cell_decimals > 6)
    fail("heatmap '{}': cell_decimals {} outside [-1, 6]", h.title, h.cell_decimals);
  Range r;
  for (double v : h.values)
    if (std::isfinite(v)) r.add(v);
  const bool empty = r.empty();
  if (empty) r = Range{0, 1};
  if (std::isfinite(h.scale_lo)) r = Range{h.scale_lo, h.scale_hi};
  const double span = r.hi - r.lo;
  auto t_of = [&](double v) { return span > 0 ? std::clamp((v - r.lo) / span, 0.0, 1.0) : 0.5; };
  auto cell_value = [&](double v) {
    return h.cell_decimals < 0 ? short_value(v) : fmt::format("{:.{}f}", v, h.cell_decimals);
  };

  double label_w = 0;
  for (int64_t i = 0; i < h.rows; ++i) label_w = std::max(label_w, text_w(row_label(i), 11));
  const double left = (h.y_label.empty() ? 12 : 34) + label_w + 8, right = 110;
  const double top = h.title.empty() ? 16 : 40;
  const Box p{left, top, kWidth - left - right, kHeight - top - 52};
  const double cw = h.cols ? p.w / (double)h.cols : p.w, ch = h.rows ? p.h / (double)h.rows : p.h;

  Svg svg;
  svg.open(h.title);
  svg.s += "<defs><pattern id=\"missing\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\">"
           "<rect width=\"6\" height=\"6\" fill=\"#ddd\"/><path d=\"M0,6 L6,0\" stroke=\"#999\"/></pattern></defs>\n";
  const bool cell_text = cw >= text_w(h.cell_decimals < 0 ? "0.000" : cell_value(r.hi), 10) + 4 && ch >= 14 &&
                         h.rows * h.cols <= 400;
  svg.s += "<g class=\"cells\">\n";
  for (int64_t i = 0; i < h.rows; ++i)
    for (int64_t j = 0; j < h.cols; ++j) {
      const double v = h.values[i * h.cols + j];
      const bool ok = std::isfinite(v);
      const Rgb rgb = viridis_rgb(ok ? t_of(v) : 0);
      // Cells overlap by a hair so that no background seam shows between them.
      svg.s += fmt::format(
          "<rect class=\"cell\" data-row=\"{}\" data-col=\"{}\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" "
          "fill=\"{}\"><title>{} {}, {} {}: {}</title></rect>\n",
          i, j, num(p.x + cw * (double)j), num(p.y + ch * (double)i), num(cw + 0.3), num(ch + 0.3),
          ok ? hex(rgb) : "url(#missing)", esc(h.y_label.empty() ? "row" : h.y_label), esc(row_label(i)),
          esc(h.x_label.empty() ? "column" : h.x_label), esc(col_label(j)), short_value(v));
      if (cell_text && ok) {
        // Dark text on the light (yellow-green) end, white on the dark end.
        const double lum = 0.2126 * rgb.r + 0.7152 * rgb.g + 0.0722 * rgb.b;
        svg.text(p.x + cw * ((double)j + 0.5), p.y + ch * ((double)i + 0.5) + 3.5, cell_value(v), "middle",
                 fmt::format("font-size=\"10\" fill=\"{}\"", lum > 140 ? "#000" : "#fff"));
      }
    }
  svg.s += "</g>\n";
  draw_frame(svg, p);
  // Labels, thinned so they never overlap: every k-th row / column.
  const int64_t row_every = std::max<int64_t>(1, (int64_t)std::ceil(14.0 / ch));
  for (int64_t i = 0; i < h.rows; i += row_every)
    svg.text(p.x - 6, p.y + ch * ((double)i + 0.5) + 4, row_label(i), "end", "font-size=\"11\" class=\"row-label\"");
  double col_w = 0;
  for (int64_t j = 0; j < h.cols; ++j) col_w = std::max(col_w, text_w(col_label(j), 11));
  const int64_t col_every = std::max<int64_t>(1, (int64_t)std::ceil((col_w + 6) / cw));
  for (int64_t j = 0; j < h.cols; j += col_every)
    svg.text(p.x + cw * ((double)j + 0.5), p.y + p.h + 16, col_label(j), "middle", "font-size=\"11\" class=\"col-label\"");
  if (!h.x_label.empty()) svg.text(p.x + p.w / 2, kHeight - 10, h.x_label, "middle");
  if (!h.y_label.empty())
    svg.s += fmt::format("<text transform=\"translate({},{}) rotate(-90)\" text-anchor=\"middle\">{}</text>\n",
                         num(18), num(p.y + p.h / 2), esc(h.y_label));

  // Colour bar: the same 9 anchors as the cells, bottom = minimum, top = maximum.
  const Box cb{p.x + p.w + 20, p.y, 16, p.h};
  svg.s += "<defs><linearGradient id=\"cmap\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">";
  for (size_t k = 0; k < kViridis.size(); ++k)
    svg.s += fmt::format("<stop offset=\"{}\" stop-color=\"{}\"/>", num((double)k / (double)(kViridis.size() - 1)),
                         hex(kViridis[k]));
  svg.s += "</linearGradient></defs>\n";
  svg.s += fmt::format(
      "<rect class=\"colorbar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"url(#cmap)\" stroke=\"#444\"/>\n",
      num(cb.x), num(cb.y), num(cb.w), num(cb.h));
  if (!empty) {
    const Axis a = linear_axis(r.lo, r.hi, 5, false);
    // A constant map has one colour: one tick, at the middle of the bar.
    const std::vector<double> ticks = span > 0 ? a.ticks : std::vector<double>{r.lo};
    for (double v : ticks) {
      const double y = cb.y + cb.h * (1 - (span > 0 ? a.t(v) : 0.5));
      svg.line(cb.x + cb.w, y, cb.x + cb.w + 4, y, "stroke=\"#444\"");
      svg.text(cb.x + cb.w + 7, y + 4, span > 0 ? axis_label(a, v) : short_value(v), "start",
               "font-size=\"11\" class=\"tick\"");
    }
  }
  if (!h.value_label.empty())
    svg.s += fmt::format("<text transform=\"translate({},{}) rotate(90)\" text-anchor=\"middle\">{}</text>\n",
                         num(kWidth - 16), num(cb.y + cb.h / 2), esc(h.value_label));
  if (empty) no_data(svg, p);
  return svg.close();
}

void write_svg(const std::string& path, const std::string& svg) { write_file_atomic(path, svg); }

}  // namespace dsmoe::report
