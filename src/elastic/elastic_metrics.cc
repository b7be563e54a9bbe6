#include "elastic/elastic_metrics.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "tenax/core/config.h"
#include "tenax/core/logging.h"

namespace tenax::detail {

ElasticMetrics& elastic_metrics() {
  static ElasticMetrics* m = [] {
    auto& r = metrics::registry();
    auto* e = new ElasticMetrics();
    e->generation = &r.gauge("tenax_elastic_generation", "The worker set's current generation");
    e->world_size = &r.gauge("tenax_elastic_world_size", "Members of the current generation");
    e->active = &r.gauge("tenax_elastic_active_workers", "Members training in this generation");
    e->standby = &r.gauge("tenax_elastic_standby_workers",
                          "Members waiting as warm spares in this generation");
    e->missed_heartbeats = &r.counter("tenax_elastic_missed_heartbeats_total",
                                      "Members whose heartbeat stopped while they trained");
    e->steps_lost = &r.counter("tenax_elastic_steps_lost_total",
                               "Completed steps lost to failures (done again after a restore)");
    e->step = &r.gauge("tenax_elastic_steps_completed", "Training steps completed");
    // Present from the start, so a recovery shows as a step up rather than a new series.
    e->recoveries = &r.family("tenax_recoveries_total", "Re-formations of the worker set, by cause",
                              metrics::Type::kCounter, {"cause"});
    e->recoveries->counter({"failure"});
    e->recoveries->counter({"join"});
    e->phases = &r.family("tenax_recovery_phase_seconds",
                          "Duration of each phase of a re-formation (detect, rendezvous, "
                          "restore, first_step, total)",
                          metrics::Type::kHistogram, {"phase"});
    return e;
  }();
  return *m;
}

void append_event(const std::string& path, const std::string& line) {
  if (path.empty()) return;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const std::string text = line + "\n";
  if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    log(LogLevel::kWarning,
        "elastic: cannot append to the events file " + path + ": " + std::strerror(errno));
  }
  if (fd >= 0) ::close(fd);
}

void ElasticMetrics::formed(int64_t number, int members, int active_members, int rank) {
  generation->set(static_cast<double>(number));
  world_size->set(members);
  active->set(active_members);
  standby->set(members - active_members);
  auto& r = metrics::registry();
  r.set_constant_label("generation", std::to_string(number));
  r.set_constant_label("rank", std::to_string(rank));
  set_log_context("generation", std::to_string(number));
  set_log_context("rank", std::to_string(rank));
}

void ElasticMetrics::recovered(const RecoveryEvent& ev) {
  recoveries->counter({ev.cause}).inc();
  const std::pair<const char*, double> ms[] = {{"detect", ev.detect_ms},
                                               {"rendezvous", ev.rendezvous_ms},
                                               {"restore", ev.restore_ms},
                                               {"first_step", ev.first_step_ms},
                                               {"total", ev.total_ms}};
  for (const auto& [phase, v] : ms) phases->histogram({phase}).observe(v / 1000.0);
  if (ev.failed_step >= 0 && ev.resumed_step >= 0 && ev.failed_step > ev.resumed_step) {
    steps_lost->inc(static_cast<double>(ev.failed_step - ev.resumed_step));
  }
}

}  // namespace tenax::detail
