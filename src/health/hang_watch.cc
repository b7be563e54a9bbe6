#include "health/hang_watch.h"

#include <dirent.h>

#include <algorithm>
#include <fstream>
#include <vector>

namespace tenax::detail {

HangWatch::HangWatch(double k, std::chrono::milliseconds floor,
                     std::shared_ptr<const std::atomic<int>> waiting,
                     std::function<void(const std::string&)> on_stuck)
    : k_(k), floor_(floor), waiting_(std::move(waiting)), on_stuck_(std::move(on_stuck)) {
  thread_ = std::thread([this] { loop(); });
}

HangWatch::~HangWatch() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void HangWatch::step_started() {
  std::lock_guard<std::mutex> lock(mu_);
  in_step_ = true;
  started_ = Clock::now();
}

void HangWatch::step_ended() {
  std::lock_guard<std::mutex> lock(mu_);
  in_step_ = false;
  durations_.push_back(std::chrono::duration<double>(Clock::now() - started_).count());
  if (durations_.size() > 100) durations_.pop_front();
}

std::chrono::milliseconds HangWatch::deadline() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (durations_.size() < 5) return 3 * floor_;
  std::vector<double> d(durations_.begin(), durations_.end());
  std::sort(d.begin(), d.end());
  const double p99 = d[std::min(d.size() - 1, static_cast<size_t>(0.99 * (d.size() - 1) + 0.5))];
  const auto derived = std::chrono::milliseconds(static_cast<int64_t>(k_ * p99 * 1000));
  return std::max(floor_, derived);
}

std::string HangWatch::threads_report() {
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
             (wchan.empty() || wchan == "0" ? "" : " in " + wchan);
    }
    closedir(d);
  }
  return out;
}

void HangWatch::loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, std::chrono::milliseconds(100));
    if (stop_ || !in_step_ || fired_) continue;
    const auto elapsed = Clock::now() - started_;
    lock.unlock();
    const auto limit = deadline();
    const bool waiting = waiting_ && waiting_->load() > 0;
    lock.lock();
    if (!in_step_ || elapsed < limit || waiting) continue;
    fired_ = true;
    const std::string report =
        "the step has run " +
        std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()) +
        " ms, past its deadline of " + std::to_string(limit.count()) +
        " ms, and the training thread is not waiting on a collective; threads:" + threads_report();
    lock.unlock();
    on_stuck_(report);
    lock.lock();
  }
}

}  // namespace tenax::detail
