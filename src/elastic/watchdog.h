#pragma once

// The watchdog of one generation's training (internal to the elastic layer).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "tenax/comm/communicator.h"
#include "tenax/elastic/rendezvous.h"

namespace tenax::detail {

// Watches the active members of a generation while it trains, on a thread of its own that
// polls the store every `interval`: a member whose heartbeat stopped is marked gone and the
// communicator aborted (the step in flight fails at once); a newer generation opened by a
// joiner raises join_waiting() for the next step boundary, once Rendezvous::admit_joiners says
// so (a host's joiners together); one opened by an active member (it
// is recovering) aborts too. The destructor stops the thread without waiting out an interval.
class Watchdog {
 public:
  // `joiners_interrupt` false: joiners never raise join_waiting() (they wait as spares).
  Watchdog(Rendezvous& rdzv, const Generation& active, std::shared_ptr<Communicator> comm,
           std::chrono::milliseconds interval, bool joiners_interrupt = true);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // True once a joiner waits in the next generation.
  bool join_waiting() const { return join_waiting_; }
  // Why the communicator was aborted ("" when it was not).
  std::string reason() const;

 private:
  void loop();
  // One look at the store: the reason to abort ("" when none).
  std::string check();

  Rendezvous& rdzv_;  // used by the watchdog thread only while it runs
  const Generation active_;
  const std::shared_ptr<Communicator> comm_;
  const std::chrono::milliseconds interval_;
  const bool joiners_interrupt_;
  std::atomic<bool> join_waiting_{false};

  mutable std::mutex mu_;
  std::condition_variable cv_;
  // Protected by mu_:
  bool stop_ = false;
  std::string reason_;

  std::thread thread_;  // last: starts once every member above is built
};

}  // namespace tenax::detail
