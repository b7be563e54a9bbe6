#pragma once

// The hang watchdog of the training thread (internal): a thread of its own that knows when the
// current step began and how long steps take. The step's deadline is k × p99 of the last 100
// steps, never under the floor (three floors until 5 steps were seen: the first steps build
// caches). Past it, a training thread that is not waiting on a collective is stuck in its own
// work: `on_stuck` runs (once) on the watchdog's thread with what each thread of the process
// is doing. One waiting on a collective waits for a peer, whose own watchdog (or heartbeat)
// answers for it.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

namespace tenax::detail {

class HangWatch {
 public:
  using Clock = std::chrono::steady_clock;
  // `waiting` is the training thread's communication_waits() flag.
  HangWatch(double k, std::chrono::milliseconds floor,
            std::shared_ptr<const std::atomic<int>> waiting,
            std::function<void(const std::string& report)> on_stuck);
  ~HangWatch();
  HangWatch(const HangWatch&) = delete;
  HangWatch& operator=(const HangWatch&) = delete;

  void step_started();
  void step_ended();
  // The deadline of the step in progress.
  std::chrono::milliseconds deadline() const;

  // "tid 1234 (llama_train) state S wchan futex_wait_queue" per thread of this process.
  static std::string threads_report();

 private:
  void loop();

  const double k_;
  const std::chrono::milliseconds floor_;
  const std::shared_ptr<const std::atomic<int>> waiting_;
  const std::function<void(const std::string&)> on_stuck_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Protected by mu_:
  bool stop_ = false, in_step_ = false, fired_ = false;
  Clock::time_point started_;
  std::deque<double> durations_;  // seconds, the last 100 steps
  std::thread thread_;            // last: starts once the members above exist
};

}  // namespace tenax::detail
