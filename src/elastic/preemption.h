#pragma once

// Graceful preemption: a process-wide request to stop at the next step boundary, set by
// ElasticRunner::preempt() or, while a SigtermHandler lives, by SIGTERM. Internal.

#include <csignal>

namespace tenax::detail {

// What ElasticRunner::preempt() records (above every signal number).
inline constexpr int kPreemptCall = 1 << 16;

// Sets the request (async-signal-safe): `cause` > 0 is what asked, a signal number (SIGTERM for
// the handler) or kPreemptCall.
void request_preemption(int cause) noexcept;
// What asked since the last clear, 0 when nothing did. Cheap; any thread.
int preemption_requested() noexcept;
void clear_preemption() noexcept;

// While one lives, SIGTERM requests preemption instead of ending the process, then calls the
// handler installed before (a function, not SIG_DFL or SIG_IGN). The destructor puts that
// handler back. One at a time per process; constructed and destroyed on one thread.
class SigtermHandler {
 public:
  SigtermHandler();
  ~SigtermHandler();
  SigtermHandler(const SigtermHandler&) = delete;
  SigtermHandler& operator=(const SigtermHandler&) = delete;

 private:
  struct sigaction previous_ {};
};

}  // namespace tenax::detail
