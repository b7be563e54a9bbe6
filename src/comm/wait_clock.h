#pragma once

// Accounting for communication_wait_time(): a WaitClock adds the time it was alive to the
// process-wide total. Backends hold one for the duration of every Work::wait.

#include <chrono>

namespace tenax::detail {

void add_communication_wait(std::chrono::nanoseconds elapsed);
// +1 / -1 on the calling thread's communication_waits() count.
void mark_communication_wait(int delta);

class WaitClock {
 public:
  WaitClock() : start_(std::chrono::steady_clock::now()) { mark_communication_wait(1); }
  ~WaitClock() {
    mark_communication_wait(-1);
    add_communication_wait(std::chrono::steady_clock::now() - start_);
  }
  WaitClock(const WaitClock&) = delete;
  WaitClock& operator=(const WaitClock&) = delete;

 private:
  std::chrono::steady_clock::time_point start_;
};

// Marks the calling thread as waiting on others (its communication_waits() count) while alive,
// without adding to communication_wait_time(): held for a store call, which may wait on other
// members (a rendezvous, a key another rank sets) or on the store's host. The hang watch leaves
// such a wait to the store's own timeout.
class WaitMark {
 public:
  WaitMark() { mark_communication_wait(1); }
  ~WaitMark() { mark_communication_wait(-1); }
  WaitMark(const WaitMark&) = delete;
  WaitMark& operator=(const WaitMark&) = delete;
};

}  // namespace tenax::detail
