#include "tenax/health/hang_watch.h"

#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "tenax/comm/communicator.h"

namespace tenax {
namespace {

long this_thread_id() { return static_cast<long>(syscall(SYS_gettid)); }

}  // namespace

HangWatch::HangWatch(double k, std::chrono::milliseconds floor,
                     std::shared_ptr<const std::atomic<int>> waiting,
                     std::function<void(const std::string&)> on_stuck)
    : k_(k),
      floor_(floor),
      owner_tid_(this_thread_id()),
      waiting_(std::move(waiting)),
      on_stuck_(std::move(on_stuck)) {
  thread_ = std::thread([this] { loop(); });
  set_phase_observer(this);
}

HangWatch::~HangWatch() {
  clear_phase_observer(this);  // no PhaseScope calls in after this
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void HangWatch::phase_started(Phase phase) {
  const long tid = this_thread_id();
  std::lock_guard<std::mutex> lock(mu_);
  Watched& t = threads_[tid];
  if (!t.waiting) t.waiting = tid == owner_tid_ && waiting_ ? waiting_ : communication_waits();
  t.open.push_back({phase, Clock::now()});
}

void HangWatch::phase_ended(Phase phase) {
  const long tid = this_thread_id();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = threads_.find(tid);
  if (it == threads_.end()) return;  // started before this watch
  std::vector<Open>& open = it->second.open;
  // Close up to the innermost phase of this kind (an exception may have skipped inner ends).
  while (!open.empty()) {
    const Open o = open.back();
    open.pop_back();
    const auto took = Clock::now() - o.started;
    if (!open.empty()) open.back().nested += took;
    if (o.phase != phase) continue;
    auto& d = durations_[static_cast<int>(phase)];
    d.push_back(std::chrono::duration<double>(took - o.nested).count());
    if (d.size() > 100) d.pop_front();
    return;
  }
}

void HangWatch::forget(Phase phase) {
  std::lock_guard<std::mutex> lock(mu_);
  durations_[static_cast<int>(phase)].clear();
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
             (std::to_string(marked) == e->d_name ? " <- the stuck thread" : "");
    }
    closedir(d);
  }
  return out;
}

void HangWatch::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stop_ || fired_) continue;
    for (const auto& [tid, t] : threads_) {
      if (t.open.empty()) continue;
      const Open& o = t.open.back();  // the innermost phase runs its own clock
      const auto elapsed = Clock::now() - o.started - o.nested;
      const auto limit = deadline_locked(o.phase);
      if (elapsed < limit || (t.waiting && t.waiting->load() > 0)) continue;
      fired_ = true;
      const std::string report =
          std::string("the ") + to_string(o.phase) + " has run " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()) +
          " ms, past its deadline of " + std::to_string(limit.count()) + " ms, and its thread " +
          (tid == owner_tid_ ? "(the training thread) " : "(tid " + std::to_string(tid) + ") ") +
          "is not waiting on others; threads:" + threads_report(tid);
      lock.unlock();
      on_stuck_(report);
      lock.lock();
      break;
    }
  }
}

}  // namespace tenax
