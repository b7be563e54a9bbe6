#include "checkpoint/engine_metrics.h"

namespace tenax::detail {

CheckpointMetrics& checkpoint_metrics() {
  static CheckpointMetrics* m = [] {
    auto& r = metrics::registry();
    auto* c = new CheckpointMetrics();
    c->save_stall = &r.family("tenax_checkpoint_save_stall_seconds",
                              "Time a checkpoint save blocked training (copy into memory)",
                              metrics::Type::kHistogram)
                         .histogram();
    auto& secs = r.family("tenax_checkpoint_tier_seconds_total",
                          "Time spent writing snapshots into a tier (memory: commit, peer: "
                          "replication, durable: persistence)",
                          metrics::Type::kCounter, {"tier"});
    auto& bytes = r.family("tenax_checkpoint_tier_bytes_total",
                           "Snapshot bytes written into a tier", metrics::Type::kCounter, {"tier"});
    auto& fails =
        r.family("tenax_checkpoint_failures_total", "Snapshot writes that failed, by tier",
                 metrics::Type::kCounter, {"tier"});
    const char* tiers[] = {"memory", "peer", "durable"};
    for (int t = 0; t < CheckpointMetrics::kTiers; ++t) {
      c->seconds[t] = &secs.counter({tiers[t]});
      c->bytes[t] = &bytes.counter({tiers[t]});
      c->failures[t] = &fails.counter({tiers[t]});
    }
    c->retries = &r.counter("tenax_checkpoint_retries_total",
                            "Durable-tier requests and persists that were tried again");
    c->last_saved_step =
        &r.gauge("tenax_checkpoint_last_saved_step", "The newest step saved into the memory tier");
    c->last_durable_step = &r.gauge("tenax_checkpoint_last_durable_step",
                                    "The newest step this rank persisted to the durable tier");
    c->persistence_lag = &r.gauge("tenax_checkpoint_persistence_lag_steps",
                                  "Steps saved since the newest durable one");
    c->last_durable_step->set(-1);
    return c;
  }();
  return *m;
}

}  // namespace tenax::detail
