// SIGINT / SIGTERM as a request to stop at the next safe point (training saves a checkpoint there).
// While a guard lives, the first signal only sets a flag; the handler then restores the default
// action, so a second Ctrl-C ends the process at once (the atomic checkpoint writer keeps the
// previous checkpoint loadable either way).
#pragma once

namespace dsmoe {

class InterruptGuard {
 public:
  InterruptGuard();   // installs the handlers (and clears an earlier request)
  ~InterruptGuard();  // restores the previous handlers
  InterruptGuard(const InterruptGuard&) = delete;
  InterruptGuard& operator=(const InterruptGuard&) = delete;
};

// The signal received since the guard was installed, or 0.
int interrupt_requested();

}  // namespace dsmoe
