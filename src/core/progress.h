// Progress of long work, on stderr: in a terminal one line redrawn in place and fitted to the
// terminal's width; in a pipe or a file one plain line per update (no carriage returns), at most one
// every few seconds unless the caller forces it (train prints each logged step).
//
//   Progress p("score", n_tokens, "tok");
//   for (...) p.update(done);               // "score 1200/5000 tok (24%) | 3100 tok/s | ETA 1s"
//   p.finish();                              // "score 5000/5000 tok in 1.6s (3125 tok/s)"
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace dsmoe {

struct ProgressOptions {
  bool enabled = true;
  int terminal = -1;            // 1: redraw in place, 0: plain lines, -1: decide from isatty(stream)
  int width = 0;                // columns in a terminal (0: ask the terminal, else $COLUMNS, else 80)
  double plain_interval_s = 5;  // plain lines at most this often (forced updates excepted)
  double redraw_interval_s = 0.1;
  bool show_rate = true;        // append "N unit/s" computed from the updates
  bool show_eta = true;         // append "ETA ..." from the rate so far
  FILE* stream = stderr;
};

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "", ProgressOptions o = {});
  ~Progress();  // ends a redrawn line with a newline if finish() was not called

  // done: amount finished so far (of `total`; total <= 0 means unknown). detail: text shown after
  // the counts. Draws when due, or now when force.
  void update(int64_t done, const std::string& detail = "", bool force = false);
  // Work resumed at `done` (rate and ETA count from there) that ends at `end` (<= total).
  void start_at(int64_t done, int64_t end);
  // Records the amount done without drawing (finish() then reports it).
  void set_done(int64_t done) { done_ = done; }
  // A last line with the elapsed time (and `summary`), replacing the redrawn one.
  void finish(const std::string& summary = "");
  // Prints a message without breaking the redrawn line (the line is redrawn after it).
  void message(const std::string& text);

  bool terminal() const { return terminal_; }
  double elapsed_s() const;

  // "42s", "3m05s", "1h02m"; "?" for negative or non-finite values.
  static std::string duration(double seconds);
  // Cuts `line` to at most `width` display columns (UTF-8 aware; an ellipsis marks the cut).
  static std::string fit(const std::string& line, int width);

 private:
  void draw(const std::string& line);
  int columns() const;

  std::string label_, unit_;
  int64_t total_;
  ProgressOptions o_;
  bool terminal_ = false, open_line_ = false, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool drawn_once_ = false;
  std::string last_line_;
  int64_t done_ = 0, base_ = 0, end_ = 0;
};

// True when the stream is a terminal.
bool is_terminal(FILE* stream);

}  // namespace dsmoe
