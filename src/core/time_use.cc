#include "tenax/core/time_use.h"

#include <chrono>

#include "tenax/core/metrics.h"

namespace tenax {
namespace {

const auto g_loaded = std::chrono::steady_clock::now();

const char* const kNames[] = {"productive",   "startup",          "recovery",
                              "redone_steps", "checkpoint_stall", "evaluation"};

metrics::Counter* counter(TimeUse use) {
  static metrics::Counter** counters = [] {
    auto& r = metrics::registry();
    auto** c = new metrics::Counter*[static_cast<int>(TimeUse::kCount)];
    c[0] = &r.counter("tenax_goodput_productive_seconds_total",
                      "Wall time of steps that moved training forward");
    auto& bad = r.family("tenax_badput_seconds_total", "Wall time that did not train, by cause",
                         metrics::Type::kCounter, {"cause"});
    for (int i = 1; i < static_cast<int>(TimeUse::kCount); ++i) c[i] = &bad.counter({kNames[i]});
    return c;
  }();
  return counters[static_cast<int>(use)];
}

}  // namespace

const char* to_string(TimeUse use) {
  const int i = static_cast<int>(use);
  return i >= 0 && i < static_cast<int>(TimeUse::kCount) ? kNames[i] : "?";
}

void account_time(TimeUse use, double seconds) { counter(use)->inc(seconds); }

double accounted_time(TimeUse use) { return counter(use)->value(); }

double process_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - g_loaded).count();
}

}  // namespace tenax
