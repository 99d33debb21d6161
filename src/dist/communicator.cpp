#include "dist/communicator.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "core/error.h"

namespace dsmoe {

void SingleProcessCommunicator::all_to_all(const int64_t* send, int64_t* recv, int64_t per_rank) {
  if (send != recv) std::memmove(recv, send, sizeof(int64_t) * (size_t)per_rank);
}

void SingleProcessCommunicator::all_to_allv(const float* send, const int64_t* send_counts, float* recv,
                                            const int64_t* recv_counts) {
  DSMOE_ASSERT(send_counts[0] == recv_counts[0], "all_to_allv: sending {} floats to itself, expecting {}",
               send_counts[0], recv_counts[0]);
  if (send != recv) std::memmove(recv, send, sizeof(float) * (size_t)send_counts[0]);
}

void SingleProcessCommunicator::all_gather(const int64_t* send, int64_t* recv, int64_t n) {
  if (send != recv) std::memmove(recv, send, sizeof(int64_t) * (size_t)n);
}

namespace {
double g_timeout = kDefaultCollectiveTimeout;
CollectiveClock g_clock;
bool g_split_waiting = false;
}  // namespace

void set_collective_timeout(double seconds) {
  if (!(seconds >= 0 && seconds <= 1e6)) fail("collective timeout {} s is outside [0, 1e6] (0 = none)", seconds);
  g_timeout = seconds;
}
double collective_timeout() { return g_timeout; }
CollectiveClock collective_clock() { return g_clock; }
void add_collective_time(double seconds, double waiting) {
  g_clock.seconds += seconds;
  g_clock.waiting += waiting;
  g_clock.calls++;
}
void set_split_collective_waiting(bool on) { g_split_waiting = on; }
bool split_collective_waiting() { return g_split_waiting; }

static std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  return lines;
}

void check_same_on_all_ranks(Communicator& comm, const std::string& text, const std::string& what) {
  if (comm.size() == 1) return;
  // Rank 0's text to everyone; each rank compares, then all learn the first rank that differs.
  int64_t len = (int64_t)text.size();
  comm.broadcast(&len, sizeof len, 0);
  std::string root(len, '\0');
  if (comm.rank() == 0) root = text;
  comm.broadcast(root.data(), len, 0);
  int64_t line = -1;  // first differing line (0-based) of this rank, -1: same
  if (root != text) {
    const auto a = split_lines(root), b = split_lines(text);
    line = 0;
    while (line < (int64_t)std::min(a.size(), b.size()) && a[line] == b[line]) ++line;
  }
  std::vector<int64_t> lines((size_t)comm.size());
  comm.all_gather(&line, lines.data(), 1);
  for (int r = 0; r < comm.size(); ++r) {
    if (lines[(size_t)r] < 0) continue;
    // The first rank that differs says its own line to everyone, so that every rank's message shows both.
    const int64_t l = lines[(size_t)r];
    std::string theirs;
    if (comm.rank() == r) {
      const auto b = split_lines(text);
      theirs = l < (int64_t)b.size() ? b[(size_t)l] : std::string("<end>");
    }
    int64_t n = (int64_t)theirs.size();
    comm.broadcast(&n, sizeof n, r);
    theirs.resize((size_t)n);
    comm.broadcast(theirs.data(), n, r);
    const auto a = split_lines(root);
    fail("the ranks disagree on {}: rank {}'s differs from rank 0's at line {} (rank 0 has '{}', rank {} has '{}'); "
         "every rank must be started with the same {}",
         what, r, l + 1, l < (int64_t)a.size() ? a[(size_t)l] : std::string("<end>"), r, theirs, what);
  }
}

}  // namespace dsmoe
