#include "tenax/core/wait_clock.h"

#include <cstdint>

namespace tenax {
namespace {
// Per thread: a background thread's waits (the checkpoint engine's replication) must not count
// as the training thread's communication.
thread_local int64_t t_wait_ns = 0;
thread_local std::shared_ptr<std::atomic<int>> t_waits = std::make_shared<std::atomic<int>>(0);
}  // namespace

void add_communication_wait(std::chrono::nanoseconds elapsed) { t_wait_ns += elapsed.count(); }

void mark_communication_wait(int delta) { t_waits->fetch_add(delta, std::memory_order_relaxed); }

std::chrono::nanoseconds communication_wait_time() { return std::chrono::nanoseconds(t_wait_ns); }

std::shared_ptr<const std::atomic<int>> communication_waits() { return t_waits; }

}  // namespace tenax
