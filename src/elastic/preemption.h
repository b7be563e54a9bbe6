#pragma once

// Graceful preemption: while a PreemptionSignal lives, SIGTERM no longer ends the process but
// is recorded, for the training loop to act on at a step boundary. Internal.

#include <csignal>

namespace tenax::detail {

class PreemptionSignal {
 public:
  // Installs the handler (the previous disposition is kept and restored).
  PreemptionSignal();
  ~PreemptionSignal();
  PreemptionSignal(const PreemptionSignal&) = delete;
  PreemptionSignal& operator=(const PreemptionSignal&) = delete;

  // The signal received since install, 0 when none. Async-signal-safe to set, cheap to read.
  static int received();

 private:
  struct sigaction previous_ {};
};

}  // namespace tenax::detail
