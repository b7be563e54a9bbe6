#pragma once

// The re-formation being recorded (internal to the elastic layer).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tenax/checkpoint/engine.h"
#include "tenax/elastic/elastic.h"
#include "tenax/elastic/rendezvous.h"

namespace tenax::detail {

// Owns the RecoveryEvent of the re-formation in progress, from its cause to the first step
// after it; each phase of the runner records its part here and nowhere else. Used by the
// runner's thread only.
class RecoveryRecorder {
 public:
  using Clock = std::chrono::steady_clock;

  // True iff a re-formation is being recorded.
  bool open() const { return event_.has_value(); }
  const RecoveryEvent& event() const { return *event_; }

  // A step failed: `detected_by` says how it was known, `detect_ms` how long after the step
  // began. A failure during the first step after a re-formation replaces that record.
  void failure(std::string detected_by, int64_t failed_step, double detect_ms);
  // A member joined and the active members leave at this step boundary.
  void join(std::string detected_by);
  // This member arrived in a job that trained before it; the rendezvous began at `began`.
  void arrived(const std::string& member, const Generation& gen, Clock::time_point began,
               double rendezvous_ms);

  // The generation formed: its members, who was lost and who joined since `previous`.
  void formed(const Generation& gen, const std::vector<std::string>& previous,
              double rendezvous_ms);
  // The state was restored (`result` null: nothing to restore, a fresh start at step 0).
  void restored(int64_t step, const std::optional<RestoreResult>& result, double restore_ms);

  // The first step after the re-formation ended: returns the whole event and closes the record.
  RecoveryEvent complete(double first_step_ms);

 private:
  std::optional<RecoveryEvent> event_;
  Clock::time_point detected_;  // when the cause was known here (total_ms counts from it)
  double detected_at_ = 0;      // the same, in Unix seconds
};

}  // namespace tenax::detail
