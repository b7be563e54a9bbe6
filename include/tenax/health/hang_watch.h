#pragma once

// The hang watchdog: a thread of its own that knows which phase each watched thread
// is in (tenax::PhaseScope: the training thread's steps, saves, evaluations and rendezvous, the
// checkpoint engine's persists on its thread) and how long each phase takes. A phase's deadline
// is k × p99 of its last 100 durations, never under the floor (three floors until 5 were seen:
// the first steps build caches, evaluations and persists are rare); a phase's time excludes the
// phases nested in it on the same thread. Past it, a thread that is not waiting on others (a
// collective, a store call: its communication_waits() flag) is stuck in its own work:
// `on_stuck` runs (once) on the watchdog's thread with what each thread of the process is doing.
// One waiting on a collective waits for a peer, whose own watchdog (or heartbeat) answers for
// it; one waiting on the store or a remote service, for that call's timeout.

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tenax/core/export.h"
#include "tenax/core/phase.h"
#include "tenax/health/health.h"

namespace tenax {

class TENAX_API HangWatch : public PhaseObserver {
 public:
  using Clock = std::chrono::steady_clock;
  // `waiting` is the constructing (training) thread's communication_waits() flag; another
  // thread's phases are judged by its own flag. The newest HangWatch is the one PhaseScope
  // reports to.
  HangWatch(double k, std::chrono::milliseconds floor,
            std::shared_ptr<const std::atomic<int>> waiting,
            std::function<void(const std::string& report)> on_stuck);
  ~HangWatch() override;
  HangWatch(const HangWatch&) = delete;
  HangWatch& operator=(const HangWatch&) = delete;

  void step_started() { phase_started(Phase::kStep); }
  void step_ended() { phase_ended(Phase::kStep); }
  // On the thread doing the work.
  void phase_started(Phase phase) override;
  void phase_ended(Phase phase) override;
  // The deadline of `phase` now.
  std::chrono::milliseconds deadline(Phase phase = Phase::kStep) const;
  // Forgets `phase`'s durations (a new generation's steps: another world size, cold caches).
  void forget(Phase phase);

  // "tid 1234 (llama_train) state S in futex_wait_queue" per thread of this process; `marked`
  // gets " <- the stuck thread".
  static std::string threads_report(long marked = 0);

 private:
  struct Open {
    Phase phase;
    Clock::time_point started;
    Clock::duration nested{0};  // time in phases nested in it (not its own)
  };
  struct Watched {           // a thread with phases in progress
    std::vector<Open> open;  // outermost first
    std::shared_ptr<const std::atomic<int>> waiting;
  };
  void loop();
  std::chrono::milliseconds deadline_locked(Phase phase) const;

  const double k_;
  const std::chrono::milliseconds floor_;
  const long owner_tid_;  // the constructing (training) thread
  const std::shared_ptr<const std::atomic<int>> waiting_;
  const std::function<void(const std::string&)> on_stuck_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Protected by mu_:
  bool stop_ = false, fired_ = false;
  std::map<long, Watched> threads_;                        // by thread id
  std::array<std::deque<double>, kPhaseCount> durations_;  // seconds, the last 100 of each
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace tenax
