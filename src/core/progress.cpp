#include "core/progress.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fmt/format.h>

namespace dsmoe {

using Clock = std::chrono::steady_clock;

bool is_terminal(FILE* stream) { return stream && ::isatty(::fileno(stream)) == 1; }

Progress::Progress(std::string label, int64_t total, std::string unit, ProgressOptions o)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), o_(o) {
  terminal_ = o_.terminal < 0 ? is_terminal(o_.stream) : o_.terminal == 1;
  end_ = total_;
  start_ = last_draw_ = Clock::now();
}

void Progress::start_at(int64_t done, int64_t end) {
  base_ = done_ = done;
  end_ = end;
  start_ = Clock::now();
}

Progress::~Progress() {
  if (open_line_) std::fputc('\n', o_.stream);
}

double Progress::elapsed_s() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

std::string Progress::duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  if (s < 10) return fmt::format("{:.1f}s", s);
  const int64_t t = (int64_t)std::llround(s);
  if (t >= 3600) return fmt::format("{}h{:02d}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02d}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

std::string Progress::fit(const std::string& line, int width) {
  if (width <= 0) return "";
  // Columns = code points here (progress lines are ASCII apart from names the user chose).
  int cols = 0;
  size_t i = 0, cut = std::string::npos;
  while (i < line.size()) {
    if (cols == width - 1 && cut == std::string::npos) cut = i;
    const unsigned char c = (unsigned char)line[i];
    const size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    i += len;
    if (++cols > width) return line.substr(0, cut) + "\xE2\x80\xA6";  // "…"
  }
  return line;
}

int Progress::columns() const {
  if (o_.width > 0) return o_.width;
  struct winsize ws {};
  if (::ioctl(::fileno(o_.stream), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  if (const char* c = std::getenv("COLUMNS")) {
    const int v = std::atoi(c);
    if (v > 0) return v;
  }
  return 80;
}

void Progress::draw(const std::string& line) {
  last_line_ = line;
  if (terminal_) {
    // One column is left free: writing the last column makes some terminals wrap.
    std::fprintf(o_.stream, "\r%s\x1b[K", fit(line, columns() - 1).c_str());
    open_line_ = true;
  } else {
    std::fprintf(o_.stream, "%s\n", line.c_str());
  }
  std::fflush(o_.stream);
}

void Progress::update(int64_t done, const std::string& detail, bool force) {
  done_ = done;
  if (!o_.enabled || finished_) return;
  const auto now = Clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  const double interval = terminal_ ? o_.redraw_interval_s : o_.plain_interval_s;
  if (!force && drawn_once_ && since < interval) return;
  last_draw_ = now;
  drawn_once_ = true;
  const double el = elapsed_s();
  std::string line = label_;
  if (total_ > 0) {
    line += fmt::format(" {}/{}", done, total_);
    if (!unit_.empty()) line += " " + unit_;
    line += fmt::format(" ({:.0f}%)", 100.0 * (double)done / (double)total_);
  } else {
    line += fmt::format(" {}", done);
    if (!unit_.empty()) line += " " + unit_;
  }
  const int64_t run = done - base_;
  if (o_.show_rate && el > 0 && run > 0) line += fmt::format(" | {:.0f} {}/s", (double)run / el, unit_.empty() ? "it" : unit_);
  if (!detail.empty()) line += " | " + detail;
  if (o_.show_eta && end_ > 0 && run > 0 && done < end_) line += " | ETA " + duration(el * (double)(end_ - done) / (double)run);
  draw(line);
}

void Progress::message(const std::string& text) {
  if (open_line_) {
    std::fprintf(o_.stream, "\r\x1b[K%s\n", text.c_str());
    std::fflush(o_.stream);
    if (!last_line_.empty()) draw(last_line_);
  } else {
    std::fprintf(o_.stream, "%s\n", text.c_str());
    std::fflush(o_.stream);
  }
}

void Progress::finish(const std::string& summary) {
  if (finished_) return;
  finished_ = true;
  if (!o_.enabled) return;
  const double el = elapsed_s();
  std::string line = label_;
  if (total_ > 0) line += fmt::format(" {}/{}", done_, total_);
  else line += fmt::format(" {}", done_);
  if (!unit_.empty()) line += " " + unit_;
  line += " in " + duration(el);
  if (o_.show_rate && el > 0 && done_ > base_)
    line += fmt::format(" ({:.0f} {}/s)", (double)(done_ - base_) / el, unit_.empty() ? "it" : unit_);
  if (!summary.empty()) line += " | " + summary;
  if (terminal_) {
    std::fprintf(o_.stream, "\r%s\x1b[K\n", fit(line, columns() - 1).c_str());
  } else {
    std::fprintf(o_.stream, "%s\n", line.c_str());
  }
  open_line_ = false;
  std::fflush(o_.stream);
}

}  // namespace dsmoe
