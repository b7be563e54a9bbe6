#include "health/hang_watch.h"

#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

namespace tenax::detail {
namespace {

std::atomic<HangWatch*> g_current{nullptr};

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::kStep:
      return "step";
    case Phase::kSave:
      return "checkpoint save";
    case Phase::kEvaluation:
      return "evaluation";
  }
  return "?";
}

}  // namespace

HangWatch::HangWatch(double k, std::chrono::milliseconds floor,
                     std::shared_ptr<const std::atomic<int>> waiting,
                     std::function<void(const std::string&)> on_stuck)
    : k_(k), floor_(floor), waiting_(std::move(waiting)), on_stuck_(std::move(on_stuck)) {
  thread_ = std::thread([this] { loop(); });
  g_current.store(this);
}

HangWatch::~HangWatch() {
  HangWatch* self = this;
  g_current.compare_exchange_strong(self, nullptr);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

HangWatch* HangWatch::current() { return g_current.load(); }

void HangWatch::phase_started(Phase phase) {
  std::lock_guard<std::mutex> lock(mu_);
  training_tid_ = static_cast<long>(syscall(SYS_gettid));
  open_.push_back({phase, Clock::now()});
}

void HangWatch::phase_ended(Phase phase) {
  std::lock_guard<std::mutex> lock(mu_);
  // Close up to the innermost phase of this kind (an exception may have skipped inner ends).
  while (!open_.empty()) {
    const Open o = open_.back();
    open_.pop_back();
    const auto took = Clock::now() - o.started;
    if (!open_.empty()) open_.back().nested += took;
    if (o.phase != phase) continue;
    auto& d = durations_[static_cast<int>(phase)];
    d.push_back(std::chrono::duration<double>(took - o.nested).count());
    if (d.size() > 100) d.pop_front();
    return;
  }
}

std::chrono::milliseconds HangWatch::deadline(Phase phase) const {
  std::lock_guard<std::mutex> lock(mu_);
  return deadline_locked(phase);
}

std::chrono::milliseconds HangWatch::deadline_locked(Phase phase) const {
  const auto& seen = durations_[static_cast<int>(phase)];
  if (seen.size() < 5) return 3 * floor_;
  std::vector<double> d(seen.begin(), seen.end());
  std::sort(d.begin(), d.end());
  const double p99 = d[std::min(d.size() - 1, static_cast<size_t>(0.99 * (d.size() - 1) + 0.5))];
  const auto derived = std::chrono::milliseconds(static_cast<int64_t>(k_ * p99 * 1000));
  return std::max(floor_, derived);
}

std::string HangWatch::threads_report(long marked) {
  std::string out;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      const std::string base = std::string("/proc/self/task/") + e->d_name;
      std::string comm, wchan, stat;
      std::getline(std::ifstream(base + "/comm"), comm);
      std::getline(std::ifstream(base + "/wchan"), wchan);
      std::getline(std::ifstream(base + "/stat"), stat);
      const size_t close = stat.rfind(')');
      const char state =
          close != std::string::npos && close + 2 < stat.size() ? stat[close + 2] : '?';
      out += "\n  tid " + std::string(e->d_name) + " (" + comm + ") state " + state +
             (wchan.empty() || wchan == "0" ? "" : " in " + wchan) +
             (std::to_string(marked) == e->d_name ? " <- the training thread" : "");
    }
    closedir(d);
  }
  return out;
}

void HangWatch::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stop_ || open_.empty() || fired_) continue;
    const Open& o = open_.back();  // the innermost phase runs its own clock
    const auto elapsed = Clock::now() - o.started - o.nested;
    const auto limit = deadline_locked(o.phase);
    if (elapsed < limit || (waiting_ && waiting_->load() > 0)) continue;
    fired_ = true;
    const std::string report =
        std::string("the ") + phase_name(o.phase) + " has run " +
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()) +
        " ms, past its deadline of " + std::to_string(limit.count()) +
        " ms, and the training thread is not waiting on a collective; threads:" +
        threads_report(training_tid_);
    lock.unlock();
    on_stuck_(report);
    lock.lock();
  }
}

}  // namespace tenax::detail

namespace tenax {

PhaseScope::PhaseScope(Phase phase) : phase_(phase) {
  if (auto* w = detail::HangWatch::current()) {
    w->phase_started(phase);
    marked_ = true;
  }
}

PhaseScope::~PhaseScope() {
  if (!marked_) return;
  if (auto* w = detail::HangWatch::current()) w->phase_ended(phase_);
}

}  // namespace tenax
