#include "tenax/elastic/elastic.h"

#include <ATen/ops/full.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>

#include "tenax/core/config.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"

namespace tenax {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

std::vector<std::string> minus(const std::vector<std::string>& a,
                               const std::vector<std::string>& b) {
  std::vector<std::string> out;
  for (const auto& x : a) {
    if (std::find(b.begin(), b.end(), x) == b.end()) out.push_back(x);
  }
  return out;
}

std::string default_member() {
  if (const char* id = std::getenv("TENAX_MEMBER_ID"); id && *id) return id;
  for (const char* var : {"RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID"}) {
    if (const char* r = std::getenv(var); r && *r) return std::string("w") + r;
  }
  return "w0";
}

// Watches the active members of a generation while it trains: a member whose heartbeat stops
// is marked gone and the communicator aborted (the step in flight fails at once); a newer
// generation opened by a joiner raises `join_waiting` for the next step boundary, one opened
// by an active member (it is recovering) aborts too.
class Watchdog {
 public:
  Watchdog(Rendezvous& rdzv, const Generation& active, std::shared_ptr<Communicator> comm,
           std::chrono::milliseconds interval)
      : rdzv_(rdzv), active_(active), comm_(std::move(comm)), interval_(interval),
        thread_([this] { loop(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  bool join_waiting() const { return join_waiting_; }
  // Why the communicator was aborted ("" when it was not).
  std::string reason() const {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_ && reason_.empty()) {
      cv_.wait_for(lock, interval_, [&] { return stop_; });
      if (stop_) break;
      lock.unlock();
      std::string why;
      std::vector<std::string> dead;
      try {
        dead = rdzv_.dead_members(active_);
        for (const auto& id : dead) rdzv_.mark_gone(id);
        if (!dead.empty()) {
          why = "heartbeat of " + dead[0] + " stopped";
          for (size_t k = 1; k < dead.size(); ++k) why += ", of " + dead[k];
        } else if (rdzv_.superseded(active_)) {
          const auto waiting = rdzv_.waiting(active_);
          for (const auto& id : waiting) {
            if (std::find(active_.members.begin(), active_.members.end(), id) !=
                active_.members.end()) {
              why = id + " left generation " + std::to_string(active_.number) + " to recover";
              break;
            }
          }
          if (why.empty()) join_waiting_ = true;
        }
      } catch (const std::exception& e) {
        why = std::string("the store failed: ") + e.what();
      }
      if (!why.empty()) comm_->abort(why);
      lock.lock();
      reason_ = why;
    }
  }

  Rendezvous& rdzv_;
  Generation active_;
  std::shared_ptr<Communicator> comm_;
  std::chrono::milliseconds interval_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::string reason_;
  std::atomic<bool> join_waiting_{false};
  std::thread thread_;
};

}  // namespace

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

ElasticRunner::ElasticRunner(ElasticOptions options, std::shared_ptr<TcpStore> store)
    : o_(std::move(options)), store_(std::move(store)) {
  if (o_.group < 1) throw ConfigError("elastic: group (tp*pp) must be at least 1");
  if (o_.rendezvous.min_workers < o_.group) {
    throw ConfigError("elastic: min_workers (" + std::to_string(o_.rendezvous.min_workers) +
                      ") is smaller than one model replica (group of " +
                      std::to_string(o_.group) + " ranks)");
  }
  if (o_.snapshot_every < 1) throw ConfigError("elastic: snapshot_every must be at least 1");
  member_ = o_.member.empty() ? default_member() : o_.member;
  if (o_.checkpoint.run.empty() || o_.checkpoint.run == "tenax") {
    o_.checkpoint.run = o_.rendezvous.run;
  }
  o_.checkpoint.member = member_;
  if (o_.comm_timeout.count() <= 0) o_.comm_timeout = default_timeout();
  rdzv_ = std::make_unique<Rendezvous>(store_, member_, o_.rendezvous);
}

ElasticRunner::~ElasticRunner() = default;

void ElasticRunner::run(ElasticJob& job, int64_t steps) {
  std::unique_ptr<CheckpointEngine> engine;
  std::shared_ptr<Communicator> gcomm, acomm;
  std::optional<RecoveryEvent> pending;  // the re-formation in progress
  Clock::time_point detected = Clock::now();
  std::vector<std::string> previous;     // the previous generation's members
  bool started = false;                  // some generation has trained (state exists)
  int reformations = 0;
  const std::string run = o_.rendezvous.run;

  // Ends the current generation: keeps what its memory tier holds, aborts its communicators
  // (after this member joined the next one, so peers still blocked there come too).
  auto leave = [&] { engine.reset(); };
  auto abort_old = [&] {
    const std::string why = member_ + " left for a new generation";
    if (acomm) acomm->abort(why);
    if (gcomm) gcomm->abort(why);
  };

  auto done = [&] {
    if (!rdzv_->finished()) return false;
    if (started) CheckpointEngine::remove_memory(o_.checkpoint.run);
    return true;
  };
  for (;;) {
    if (done()) return;
    const auto rdzv_start = Clock::now();
    Generation gen = rdzv_->next(abort_old);
    acomm.reset();
    gcomm.reset();
    if (done()) return;
    const auto formed = Clock::now();
    if (pending) {
      pending->generation = gen.number;
      pending->members = gen.members;
      pending->lost = minus(previous, gen.members);
      pending->joined = minus(gen.members, previous);
      pending->rendezvous_ms = ms_between(rdzv_start, formed);
    }
    previous = gen.members;
    const int active_size = gen.size() / o_.group * o_.group;
    const bool active = gen.rank < active_size;
    Generation active_gen = gen;
    active_gen.members.resize(active_size);
    int64_t step = -1;
    try {
      CommOptions co;
      co.timeout = o_.comm_timeout;
      co.name = "elastic/" + run + "/g" + std::to_string(gen.number);
      gcomm = create_communicator(Backend::kGloo, store_, gen.rank, gen.size(), co);
      if (active) {
        co.name += "/active";
        acomm = create_communicator(o_.backend, store_, gen.rank, active_size, co);
        ElasticWorld world{gen.number, active_gen.members, gen.rank, active_size, acomm, store_};
        job.setup(world);
      }
      StateDict none;
      StateDict& state = active ? job.state() : none;
      CheckpointOptions copts = o_.checkpoint;
      copts.generation = gen.number;
      at::Tensor any = at::full({1}, started ? 1 : 0, at::kLong);  // did anyone train before?
      gcomm->all_reduce(any, ReduceOp::kMax);
      if (!started && any.item<int64_t>() == 1 && !pending) {
        // Our first generation, in a job that trained before us: we are the joiner.
        RecoveryEvent ev;
        ev.cause = "join";
        ev.detected_by = member_ + " joined";
        ev.generation = gen.number;
        ev.members = gen.members;
        ev.joined = {member_};
        ev.rendezvous_ms = ms_between(rdzv_start, formed);
        detected = rdzv_start;
        pending = ev;
      }
      started = any.item<int64_t>() == 1;
      if (pending && o_.faults) o_.faults->at_recovery();
      auto restored = CheckpointEngine::restore_from_group(copts, *gcomm, state);
      if (!active) {
        log(LogLevel::kInfo, "elastic: " + member_ + " is standby in generation " +
                                 std::to_string(gen.number) + " (" + std::to_string(gen.size()) +
                                 " members, " + std::to_string(active_size) + " active)");
        while (!rdzv_->finished() && !rdzv_->superseded(gen)) {
          std::this_thread::sleep_for(o_.rendezvous.heartbeat_interval);
        }
        continue;
      }
      engine = std::make_unique<CheckpointEngine>(copts, acomm, store_);
      if (!restored && !o_.checkpoint.durable.empty()) restored = engine->restore(state);
      if (!restored && started) {
        throw CheckpointError("elastic: generation " + std::to_string(gen.number) +
                              ": no member holds a complete snapshot of the training state");
      }
      step = restored ? restored->step : 0;
      if (restored) job.restored(step);
      started = true;
      if (pending) {
        pending->resumed_step = step;
        pending->tier = restored ? restored->tier : "none";
        pending->bytes = restored ? restored->bytes : 0;
        pending->restore_ms = ms_between(formed, Clock::now());
        job.after_reform(*pending);
      }
      Watchdog watchdog(*rdzv_, active_gen, acomm, o_.rendezvous.heartbeat_interval);
      at::Tensor flag = at::full({1}, 0, at::kLong);
      int64_t saved = step;  // the newest step in the memory tier
      for (; step < steps; ++step) {
        const auto step_start = Clock::now();
        try {
          // Step boundary: leave together when a joiner waits.
          flag.fill_(watchdog.join_waiting() ? 1 : 0);
          acomm->all_reduce(flag, ReduceOp::kMax);
          if (flag.item<int64_t>() == 1) break;
          job.train_step(step);
        } catch (const CommError& e) {
          const auto now = Clock::now();
          RecoveryEvent ev;
          ev.cause = "failure";
          ev.detected_by = watchdog.reason().empty() ? e.what() : watchdog.reason();
          ev.failed_step = step;
          ev.detect_ms = ms_between(step_start, now);
          detected = now;
          pending = ev;
          throw;
        }
        if ((step + 1) % o_.snapshot_every == 0 || step + 1 == steps) {
          engine->save(step + 1, job.state());
          saved = step + 1;
        }
        if (pending) {
          const auto now = Clock::now();
          pending->first_step_ms = ms_between(step_start, now);
          pending->total_ms = ms_between(detected, now);
          events_.push_back(*pending);
          log(LogLevel::kInfo, "elastic: recovery " + pending->to_json());
          if (on_event) on_event(*pending);
          pending.reset();
        }
      }
      if (step >= steps) {
        engine->wait();
        acomm->barrier();
        if (gen.rank == 0) rdzv_->finish();
        engine.reset();
        // Done: the snapshots are no longer needed for recovery (the durable tier keeps what
        // it persisted), and a new job of the same name must not resume from them.
        CheckpointEngine::remove_memory(o_.checkpoint.run);
        return;
      }
      // A joiner waits: re-form at this boundary, from a snapshot of this very step.
      if (saved != step) engine->save(step, job.state());
      RecoveryEvent ev;
      ev.cause = "join";
      ev.detected_by = "a member joined";
      detected = Clock::now();
      pending = ev;
      job.before_reform(*pending);
      leave();
    } catch (const CommError& e) {
      if (++reformations > o_.max_reformations) throw;
      if (!pending) {
        // A failure while forming (a member died during recovery).
        RecoveryEvent ev;
        ev.cause = "failure";
        ev.detected_by = e.what();
        ev.failed_step = step;
        detected = Clock::now();
        pending = ev;
      }
      log(LogLevel::kWarning, "elastic: " + member_ + ": generation " +
                                  std::to_string(gen.number) + " failed: " +
                                  pending->detected_by + "; re-forming");
      if (active) job.before_reform(*pending);
      abort_old();  // peers still blocked in this generation fail now, not at their timeout
      leave();
    }
  }
}

}  // namespace tenax
