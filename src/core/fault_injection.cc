#include "tenax/core/fault_injection.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {
namespace {

std::atomic<int64_t> g_s3_failures{0};
std::once_flag g_s3_from_env;

int64_t parse_number(const std::string& item, const std::string& text) {
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size() && v >= 0) return v;
  } catch (...) {
  }
  throw ConfigError("TENAX_FAULT: '" + item + "': '" + text + "' is not a non-negative integer");
}

}  // namespace

FaultInjector::FaultInjector(const std::string& spec, int rank) : rank_(rank) {
  size_t at = 0;
  while (at < spec.size()) {
    size_t end = spec.find(',', at);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(at, end - at);
    at = end + 1;
    if (item.empty()) continue;
    Fault f;
    std::string head = item;
    const size_t colon = item.find(':');
    if (colon != std::string::npos) {
      head = item.substr(0, colon);
      const std::string tail = item.substr(colon + 1);
      if (tail.rfind("rank=", 0) != 0) {
        throw ConfigError("TENAX_FAULT: '" + item + "': expected ':rank=R' after the fault");
      }
      f.rank = static_cast<int>(parse_number(item, tail.substr(5)));
    }
    const size_t sep = head.find_first_of("@=");
    if (sep == std::string::npos) {
      throw ConfigError("TENAX_FAULT: '" + item + "': expected kill@S, hang@S, exit@S (S: a step "
                        "or 'recovery'), slow=MS or s3_fail=N");
    }
    f.kind = head.substr(0, sep);
    const std::string when = head.substr(sep + 1);
    f.value = head[sep] == '@' && when == "recovery" ? kAtRecovery : parse_number(item, when);
    const bool at_step = head[sep] == '@';
    const bool ok = at_step ? (f.kind == "kill" || f.kind == "hang" || f.kind == "exit")
                            : (f.kind == "slow" || f.kind == "s3_fail");
    if (!ok) {
      throw ConfigError("TENAX_FAULT: '" + item + "': unknown fault (expected kill@S, hang@S, "
                        "exit@S, slow=MS or s3_fail=N)");
    }
    if (f.rank >= 0 && f.rank != rank_) continue;
    if (f.kind == "s3_fail") {
      g_s3_failures.store(f.value);
    }
    faults_.push_back(f);
  }
}

FaultInjector FaultInjector::from_env(int rank) {
  // A worker restarted by its agent does not repeat the fault that took its predecessor down.
  if (settings().restart_count > 0) return FaultInjector("", rank);
  return FaultInjector(settings().fault, rank);
}

void FaultInjector::at_step(int64_t step) const {
  for (const auto& f : faults_) {
    if (f.kind == "slow") {
      std::this_thread::sleep_for(std::chrono::milliseconds(f.value));
      continue;
    }
    if (f.kind == "s3_fail" || f.value != step) continue;
    fire(f, "at step " + std::to_string(step));
  }
}

void FaultInjector::at_recovery() const {
  for (const auto& f : faults_) {
    if (f.value == kAtRecovery && f.kind != "slow" && f.kind != "s3_fail") {
      fire(f, "during a recovery");
    }
  }
}

void FaultInjector::fire(const Fault& f, const std::string& when) const {
  log(LogLevel::kWarning, "fault injection: " + f.kind + " rank " + std::to_string(rank_) + " " +
                              when);
  if (f.kind == "kill") ::kill(::getpid(), SIGKILL);
  if (f.kind == "hang") ::kill(::getpid(), SIGSTOP);
  if (f.kind == "exit") std::_Exit(1);
}

bool take_injected_s3_failure() {
  std::call_once(g_s3_from_env, [] {
    // A process without a FaultInjector (a tool, a test worker) still honours s3_fail.
    if (g_s3_failures.load() == 0) {
      const std::string& spec = settings().fault;
      if (spec.find("s3_fail=") != std::string::npos) FaultInjector(spec, -1);
    }
  });
  int64_t left = g_s3_failures.load();
  while (left > 0) {
    if (g_s3_failures.compare_exchange_weak(left, left - 1)) return true;
  }
  return false;
}

}  // namespace tenax
