#pragma once

// Where a training process's wall time goes, for goodput: productive step time, and badput by
// cause. The elastic runner and trainers account their time here; tenax/observe/ exposes the
// totals and their ratio. Series: tenax_goodput_productive_seconds_total and
// tenax_badput_seconds_total{cause=startup|recovery|redone_steps|checkpoint_stall|evaluation}.

#include "tenax/core/export.h"

namespace tenax {

enum class TimeUse {
  kProductive,       // steps that moved training forward (less checkpoint stall, evaluation)
  kStartup,          // from the process's start to its first step
  kRecovery,         // detection, rendezvous and restore of a re-formation
  kRedoneSteps,      // steps done again after a failure (their first run was lost)
  kCheckpointStall,  // time save() blocked training
  kEvaluation,       // evaluation passes
  kCount
};

// "productive", "startup", "recovery", "redone_steps", "checkpoint_stall", "evaluation".
TENAX_API const char* to_string(TimeUse use);

// Adds `seconds` (ignored when not positive) to `use`. An atomic add: cheap on the hot path.
// Thread rules: any thread (an atomic add on the use's counter).
TENAX_API void account_time(TimeUse use, double seconds);
// The seconds accounted to `use` so far.
TENAX_API double accounted_time(TimeUse use);
// Seconds since this process loaded tenax (its start, for a program linked with it).
TENAX_API double process_seconds();

}  // namespace tenax
