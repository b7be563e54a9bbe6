#include "elastic/preemption.h"

#include <atomic>

namespace tenax::detail {
namespace {

std::atomic<int> g_requested{0};
static_assert(std::atomic<int>::is_always_lock_free, "set from a signal handler");

// The disposition SigtermHandler replaced, read by the handler: written before the handler is
// installed and after it is removed only.
struct sigaction g_previous {};

void on_sigterm(int sig, siginfo_t* info, void* context) {
  request_preemption(sig);
  if (g_previous.sa_flags & SA_SIGINFO) {
    if (g_previous.sa_sigaction != nullptr) g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN &&
             g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
  }
}

}  // namespace

void request_preemption(int cause) noexcept {
  g_requested.store(cause, std::memory_order_relaxed);
}

int preemption_requested() noexcept { return g_requested.load(std::memory_order_relaxed); }

void clear_preemption() noexcept { g_requested.store(0, std::memory_order_relaxed); }

SigtermHandler::SigtermHandler() {
  sigaction(SIGTERM, nullptr, &g_previous);
  previous_ = g_previous;
  struct sigaction sa {};
  sa.sa_sigaction = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART | SA_SIGINFO;  // blocking calls go on; the loop looks at boundaries
  sigaction(SIGTERM, &sa, nullptr);
}

SigtermHandler::~SigtermHandler() { sigaction(SIGTERM, &previous_, nullptr); }

}  // namespace tenax::detail
