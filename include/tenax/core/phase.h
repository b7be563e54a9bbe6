#pragma once

// What each thread of the process is doing, for a hang watch (the health layer's): the training
// thread's steps, checkpoint saves, evaluations and rendezvous, and the checkpoint engine's
// persistence on its own thread. Each phase gets a deadline derived from its own durations, so
// a long, rare evaluation or persist is not taken for a stuck step. The runner marks steps,
// saves and rendezvous, the checkpoint engine its persists, and a trainer its evaluations
// (llama_train does).

#include "tenax/core/export.h"

namespace tenax {

enum class Phase { kStep = 0, kSave = 1, kEvaluation = 2, kPersist = 3, kRendezvous = 4 };
inline constexpr int kPhaseCount = 5;

// "step", "checkpoint save", "evaluation", "persist", "rendezvous".
TENAX_API const char* to_string(Phase phase);

// Told when a thread enters and leaves a phase, on that thread.
class TENAX_API PhaseObserver {
 public:
  virtual ~PhaseObserver() = default;
  virtual void phase_started(Phase phase) = 0;
  virtual void phase_ended(Phase phase) = 0;
};

// Makes `observer` the one PhaseScope reports to. Calls into an observer are serialised with
// this and with clear_phase_observer(): once either returns, the observer it replaced or
// cleared is called no more.
TENAX_API void set_phase_observer(PhaseObserver* observer);
// Clears the observer if it is `observer` (a newer one stays).
TENAX_API void clear_phase_observer(PhaseObserver* observer);

// Marks the calling thread's work as `phase` while it lives (nothing when no observer is set).
class TENAX_API PhaseScope {
 public:
  explicit PhaseScope(Phase phase);
  ~PhaseScope();
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  Phase phase_;
  bool marked_ = false;
};

}  // namespace tenax
