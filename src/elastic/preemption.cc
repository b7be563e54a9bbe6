#include "elastic/preemption.h"

#include <atomic>

namespace tenax::detail {
namespace {

std::atomic<int> g_received{0};
static_assert(std::atomic<int>::is_always_lock_free, "set from a signal handler");

void on_signal(int sig) { g_received.store(sig, std::memory_order_relaxed); }

}  // namespace

PreemptionSignal::PreemptionSignal() {
  g_received.store(0);
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;  // blocking calls in progress go on; the loop looks at boundaries
  sigaction(SIGTERM, &sa, &previous_);
}

PreemptionSignal::~PreemptionSignal() { sigaction(SIGTERM, &previous_, nullptr); }

int PreemptionSignal::received() { return g_received.load(std::memory_order_relaxed); }

}  // namespace tenax::detail
