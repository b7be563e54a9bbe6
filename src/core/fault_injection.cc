#include "tenax/core/fault_injection.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <thread>

#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {
namespace {

int64_t parse_number(const std::string& item, const std::string& text) {
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size() && v >= 0) return v;
  } catch (...) {
  }
  throw ConfigError("TENAX_FAULT: '" + item + "': '" + text + "' is not a non-negative integer");
}

const std::map<std::string, FaultInjector::Kind> kKinds = {
    {"kill", FaultInjector::Kind::kKill}, {"hang", FaultInjector::Kind::kHang},
    {"exit", FaultInjector::Kind::kExit}, {"slow", FaultInjector::Kind::kSlow},
    {"s3_fail", FaultInjector::Kind::kS3Fail}};

const char* name_of(FaultInjector::Kind kind) {
  for (const auto& [name, k] : kKinds) {
    if (k == kind) return name.c_str();
  }
  return "?";
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
    const bool at_step = head[sep] == '@';
    const auto kind = kKinds.find(head.substr(0, sep));
    const bool ok = kind != kKinds.end() &&
                    (at_step == (kind->second == Kind::kKill || kind->second == Kind::kHang ||
                                 kind->second == Kind::kExit));
    if (!ok) {
      throw ConfigError("TENAX_FAULT: '" + item + "': unknown fault (expected kill@S, hang@S, "
                        "exit@S, slow=MS or s3_fail=N)");
    }
    f.kind = kind->second;
    const std::string when = head.substr(sep + 1);
    f.value = at_step && when == "recovery" ? kAtRecovery : parse_number(item, when);
    if (f.rank >= 0 && f.rank != rank_) continue;
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
    if (f.kind == Kind::kSlow) {
      std::this_thread::sleep_for(std::chrono::milliseconds(f.value));
    } else if (f.kind != Kind::kS3Fail && f.value == step) {
      fire(f, "at step " + std::to_string(step));
    }
  }
}

void FaultInjector::at_recovery() const {
  for (const auto& f : faults_) {
    if (f.value == kAtRecovery && f.kind != Kind::kSlow && f.kind != Kind::kS3Fail) {
      fire(f, "during a recovery");
    }
  }
}

int64_t FaultInjector::s3_failures() const {
  int64_t n = 0;
  for (const auto& f : faults_) {
    if (f.kind == Kind::kS3Fail) n = f.value;
  }
  return n;
}

void FaultInjector::fire(const Fault& f, const std::string& when) const {
  log(LogLevel::kWarning, std::string("fault injection: ") + name_of(f.kind) + " rank " +
                              std::to_string(rank_) + " " + when);
  if (f.kind == Kind::kKill) ::kill(::getpid(), SIGKILL);
  if (f.kind == Kind::kHang) ::kill(::getpid(), SIGSTOP);
  if (f.kind == Kind::kExit) std::_Exit(1);
}

}  // namespace tenax
