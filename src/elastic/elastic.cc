#include "tenax/elastic/elastic.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "elastic/preemption.h"
#include "elastic/run_loop.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/comm/init.h"
#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"

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

namespace {

std::string host_name() {
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  return host;
}

// TENAX_EVENTS_FILE: one JSON line per recovery, appended (O_APPEND: the ranks of a host may
// share the file, each line written whole).
void append_event(const std::string& line) {
  const std::string& path = settings().observe.events_file;
  if (path.empty()) return;
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const std::string text = line + "\n";
  if (fd < 0 || ::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    log(LogLevel::kWarning,
        "elastic: cannot append to TENAX_EVENTS_FILE " + path + ": " + std::strerror(errno));
  }
  if (fd >= 0) ::close(fd);
}

}  // namespace

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
  detail::RunLoop loop(o_, store_, member_, *rdzv_, faults, job, steps, [this](RecoveryEvent ev) {
    ev.member = member_;
    ev.host = host_name();
    events_.push_back(ev);
    const std::string line = ev.to_json();
    log(LogLevel::kInfo, "elastic: recovery " + line);
    append_event(line);
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
