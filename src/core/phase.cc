#include "tenax/core/phase.h"

#include <mutex>

namespace tenax {
namespace {

// Phases start and end a few times a step: one lock is cheap, and it lets an observer be
// removed while other threads report to it.
std::mutex& observer_mutex() {
  static std::mutex mu;
  return mu;
}
PhaseObserver* g_observer = nullptr;  // guarded by observer_mutex()

}  // namespace

const char* to_string(Phase phase) {
  switch (phase) {
    case Phase::kStep:
      return "step";
    case Phase::kSave:
      return "checkpoint save";
    case Phase::kEvaluation:
      return "evaluation";
    case Phase::kPersist:
      return "persist";
    case Phase::kRendezvous:
      return "rendezvous";
  }
  return "?";
}

void set_phase_observer(PhaseObserver* observer) {
  std::lock_guard<std::mutex> lock(observer_mutex());
  g_observer = observer;
}

void clear_phase_observer(PhaseObserver* observer) {
  std::lock_guard<std::mutex> lock(observer_mutex());
  if (g_observer == observer) g_observer = nullptr;
}

PhaseScope::PhaseScope(Phase phase) : phase_(phase) {
  std::lock_guard<std::mutex> lock(observer_mutex());
  if (g_observer == nullptr) return;
  g_observer->phase_started(phase);
  marked_ = true;
}

PhaseScope::~PhaseScope() {
  if (!marked_) return;
  std::lock_guard<std::mutex> lock(observer_mutex());
  if (g_observer != nullptr) g_observer->phase_ended(phase_);
}

}  // namespace tenax
