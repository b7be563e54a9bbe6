#include "tenax/elastic/elastic.h"

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>

#include "elastic/elastic_metrics.h"
#include "elastic/preemption.h"
#include "elastic/run_loop.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/comm/init.h"
#include "elastic/environment.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"
#include "tenax/health/preflight.h"

namespace tenax {

std::string RecoveryEvent::to_json() const {
  nlohmann::json phases = nlohmann::json::array();
  double t = detected_at - detect_ms / 1000;
  for (const auto& [name, ms] : {std::pair<const char*, double>{"detect", detect_ms},
                                 {"rendezvous", rendezvous_ms},
                                 {"restore", restore_ms},
                                 {"first_step", first_step_ms}}) {
    phases.push_back({{"phase", name}, {"start", t}, {"end", t + ms / 1000}});
    t += ms / 1000;
  }
  return nlohmann::json{{"member", member},
                        {"host", host},
                        {"detected_at", detected_at},
                        {"phases", phases},
                        {"generation", generation},
                        {"cause", cause},
                        {"detected_by", detected_by},
                        {"lost", lost},
                        {"joined", joined},
                        {"members", members},
                        {"failed_step", failed_step},
                        {"resumed_step", resumed_step},
                        {"tier", tier},
                        {"bytes", bytes},
                        {"detect_ms", detect_ms},
                        {"rendezvous_ms", rendezvous_ms},
                        {"restore_ms", restore_ms},
                        {"first_step_ms", first_step_ms},
                        {"total_ms", total_ms}}
      .dump();
}

ElasticRunner::ElasticRunner(ElasticOptions options, std::shared_ptr<Store> store)
    : o_(std::move(options)), store_(std::move(store)) {
  if (o_.group < 1) throw ConfigError("elastic: group (tp*pp) must be at least 1");
  if (o_.rendezvous.min_workers < o_.group) {
    throw ConfigError("elastic: min_workers (" + std::to_string(o_.rendezvous.min_workers) +
                      ") is smaller than one model replica (group of " +
                      std::to_string(o_.group) + " ranks)");
  }
  if (o_.snapshot_every < 1) throw ConfigError("elastic: snapshot_every must be at least 1");
  member_ = o_.member.empty() ? launch_info().member : o_.member;
  set_flight_identity(member_);
  set_log_context("member", member_);
  metrics::registry().set_constant_label("member", member_);
  if (o_.checkpoint.run.empty() || o_.checkpoint.run == "tenax") {
    o_.checkpoint.run = o_.rendezvous.run;
  }
  o_.checkpoint.member = member_;
  o_.rendezvous.group = o_.group;
  if (o_.rendezvous.host_members <= 0) o_.rendezvous.host_members = launch_info().local_size;
  detail::apply_environment(o_);
  if (o_.max_active > 0 && o_.max_active < o_.group) {
    throw ConfigError("elastic: max_active (" + std::to_string(o_.max_active) +
                      ") is smaller than one model replica (group of " + std::to_string(o_.group) +
                      " ranks)");
  }
  if (!o_.faults) own_faults_ = FaultInjector::from_env(launch_info().rank);
  rdzv_ = std::make_unique<Rendezvous>(store_, member_, o_.rendezvous);
}

ElasticRunner::~ElasticRunner() = default;

void ElasticRunner::preflight(const FaultInjector* faults) {
  PreflightOptions po = o_.health.preflight;
  if (!po.enabled) return;
  if (po.hostname.empty()) po.hostname = o_.comm.hostname;
  if (po.expected <= 0) {
    po.expected =
        o_.rendezvous.max_workers < (1 << 20) ? o_.rendezvous.max_workers : launch_info().size;
  }
  if (po.memory_bytes <= 0) po.memory_bytes = o_.checkpoint.memory_budget_bytes;
  const std::string host = o_.rendezvous.host.empty() ? host_name() : o_.rendezvous.host;
  const CheckpointOptions copts = o_.checkpoint;
  const PreflightResult r =
      run_preflight(store_, o_.rendezvous.run, member_, host, po, faults,
                    [copts] { return CheckpointEngine::check_durable(copts); });
  if (r.passed) {
    char line[200];
    std::snprintf(line, sizeof(line),
                  "health: %s passed preflight in %.2f s (GEMM %016llx, all-reduce bus bandwidth "
                  "%.3f GB/s, clock offset %.0f ms)",
                  member_.c_str(), r.seconds, (unsigned long long)r.gemm_checksum, r.busbw_gbps,
                  r.clock_offset_ms);
    log(LogLevel::kInfo, line);
    return;
  }
  std::string all;
  for (const auto& why : r.reasons) all += "\n  - " + why;
  throw HealthError("health: " + member_ + " on " + host +
                    " failed preflight and is kept out of "
                    "the job:" +
                    all);
}

RunResult ElasticRunner::run(ElasticJob& job, int64_t steps) {
  const FaultInjector* faults = o_.faults ? o_.faults : &own_faults_;
  preflight(faults);
  detail::RunLoop loop(o_, store_, member_, *rdzv_, faults, job, steps, [this](RecoveryEvent ev) {
    ev.member = member_;
    ev.host = host_name();
    events_.push_back(ev);
    const std::string line = ev.to_json();
    log(LogLevel::kInfo, "elastic: recovery " + line);
    detail::append_event(o_.events_file, line);
    if (on_event) on_event(ev);
  });
  // The loop answers for this member's fencing while it runs, however it ends.
  struct FenceHandler {
    Rendezvous& rdzv;
    ~FenceHandler() { rdzv.set_on_fenced(nullptr); }
  } handler{*rdzv_};
  rdzv_->set_on_fenced([&loop](const std::string& why) { loop.fenced(why); });
  std::optional<detail::SigtermHandler> sigterm;
  if (o_.handle_sigterm) sigterm.emplace();
  try {
    RunResult result = loop.run();
    detail::clear_preemption();  // a request is answered by the run it reached
    return result;
  } catch (const TimeoutError& e) {
    // Too few members: say which ones the health checks kept out, and why.
    const std::vector<std::string> out = kept_out(*store_, o_.rendezvous.run);
    if (out.empty()) throw;
    std::string all;
    for (const auto& line : out) all += "\n  - " + line;
    throw TimeoutError(std::string(e.what()) + "; kept out by the health checks:" + all);
  }
}

void ElasticRunner::preempt() noexcept { detail::request_preemption(detail::kPreemptCall); }

const char* to_string(StopReason reason) {
  switch (reason) {
    case StopReason::kFinished:
      return "finished";
    case StopReason::kPreempted:
      return "preempted";
    case StopReason::kFenced:
      return "fenced";
    case StopReason::kEvicted:
      return "evicted";
    case StopReason::kRemoved:
      return "removed";
    case StopReason::kHung:
      return "hung";
  }
  return "unknown";
}

int exit_code(StopReason reason) {
  switch (reason) {
    case StopReason::kFinished:
    case StopReason::kPreempted:
      return 0;
    case StopReason::kFenced:
      return kFencedExitCode;
    case StopReason::kEvicted:
      return kUnhealthyExitCode;
    case StopReason::kRemoved:
    case StopReason::kHung:
      return kRemovedExitCode;
  }
  return 1;
}

}  // namespace tenax
