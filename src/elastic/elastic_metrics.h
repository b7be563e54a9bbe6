#pragma once

// The elastic layer's series in the metrics registry (internal): the generation and its size,
// recoveries by cause with each phase's duration, missed heartbeats and steps lost.

#include <cstdint>
#include <string>

#include "tenax/core/metrics.h"
#include "tenax/elastic/elastic.h"

namespace tenax::detail {

struct ElasticMetrics {
  metrics::Gauge* generation;
  metrics::Gauge* world_size;  // members of the generation
  metrics::Gauge* active;
  metrics::Gauge* standby;
  metrics::Counter* missed_heartbeats;
  metrics::Counter* steps_lost;
  metrics::Gauge* step;  // steps completed
  metrics::Family* recoveries;  // counters by cause
  metrics::Family* phases;      // histograms by phase

  // A generation formed with `members`, `active` of them training; this member's rank in it.
  void formed(int64_t number, int members, int active_members, int rank);
  // A re-formation completed: recoveries{cause}, the phases' histograms, steps lost.
  void recovered(const RecoveryEvent& ev);
};

ElasticMetrics& elastic_metrics();

// Appends `line` (one JSON object) to the file at `path` ("": none): O_APPEND and one write,
// so the members of a host may share the file.
void append_event(const std::string& path, const std::string& line);

}  // namespace tenax::detail
