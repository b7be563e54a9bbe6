#pragma once

// Where a thread waits on others: the time it spends blocked in communication (what its
// computation did not hide) and whether it is blocked right now (the hang watch's question: is
// the training thread waiting on peers, or stuck in its own work?). Communicators, store clients
// and the checkpoint engine's remote writes mark their waits here; a program may mark its own.
// Thread rules: every count is per thread; the functions may be called from any thread.

#include <atomic>
#include <chrono>
#include <memory>

#include "tenax/core/export.h"

namespace tenax {

// Total time the calling thread has spent blocked in Work::wait (every blocking operation
// waits through it), on any communicator, since it started: the communication that its
// computation did not hide. Other threads' waits (the checkpoint engine's replication, say) are
// theirs, not the caller's. Never decreases; take differences.
TENAX_API std::chrono::nanoseconds communication_wait_time();

// The calling thread's count of waits in progress (WaitClock and WaitMark alive), readable from
// any thread through the pointer (a watchdog asks whether the training thread is blocked on
// communication or in its own work). The count lives as long as the pointer.
TENAX_API std::shared_ptr<const std::atomic<int>> communication_waits();

// Adds `elapsed` to the calling thread's communication_wait_time().
TENAX_API void add_communication_wait(std::chrono::nanoseconds elapsed);
// +1 / -1 on the calling thread's communication_waits() count.
TENAX_API void mark_communication_wait(int delta);

// While alive: the calling thread waits on communication (counted in communication_waits(),
// and its lifetime added to communication_wait_time()). Backends hold one for every
// Work::wait. Lives and dies on one thread.
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

// While alive: the calling thread waits on others (its communication_waits() count), without
// adding to communication_wait_time(): held for a store call, which may wait on other members
// (a rendezvous, a key another rank sets) or on the store's host. The hang watch leaves such a
// wait to the store's own timeout. Lives and dies on one thread.
class WaitMark {
 public:
  WaitMark() { mark_communication_wait(1); }
  ~WaitMark() { mark_communication_wait(-1); }
  WaitMark(const WaitMark&) = delete;
  WaitMark& operator=(const WaitMark&) = delete;
};

}  // namespace tenax
