#pragma once

// Accounting for communication_wait_time(): a WaitClock adds the time it was alive to the
// process-wide total. Backends hold one for the duration of every Work::wait.

#include <chrono>

namespace tenax::detail {

void add_communication_wait(std::chrono::nanoseconds elapsed);

class WaitClock {
 public:
  WaitClock() : start_(std::chrono::steady_clock::now()) {}
  ~WaitClock() { add_communication_wait(std::chrono::steady_clock::now() - start_); }
  WaitClock(const WaitClock&) = delete;
  WaitClock& operator=(const WaitClock&) = delete;

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace tenax::detail
