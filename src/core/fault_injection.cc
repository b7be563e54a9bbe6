#include "tenax/core/fault_injection.h"

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <thread>

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

using Kind = FaultInjector::Kind;

const std::map<std::string, Kind> kKinds = {
    {"kill", Kind::kKill},       {"hang", Kind::kHang},
    {"exit", Kind::kExit},       {"slow", Kind::kSlow},
    {"s3_fail", Kind::kS3Fail},  {"sdc", Kind::kSdc},
    {"nan", Kind::kNan},         {"hang_backward", Kind::kHangBackward},
    {"shm_full", Kind::kShmFull}};

constexpr const char* kExpected =
    "expected kill@S, hang@S, exit@S (S: a step or 'recovery'), hang_backward@S, nan@S, sdc@S, "
    "sdc, shm_full, slow=MS or s3_fail=N";

// How a kind is written: @S (a step), =N (a number), bare, or either bare or @S (sdc).
enum class Form { kAt, kEquals, kBare, kBareOrAt };
Form form_of(Kind k) {
  switch (k) {
    case Kind::kSlow:
    case Kind::kS3Fail:
      return Form::kEquals;
    case Kind::kShmFull:
      return Form::kBare;
    case Kind::kSdc:
      return Form::kBareOrAt;
    default:
      return Form::kAt;
  }
}

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
    const auto kind = kKinds.find(head.substr(0, sep));
    if (kind == kKinds.end()) {
      throw ConfigError("TENAX_FAULT: '" + item + "': unknown fault (" + kExpected + ")");
    }
    const Form form = form_of(kind->second);
    const char written = sep == std::string::npos ? 0 : head[sep];
    const bool ok = (form == Form::kAt && written == '@') ||
                    (form == Form::kEquals && written == '=') ||
                    (form == Form::kBare && written == 0) ||
                    (form == Form::kBareOrAt && (written == 0 || written == '@'));
    if (!ok) throw ConfigError("TENAX_FAULT: '" + item + "': " + kExpected);
    f.kind = kind->second;
    const std::string when = written ? head.substr(sep + 1) : "";
    const bool recovery_ok =
        f.kind == Kind::kKill || f.kind == Kind::kHang || f.kind == Kind::kExit;
    if (!written) {
      f.value = kAnyStep;
    } else if (when == "recovery" && recovery_ok) {
      f.value = kAtRecovery;
    } else {
      f.value = parse_number(item, when);
    }
    if (f.rank >= 0 && f.rank != rank_) continue;
    faults_.push_back(f);
  }
}

void FaultInjector::at_step(int64_t step) const {
  for (const auto& f : faults_) {
    if (f.kind == Kind::kSlow) {
      std::this_thread::sleep_for(std::chrono::milliseconds(f.value));
    } else if ((f.kind == Kind::kKill || f.kind == Kind::kHang || f.kind == Kind::kExit) &&
               f.value == step) {
      fire(f, "at step " + std::to_string(step));
    }
  }
}

void FaultInjector::at_recovery() const {
  for (const auto& f : faults_) {
    if (f.value == kAtRecovery) {
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

bool FaultInjector::has(Kind kind, int64_t value) const {
  for (const auto& f : faults_) {
    if (f.kind == kind && f.value == value) return true;
  }
  return false;
}

bool FaultInjector::sdc_in_gemm() const { return has(Kind::kSdc, kAnyStep); }
bool FaultInjector::corrupt_at(int64_t step) const { return has(Kind::kSdc, step); }
bool FaultInjector::nan_at(int64_t step) const { return has(Kind::kNan, step); }
bool FaultInjector::shm_full() const { return has(Kind::kShmFull, kAnyStep); }

void FaultInjector::in_backward(int64_t step) const {
  if (!has(Kind::kHangBackward, step)) return;
  log(LogLevel::kWarning, "fault injection: hang_backward rank " + std::to_string(rank_) +
                              " in the backward pass of step " + std::to_string(step) +
                              " (this thread stops; the process stays alive)");
  // A stuck kernel: the thread never comes back (bounded: 10 minutes, then the process ends).
  for (int i = 0; i < 600; ++i) std::this_thread::sleep_for(std::chrono::seconds(1));
  std::_Exit(1);
}

void FaultInjector::fire(const Fault& f, const std::string& when) const {
  log(LogLevel::kWarning, std::string("fault injection: ") + name_of(f.kind) + " rank " +
                              std::to_string(rank_) + " " + when);
  if (f.kind == Kind::kKill) ::kill(::getpid(), SIGKILL);
  if (f.kind == Kind::kHang) ::kill(::getpid(), SIGSTOP);
  if (f.kind == Kind::kExit) std::_Exit(1);
}

}  // namespace tenax
