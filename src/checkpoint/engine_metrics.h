#pragma once

// The checkpoint engine's series in the metrics registry (internal): resolved once, recorded
// with atomic adds from whichever engine thread does the work.

#include "tenax/core/metrics.h"

namespace tenax::detail {

struct CheckpointMetrics {
  enum Tier { kMemory, kPeer, kDurable, kTiers };
  metrics::Histogram* save_stall;     // seconds save() blocked the training thread
  metrics::Counter* seconds[kTiers];  // commit (memory), replication (peer), persistence
  metrics::Counter* bytes[kTiers];
  metrics::Counter* failures[kTiers];
  metrics::Counter* retries;  // durable-tier requests and persists tried again
  metrics::Gauge* last_saved_step;
  metrics::Gauge* last_durable_step;
  metrics::Gauge* persistence_lag;  // steps saved after the last durable one
};

CheckpointMetrics& checkpoint_metrics();

}  // namespace tenax::detail
