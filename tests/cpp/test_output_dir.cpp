// io/output_dir.h (what an --out folder may be, and the atomic swap) and core/progress.h (plain
// lines in a pipe, one redrawn line fitted to the width in a terminal), as library units; the
// commands that use them are tested end to end in test_cli_safety.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/progress.h"
#include "io/output_dir.h"
#include "test_util.h"

using namespace dsmoe;
namespace fs = std::filesystem;

namespace {

std::string fresh(const std::string& name) {
  const std::string d = test::tmp_path("outdir_" + name);
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void put(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }
std::string get(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

OutputRequest request(const std::string& dir, bool force = false) {
  OutputRequest r;
  r.dir = dir;
  r.command = "export";
  r.replaces = {"export"};
  r.force = force;
  return r;
}

// What a Progress wrote to a stream.
std::string drawn(FILE* f) {
  std::fflush(f);
  std::rewind(f);
  std::string s;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  return s;
}

}  // namespace

TEST(OutputDir, WhatMayBeWritten) {
  const std::string root = fresh("states");
  EXPECT_EQ(check_output_dir(request(root + "/new")), OutputState::Missing);
  fs::create_directories(root + "/empty");
  EXPECT_EQ(check_output_dir(request(root + "/empty")), OutputState::Empty);
  fs::create_directories(root + "/mine");
  put(root + "/mine/a.txt", "a");
  EXPECT_THROW(check_output_dir(request(root + "/mine", true)), UsageError);
  put(root + "/file", "x");
  EXPECT_THROW(check_output_dir(request(root + "/file", true)), UsageError);
  fs::create_directories(root + "/prev");
  write_output_marker(root + "/prev", "export");
  EXPECT_THROW(check_output_dir(request(root + "/prev")), UsageError) << "replaced without --force";
  EXPECT_EQ(check_output_dir(request(root + "/prev", true)), OutputState::Replaceable);
  fs::create_directories(root + "/other");
  write_output_marker(root + "/other", "prepare");
  EXPECT_THROW(check_output_dir(request(root + "/other", true)), UsageError) << "another command's output";
  // Overlap with an input, whatever --force says.
  OutputRequest r = request(root + "/prev", true);
  for (const std::string& in : {root + "/prev", root + "/prev/sub", root})
    EXPECT_THROW(check_disjoint(root + "/prev", {in}, "--out"), UsageError) << in;
  r.inputs = {root + "/mine"};
  EXPECT_NO_THROW(check_output_dir(r));
}

TEST(OutputDir, StagedOutputSwapsAtomicallyAndCleansUp) {
  const std::string root = fresh("staged");
  const std::string out = root + "/m";
  std::string staging;
  {
    StagedOutput s(request(out));
    staging = s.path();
    EXPECT_FALSE(fs::exists(out)) << "written before commit";
    put(staging + "/w.bin", "one");
    s.commit();
  }
  EXPECT_EQ(get(out + "/w.bin"), "one");
  EXPECT_EQ(output_marker_command(out), "export");
  EXPECT_FALSE(fs::exists(staging));
  {  // a failed write: the previous output stays as it was, the staging folder goes
    StagedOutput s(request(out, true));
    staging = s.path();
    put(staging + "/w.bin", "two");
  }
  EXPECT_EQ(get(out + "/w.bin"), "one");
  EXPECT_FALSE(fs::exists(staging));
  {
    StagedOutput s(request(out, true));
    put(s.path() + "/w.bin", "three");
    s.commit();
  }
  EXPECT_EQ(get(out + "/w.bin"), "three");
  size_t entries = 0;
  for (auto it = fs::directory_iterator(root); it != fs::directory_iterator(); ++it) ++entries;
  EXPECT_EQ(entries, 1u) << "something was left beside the output";
}

TEST(OutputDir, LeftoversOfAKilledCommandAreRecovered) {
  const std::string root = fresh("leftovers");
  // PID 2^22 + 7 is above Linux's pid_max default range for live processes in this sandbox.
  const std::string dead = std::to_string((1 << 22) + 7);
  fs::create_directories(root + "/.m.staging-" + dead);
  put(root + "/.m.staging-" + dead + "/half.bin", "x");
  fs::create_directories(root + "/.m.old-" + dead);  // killed between moving the old one aside and renaming in
  write_output_marker(root + "/.m.old-" + dead, "export");
  put(root + "/.m.old-" + dead + "/w.bin", "previous");
  EXPECT_EQ(check_output_dir(request(root + "/m", true)), OutputState::Replaceable);
  EXPECT_EQ(get(root + "/m/w.bin"), "previous") << "the moved-aside output was not put back";
  EXPECT_FALSE(fs::exists(root + "/.m.staging-" + dead));
  // A live process's staging folder is never touched.
  const std::string live = std::to_string(getpid());
  fs::create_directories(root + "/.m.staging-" + live);
  check_output_dir(request(root + "/m", true));
  EXPECT_TRUE(fs::exists(root + "/.m.staging-" + live));
}

TEST(Progress, PlainLinesInAPipe) {
  FILE* f = std::tmpfile();
  ProgressOptions o;
  o.stream = f;
  o.terminal = 0;
  o.plain_interval_s = 1e9;  // only the first and forced updates print
  {
    Progress p("score", 100, "tok", o);
    p.update(10);
    p.update(20);
    p.update(50, "half", true);
    p.finish("done");
  }
  const std::string s = drawn(f);
  std::fclose(f);
  EXPECT_EQ(s.find('\r'), std::string::npos) << s;
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 3) << s;
  EXPECT_NE(s.find("score 10/100 tok (10%)"), std::string::npos) << s;
  EXPECT_EQ(s.find("score 20/100"), std::string::npos) << "an update inside the interval printed\n" << s;
  EXPECT_NE(s.find("score 50/100 tok (50%)"), std::string::npos) << s;
  EXPECT_NE(s.find("| half"), std::string::npos) << s;
  EXPECT_NE(s.find("| ETA "), std::string::npos) << s;
  EXPECT_NE(s.find("score 50/100 tok in "), std::string::npos) << s;
  EXPECT_NE(s.find("| done\n"), std::string::npos) << s;
}

TEST(Progress, OneRedrawnLineFittedToTheTerminal) {
  FILE* f = std::tmpfile();
  ProgressOptions o;
  o.stream = f;
  o.terminal = 1;
  o.width = 30;
  o.redraw_interval_s = 0;
  {
    Progress p("train", 1000, "", o);
    p.update(1, "a long detail that cannot fit in thirty columns");
    p.update(2, "short");
    p.finish();
  }
  const std::string s = drawn(f);
  std::fclose(f);
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 1) << "a redrawn line ends once\n" << s;
  size_t start = 0;
  while ((start = s.find('\r', start)) != std::string::npos) {
    const size_t end = s.find_first_of("\r\n", start + 1);
    std::string line = s.substr(start + 1, end - start - 1);
    if (const size_t k = line.find("\x1b[K"); k != std::string::npos) line.erase(k);
    // 29 columns: the terminal's last one stays free; "…" is 3 bytes, one column
    size_t cols = 0;
    for (unsigned char c : line) cols += (c & 0xC0) != 0x80;
    EXPECT_LE(cols, 29u) << "'" << line << "'";
    start = end;
  }
  EXPECT_EQ(Progress::fit("abcdef", 4), "abc\xE2\x80\xA6");
  EXPECT_EQ(Progress::fit("abcd", 4), "abcd");
  EXPECT_EQ(Progress::fit("\xC3\xA9\xC3\xA9\xC3\xA9", 2), "\xC3\xA9\xE2\x80\xA6") << "cut inside a UTF-8 sequence";
  EXPECT_EQ(Progress::duration(5.25), "5.2s");
  EXPECT_EQ(Progress::duration(185), "3m05s");
  EXPECT_EQ(Progress::duration(3720), "1h02m");
  EXPECT_EQ(Progress::duration(-1), "?");
}
