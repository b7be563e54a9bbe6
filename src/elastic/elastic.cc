#include "tenax/elastic/elastic.h"

#include <nlohmann/json.hpp>

#include "elastic/preemption.h"
#include "elastic/run_loop.h"
#include "tenax/comm/init.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {

std::string RecoveryEvent::to_json() const {
  return nlohmann::json{{"generation", generation},       {"cause", cause},
                        {"detected_by", detected_by},     {"lost", lost},
                        {"joined", joined},               {"members", members},
                        {"failed_step", failed_step},     {"resumed_step", resumed_step},
                        {"tier", tier},                   {"bytes", bytes},
                        {"detect_ms", detect_ms},         {"rendezvous_ms", rendezvous_ms},
                        {"restore_ms", restore_ms},       {"first_step_ms", first_step_ms},
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
  if (o_.checkpoint.run.empty() || o_.checkpoint.run == "tenax") {
    o_.checkpoint.run = o_.rendezvous.run;
  }
  o_.checkpoint.member = member_;
  o_.rendezvous.group = o_.group;
  if (o_.max_active <= 0) o_.max_active = static_cast<int>(settings().active_workers);
  if (o_.max_active > 0 && o_.max_active < o_.group) {
    throw ConfigError("elastic: max_active (" + std::to_string(o_.max_active) +
                      ") is smaller than one model replica (group of " + std::to_string(o_.group) +
                      " ranks)");
  }
  if (o_.comm_timeout.count() <= 0) o_.comm_timeout = default_timeout();
  if (!o_.faults) own_faults_ = FaultInjector::from_env(launch_info().rank);
  rdzv_ = std::make_unique<Rendezvous>(store_, member_, o_.rendezvous);
}

ElasticRunner::~ElasticRunner() = default;

int64_t ElasticRunner::run(ElasticJob& job, int64_t steps) {
  const FaultInjector* faults = o_.faults ? o_.faults : &own_faults_;
  detail::RunLoop loop(o_, store_, member_, *rdzv_, faults, job, steps,
                       [this](const RecoveryEvent& ev) {
    events_.push_back(ev);
    log(LogLevel::kInfo, "elastic: recovery " + ev.to_json());
    if (on_event) on_event(ev);
  });
  // The loop answers for this member's fencing while it runs, however it ends.
  struct FenceHandler {
    Rendezvous& rdzv;
    ~FenceHandler() { rdzv.set_on_fenced(nullptr); }
  } handler{*rdzv_};
  rdzv_->set_on_fenced([&loop](const std::string& why) { loop.fenced(why); });
  detail::PreemptionSignal preemption;
  return loop.run();
}

}  // namespace tenax
