#pragma once

// The hang watchdog of the training thread (internal): a thread of its own that knows which
// phase the training thread is in (a step, and inside it a checkpoint save or an evaluation:
// tenax::PhaseScope) and how long each phase takes. A phase's deadline is k × p99 of its last
// 100 durations, never under the floor (three floors until 5 were seen: the first steps build
// caches, evaluations are rare); a step's time excludes the phases nested in it. Past it, a
// training thread that is not waiting on a collective is stuck in its own work: `on_stuck`
// runs (once) on the watchdog's thread with what each thread of the process is doing. One
// waiting on a collective waits for a peer, whose own watchdog (or heartbeat) answers for it.

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tenax/health/health.h"

namespace tenax::detail {

class HangWatch {
 public:
  using Clock = std::chrono::steady_clock;
  // `waiting` is the training thread's communication_waits() flag. The newest HangWatch is the
  // one PhaseScope reports to.
  HangWatch(double k, std::chrono::milliseconds floor,
            std::shared_ptr<const std::atomic<int>> waiting,
            std::function<void(const std::string& report)> on_stuck);
  ~HangWatch();
  HangWatch(const HangWatch&) = delete;
  HangWatch& operator=(const HangWatch&) = delete;

  void step_started() { phase_started(Phase::kStep); }
  void step_ended() { phase_ended(Phase::kStep); }
  void phase_started(Phase phase);
  void phase_ended(Phase phase);
  // The deadline of `phase` now.
  std::chrono::milliseconds deadline(Phase phase = Phase::kStep) const;

  // The watch PhaseScope reports to (null when none runs).
  static HangWatch* current();

  // "tid 1234 (llama_train) state S in futex_wait_queue" per thread of this process; `marked`
  // gets " <- the training thread".
  static std::string threads_report(long marked = 0);

 private:
  struct Open {
    Phase phase;
    Clock::time_point started;
    Clock::duration nested{0};  // time in phases nested in it (not its own)
  };
  void loop();
  std::chrono::milliseconds deadline_locked(Phase phase) const;

  const double k_;
  const std::chrono::milliseconds floor_;
  const std::shared_ptr<const std::atomic<int>> waiting_;
  const std::function<void(const std::string&)> on_stuck_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Protected by mu_:
  bool stop_ = false, fired_ = false;
  long training_tid_ = 0;
  std::vector<Open> open_;                       // the phases in progress, outermost first
  std::array<std::deque<double>, 3> durations_;  // seconds, the last 100 of each phase
  std::thread thread_;                           // last: starts once the members above exist
};

}  // namespace tenax::detail
