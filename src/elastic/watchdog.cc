#include "elastic/watchdog.h"

#include <algorithm>
#include <vector>

#include "elastic/elastic_metrics.h"

namespace tenax::detail {

Watchdog::Watchdog(Rendezvous& rdzv, const Generation& active, std::shared_ptr<Communicator> comm,
                   std::chrono::milliseconds interval, bool joiners_interrupt)
    : rdzv_(rdzv),
      active_(active),
      comm_(std::move(comm)),
      interval_(interval),
      joiners_interrupt_(joiners_interrupt),
      thread_([this] { loop(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::string Watchdog::reason() const {
  std::lock_guard<std::mutex> lock(mu_);
  return reason_;
}

void Watchdog::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (reason_.empty()) {
    if (cv_.wait_for(lock, interval_, [&] { return stop_; })) return;
    lock.unlock();
    const std::string why = check();
    if (!why.empty()) comm_->abort(why);
    lock.lock();
    reason_ = why;
  }
}

std::string Watchdog::check() {
  try {
    const std::vector<std::string> dead = rdzv_.dead_members(active_);
    for (const auto& id : dead) rdzv_.mark_gone(id);
    if (!dead.empty()) {
      elastic_metrics().missed_heartbeats->inc(static_cast<double>(dead.size()));
      std::string why = "heartbeat of " + dead[0] + " stopped";
      for (size_t k = 1; k < dead.size(); ++k) why += ", of " + dead[k];
      return why;
    }
    if (!rdzv_.superseded(active_)) return "";
    for (const auto& id : rdzv_.waiting(active_)) {
      if (std::find(active_.members.begin(), active_.members.end(), id) != active_.members.end()) {
        return id + " left generation " + std::to_string(active_.number) + " to recover";
      }
    }
    if (joiners_interrupt_ && rdzv_.admit_joiners(active_)) join_waiting_ = true;
    return "";
  } catch (const std::exception& e) {
    return std::string("the store failed: ") + e.what();
  }
}

}  // namespace tenax::detail
