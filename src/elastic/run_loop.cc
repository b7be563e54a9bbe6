#include "elastic/run_loop.h"

#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "elastic/elastic_metrics.h"
#include "elastic/member_order.h"
#include "elastic/preemption.h"
#include "elastic/watchdog.h"
#include "tenax/health/hang_watch.h"
#include "tenax/health/replica_hash.h"
#include "tenax/comm/flight_recorder.h"
#include "tenax/core/error.h"
#include "tenax/core/logging.h"
#include "tenax/core/metrics.h"
#include "tenax/core/time_use.h"

namespace tenax::detail {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Who asked this member to stop: its SIGTERM handler, a preempt() call, or another member.
std::string preemption_cause() {
  const int cause = preemption_requested();
  if (cause == SIGTERM) return "SIGTERM";
  if (cause == kPreemptCall) return "preempt()";
  if (cause == 0) return "asked by another member";
  return "signal " + std::to_string(cause);
}

}  // namespace

RunLoop::RunLoop(const ElasticOptions& options, std::shared_ptr<Store> store, std::string member,
                 Rendezvous& rdzv, const FaultInjector* faults, ElasticJob& job, int64_t steps,
                 Publish publish)
    : o_(options),
      store_(std::move(store)),
      member_(std::move(member)),
      rdzv_(rdzv),
      job_(job),
      steps_(steps),
      faults_(faults),
      publish_(std::move(publish)) {}

RunResult RunLoop::run() {
  RunResult result;
  try {
    result.steps = run_generations();
    // Preempted: the members agreed to stop, whichever of them was asked.
    result.reason = preempted_ ? StopReason::kPreempted : StopReason::kFinished;
    return result;
  } catch (const Departed&) {
  } catch (const std::exception&) {
    // A collective its own departure aborted, or a store call cut off with it.
    if (!departed()) throw;
  }
  std::lock_guard<std::mutex> lock(stop_mu_);
  result.reason = stop_reason_;
  result.why = stop_why_;
  result.steps = completed_;
  return result;
}

int64_t RunLoop::run_generations() {
  const HealthOptions& h = o_.health;
  if (h.hang_watchdog) {  // one watch for the whole run: rendezvous and persists too
    hang_ = std::make_unique<HangWatch>(h.deadline_k, h.deadline_floor, communication_waits(),
                                        [this](const std::string& report) { stuck(report); });
  }
  for (;;) {
    if (job_finished()) return completed_;
    const auto began = Clock::now();
    const Generation gen = form();
    if (job_finished()) return completed_;
    const auto formed = Clock::now();
    recovery_.formed(gen, previous_, ms_between(began, formed));
    previous_ = gen.members;
    step_ = -1;
    try {
      const std::optional<int64_t> done = enter(gen, began, formed);
      if (!done) continue;  // standby until the next generation
      const Ended ended = train(gen, *done);
      if (ended == Ended::kDone || ended == Ended::kPreempted) return completed_;
      engine_.reset();  // a joiner waits: the snapshots stay in memory for the next generation
    } catch (const CommError& e) {
      if (departed()) throw Departed{};
      if (++reformations_ > o_.max_reformations) throw;
      fail(gen, e);
    }
  }
}

Generation RunLoop::active_part(const Generation& gen) const {
  Generation active = gen;
  int n = detail::members_in_whole_blocks(gen.hosts, o_.group);
  if (o_.max_active > 0) n = std::min(n, o_.max_active / o_.group * o_.group);
  active.members.resize(n);
  if (!active.hosts.empty()) active.hosts.resize(n);
  return active;
}

bool RunLoop::job_finished() {
  if (!rdzv_.finished()) return false;
  if (started_) CheckpointEngine::remove_memory(o_.checkpoint.run);
  return true;
}

void RunLoop::abort_communicators() {
  abort_communicators_for(member_ + " left for a new generation");
}

void RunLoop::abort_communicators_for(const std::string& why) {
  std::lock_guard<std::mutex> lock(comm_mu_);
  if (acomm_) acomm_->abort(why);
  if (gcomm_) gcomm_->abort(why);
}

Generation RunLoop::form() {
  PhaseScope forming(Phase::kRendezvous);
  // Abort the old communicators once this member is in the next generation, so peers still
  // blocked there come too.
  Generation gen = rdzv_.next([this] { abort_communicators(); });
  std::lock_guard<std::mutex> lock(comm_mu_);
  acomm_.reset();
  gcomm_.reset();
  return gen;
}

std::optional<int64_t> RunLoop::enter(const Generation& gen, Clock::time_point began,
                                      Clock::time_point formed) {
  const Generation active_gen = active_part(gen);
  const int active_size = active_gen.size();
  const bool active = gen.rank < active_size;
  elastic_metrics().formed(gen.number, gen.size(), active_size, gen.rank);
  CommOptions co = o_.comm;
  co.timeout = o_.comm_timeout;
  co.name = "elastic/" + o_.rendezvous.run + "/g" + std::to_string(gen.number);
  if (active) {
    // The two communicators connect at once (each waits ~10 ms in Gloo's connection
    // handshake), the generation's over a store connection of its own.
    CommOptions aco = co;
    aco.name += "/active";
    auto group = std::async(std::launch::async, [&, store = store_->clone()] {
      return create_communicator(Backend::kGloo, store, gen.rank, gen.size(), co);
    });
    auto a = create_communicator(o_.backend, store_, gen.rank, active_size, aco);
    auto g = group.get();
    std::lock_guard<std::mutex> lock(comm_mu_);
    acomm_ = std::move(a);
    gcomm_ = std::move(g);
  } else {
    auto g = create_communicator(Backend::kGloo, store_, gen.rank, gen.size(), co);
    std::lock_guard<std::mutex> lock(comm_mu_);
    gcomm_ = std::move(g);
  }
  if (departed()) throw Departed{};  // its abort came before these communicators
  if (active) {
    job_.setup(ElasticWorld{gen.number, active_gen.members, gen.rank, active_size, acomm_, store_,
                             active_gen.hosts});
  }
  StateDict none;
  StateDict& state = active ? job_.state() : none;
  CheckpointOptions copts = o_.checkpoint;
  copts.generation = gen.number;

  // Did anyone train before? Then a member that did not, with no recovery open, is a joiner.
  at::Tensor any = at::full({1}, started_ ? 1 : 0, at::kLong);
  gcomm_->all_reduce(any, ReduceOp::kMax);
  const bool trained_before = any.item<int64_t>() == 1;
  if (!started_ && trained_before && !recovery_.open()) {
    recovery_.arrived(member_, gen, began, ms_between(began, formed));
  }
  started_ = trained_before;
  if (recovery_.open() && faults_) faults_->at_recovery();

  auto restored = CheckpointEngine::restore_from_group(copts, *gcomm_, state);
  if (!active) {
    log(LogLevel::kInfo, "elastic: " + member_ + " is standby in generation " +
                             std::to_string(gen.number) + " (" + std::to_string(gen.size()) +
                             " members, " + std::to_string(active_size) + " active)");
    // A standby (a warm spare) is what a re-formation waits for: look often.
    const auto poll = std::min<std::chrono::milliseconds>(o_.rendezvous.heartbeat_interval,
                                                          std::chrono::milliseconds(50));
    while (!departed() && !rdzv_.finished() && !rdzv_.superseded(gen)) {
      std::this_thread::sleep_for(poll);
    }
    if (departed()) throw Departed{};
    return std::nullopt;
  }
  engine_ = std::make_unique<CheckpointEngine>(copts, acomm_, store_);
  if (!restored && !o_.checkpoint.durable.empty()) restored = engine_->restore(state);
  if (!restored && started_) {
    throw CheckpointError("elastic: generation " + std::to_string(gen.number) +
                          ": no member holds a complete snapshot of the training state");
  }
  const int64_t step = restored ? restored->step : 0;
  step_ = step;
  if (restored) job_.restored(step);
  started_ = true;
  if (recovery_.open()) {
    recovery_.restored(step, restored, ms_between(formed, Clock::now()));
    job_.after_reform(recovery_.event());
  }
  return step;
}

RunLoop::Ended RunLoop::train(const Generation& gen, int64_t step) {
  const Generation active = active_part(gen);
  // With the active world at max_active, a joiner only adds a spare: training goes on.
  const bool full = o_.max_active > 0 && active.size() >= o_.max_active / o_.group * o_.group;
  Watchdog watchdog(rdzv_, active, acomm_, o_.rendezvous.heartbeat_interval,
                    /*joiners_interrupt=*/!full);
  const HealthOptions& h = o_.health;
  // A new world: its steps take their own time (another size, cold caches).
  if (hang_) hang_->forget(Phase::kStep);
  StragglerDetector stragglers(h.straggler_threshold, h.straggler_window, h.straggler_steps);
  at::Tensor flag = at::zeros({2 + active.size()}, at::kLong);
  int64_t saved = step;  // the newest step in the memory tier
  bool preempted = false;
  double compute = 0;  // this member's compute seconds in the previous step
  for (step_ = step; step_ < steps_; ++step_) {
    if (departed()) throw Departed{};  // decided on another thread (the hang watch's)
    const auto step_start = Clock::now();
    const auto comm_before = communication_wait_time();
    PhaseScope stepping(Phase::kStep);  // the hang watch's clock of this step
    const bool trained_before = trained_here_;
    if (!trained_here_) {
      account_time(TimeUse::kStartup, process_seconds());
      trained_here_ = true;
    }
    const double evaluation_before = accounted_time(TimeUse::kEvaluation);
    double stall = 0;
    try {
      const bool joiner = agree_at_boundary(flag, gen.rank, active, watchdog.join_waiting(),
                                            compute, stragglers, &preempted);
      if (joiner && !preempted) break;
      if (faults_) faults_->at_step(step_ + 1);  // steps count from 1 in fault specs
      job_.train_step(step_);
      if (h.replica_hash_every > 0 && (step_ + 1) % h.replica_hash_every == 0) {
        compare_replicas(active);
      }
    } catch (const StepRollback& e) {
      step_ = roll_back(e) - 1;  // the loop's ++ makes it the restored step
      compute = 0;
      continue;
    } catch (const CommError& e) {
      recovery_.failure(watchdog.reason().empty() ? e.what() : watchdog.reason(), step_,
                        ms_between(step_start, Clock::now()));
      throw;
    }
    if (preempted || (step_ + 1) % o_.snapshot_every == 0 || step_ + 1 == steps_) {
      const auto save_start = Clock::now();
      PhaseScope saving(Phase::kSave);
      engine_->save(step_ + 1, job_.state(), /*persist_now=*/preempted);
      stall = ms_between(save_start, Clock::now()) / 1000;
      saved = step_ + 1;
    }
    completed_ = step_ + 1;
    const double seconds = ms_between(step_start, Clock::now()) / 1000;
    const double evaluation = accounted_time(TimeUse::kEvaluation) - evaluation_before;
    compute = seconds - stall - evaluation -
              std::chrono::duration<double>(communication_wait_time() - comm_before).count();
    account_step(step_, seconds, stall, evaluation);
    if (recovery_.open()) complete_recovery(ms_between(step_start, Clock::now()), trained_before);
    if (preempted) {
      ++step_;
      stop_preempted(gen);
      preempted_ = step_ < steps_;  // at the last step it simply finished
      return Ended::kPreempted;
    }
  }
  if (step_ >= steps_) {
    finish_job(gen);
    return Ended::kDone;
  }
  // A joiner waits: re-form at this boundary, from a snapshot of this very step.
  if (saved != step_) engine_->save(step_, job_.state());
  recovery_.join("a member joined");
  job_.before_reform(recovery_.event());
  return Ended::kJoinerWaits;
}

bool RunLoop::agree_at_boundary(at::Tensor& flag, int rank, const Generation& active,
                                bool joiner_waits, double compute, StragglerDetector& stragglers,
                                bool* preempted) {
  // Slot 0: a joiner waits (leave together for the next generation); slot 1: a member was told
  // to stop (preemption); slot 2 + rank: each one's compute time of the previous step (µs), for
  // the straggler score.
  flag.zero_();
  int64_t* f = flag.data_ptr<int64_t>();
  f[0] = joiner_waits ? 1 : 0;
  f[1] = preemption_requested();
  f[2 + rank] = static_cast<int64_t>(compute * 1e6);
  acomm_->all_reduce(flag, ReduceOp::kMax);
  f = flag.data_ptr<int64_t>();
  *preempted = f[1] != 0;
  if (o_.health.straggler != StragglerPolicy::kOff) {
    const int n = active.size();
    std::vector<double> per_rank(n);
    for (int r = 0; r < n; ++r) per_rank[r] = static_cast<double>(f[2 + r]) / 1e6;
    const std::vector<int> slow = stragglers.add(per_rank);
    if (!slow.empty()) straggling(active, slow, stragglers);
  }
  return f[0] == 1;
}

void RunLoop::complete_recovery(double first_step_ms, bool trained_before) {
  const RecoveryEvent ev = recovery_.complete(first_step_ms);
  // A process's own arrival is its start-up, already counted at its first step.
  if (trained_before) {
    account_time(TimeUse::kRecovery, (ev.detect_ms + ev.total_ms - ev.first_step_ms) / 1000);
  }
  elastic_metrics().recovered(ev);
  publish_(ev);
}

void RunLoop::finish_job(const Generation& gen) {
  finishing_ = true;
  engine_->wait();
  acomm_->barrier();
  if (gen.rank == 0) rdzv_.finish();
  engine_.reset();
  // Done: the snapshots are no longer needed for recovery (the durable tier keeps what it
  // persisted), and a new job of the same name must not resume from them.
  CheckpointEngine::remove_memory(o_.checkpoint.run);
}

void RunLoop::account_step(int64_t step, double seconds, double stall, double evaluation) {
  account_time(TimeUse::kCheckpointStall, stall);
  const double work = seconds - stall - evaluation;
  if (step < high_water_) {
    account_time(TimeUse::kRedoneSteps, work);
  } else {
    account_time(TimeUse::kProductive, work);
    high_water_ = step + 1;
  }
  elastic_metrics().step->set(static_cast<double>(step + 1));
  set_log_step(step + 1);
}

void RunLoop::stop_preempted(const Generation& gen) {
  finishing_ = true;
  const auto began = Clock::now();
  const bool durable = !o_.checkpoint.durable.empty();
  engine_->wait(o_.preempt_grace);
  const CheckpointStatus st = engine_->status();
  if (durable && st.last_persisted != step_) {
    throw CheckpointError("elastic: preempted after step " + std::to_string(step_) +
                          ", but the durable tier holds step " +
                          std::to_string(st.last_persisted) + " on rank " +
                          std::to_string(gen.rank) + ": " + st.last_error);
  }
  acomm_->barrier();
  if (gen.rank == 0) rdzv_.finish();  // standby members leave too
  engine_.reset();
  if (gen.rank == 0) {
    log(LogLevel::kInfo,
        "elastic: preempted (" + preemption_cause() + "): stopped after step " +
            std::to_string(step_) + " of " + std::to_string(steps_) +
            "; step " + std::to_string(step_) +
            (durable ? " is in the durable tier" : " is in memory only (no durable tier)") +
            " (" + std::to_string(static_cast<int64_t>(ms_between(began, Clock::now()))) +
            " ms to persist)");
  }
}

void RunLoop::straggling(const Generation& active, const std::vector<int>& slow,
                         const StragglerDetector& scores) {
  auto& m = metrics::registry();
  std::string names;
  bool me = false;
  for (int r : slow) {
    const std::string& id = active.members[r];
    const std::string host = r < static_cast<int>(active.hosts.size()) ? active.hosts[r] : "";
    char score[32];
    std::snprintf(score, sizeof(score), "%.2f", scores.score(r));
    names += (names.empty() ? "" : ", ") + id + (host.empty() ? "" : " on " + host) + " (" + score +
             "x the median compute time)";
    me |= id == member_;
    m.family("tenax_health_stragglers_total", "Members found straggling, by action",
             metrics::Type::kCounter, {"action"})
        .counter({to_string(o_.health.straggler)})
        .inc();
    if (active.rank == 0 || id == member_) {
      append_event(o_.events_file, nlohmann::json{{"event", "straggler"},
                                  {"member", id},
                                  {"host", host},
                                  {"score", scores.score(r)},
                                  {"step", step_},
                                  {"action", to_string(o_.health.straggler)}}
                       .dump());
    }
  }
  m.gauge("tenax_health_straggler_score",
          "This member's compute time over the median of its generation (window mean)")
      .set(scores.score(active.rank));
  const std::string why =
      "straggler: " + names + " over " + std::to_string(o_.health.straggler_steps) + " steps";
  // Evicting must leave enough members to train on: otherwise the job would stop, which costs
  // more than a slow member does.
  const bool room = active.size() - static_cast<int>(slow.size()) >= o_.rendezvous.min_workers;
  if (o_.health.straggler != StragglerPolicy::kEvict || !room) {
    if (active.rank == 0) {
      log(LogLevel::kWarning, "health: " + why +
                                  (o_.health.straggler == StragglerPolicy::kEvict
                                       ? " (not evicted: the job would fall below its " +
                                             std::to_string(o_.rendezvous.min_workers) + " workers)"
                                       : ""));
    }
    return;
  }
  if (me) {
    log(LogLevel::kError, "health: " + member_ + " is evicted as a " + why +
                              "; the others re-form without it. It leaves the run (" +
                              to_string(StopReason::kEvicted) + ", exit code " +
                              std::to_string(exit_code(StopReason::kEvicted)) + ")");
    depart(StopReason::kEvicted, why);
    throw Departed{};
  }
  for (int r : slow) rdzv_.mark_gone(active.members[r]);
  throw CommError("evicted " + why);
}

void RunLoop::compare_replicas(const Generation& active) {
  const int n = active.size();
  const StateDict& state = job_.state();
  at::Tensor t = at::zeros({2 * n}, at::kLong);
  int64_t* p = t.data_ptr<int64_t>();
  p[2 * active.rank] = static_cast<int64_t>(state_signature(state));
  p[2 * active.rank + 1] = static_cast<int64_t>(state_hash(state));
  acomm_->all_reduce(t, ReduceOp::kSum);  // one non-zero value per slot: the sum is it
  p = t.data_ptr<int64_t>();
  std::vector<uint64_t> sigs(n), hashes(n);
  for (int r = 0; r < n; ++r) {
    sigs[r] = static_cast<uint64_t>(p[2 * r]);
    hashes[r] = static_cast<uint64_t>(p[2 * r + 1]);
  }
  const std::vector<int> bad = replicas_that_differ(sigs, hashes);
  if (bad.empty()) return;
  std::string names;
  bool me = false;
  for (int r : bad) {
    names += (names.empty() ? "" : ", ") + active.members[r];
    me |= r == active.rank;
  }
  metrics::registry()
      .counter("tenax_health_replica_mismatches_total",
               "Replicas whose state hash differed from their group's majority")
      .inc(static_cast<double>(bad.size()));
  const std::string why = "after step " + std::to_string(step_ + 1) + " the state of " + names +
                          " differs from the other replicas' (suspected silent data corruption)";
  if (me) {
    log(LogLevel::kError, "health: " + why + "; " + member_ + " leaves the run (" +
                              to_string(StopReason::kRemoved) + ", exit code " +
                              std::to_string(exit_code(StopReason::kRemoved)) +
                              ") and, restarted, takes its state from a peer");
    depart(StopReason::kRemoved, why);
    throw Departed{};
  }
  for (int r : bad) rdzv_.mark_gone(active.members[r]);
  throw CommError("replica check: " + why);
}

int64_t RunLoop::roll_back(const StepRollback& e) {
  log(LogLevel::kWarning, std::string("elastic: ") + e.what());
  rollbacks_at_ = rollback_step_ == step_ ? rollbacks_at_ + 1 : 1;
  rollback_step_ = step_;
  if (rollbacks_at_ > 3) {
    throw StepRollback(std::string(e.what()) + " (step " + std::to_string(step_ + 1) +
                       " failed after 3 rollbacks in a row: giving up)");
  }
  engine_->wait();
  const std::optional<RestoreResult> r = engine_->restore(job_.state());
  if (!r)
    throw CheckpointError(std::string("elastic: cannot roll back (") + e.what() +
                          "): no snapshot to restore");
  job_.restored(r->step);
  metrics::registry()
      .counter("tenax_health_rollbacks_total", "Steps rolled back to a snapshot")
      .inc();
  return r->step;
}

void RunLoop::stuck(const std::string& report) {
  log(LogLevel::kError,
      "health: " + member_ + " is stuck in step " + std::to_string(step_ + 1) + ": " + report);
  metrics::registry()
      .counter("tenax_health_hangs_total",
               "Phases (steps, saves, persists, ...) that ran past "
               "their deadline")
      .inc();
  dump_flight_records("hang: step " + std::to_string(step_ + 1) + ": " + report.substr(0, 200));
  depart(StopReason::kHung, "stuck in step " + std::to_string(step_ + 1));
}

bool RunLoop::depart(StopReason reason, const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (departed_) return false;
    stop_reason_ = reason;
    stop_why_ = why;
    departed_ = true;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  // The program first (it may end the process here), then the communicators: no collective of
  // this member completes from here on (an abort may wait on a store out of reach).
  if (o_.on_stop) o_.on_stop(reason, why);
  abort_communicators_for(member_ + " left: " + why);
  if (reason == StopReason::kFenced) {
    rdzv_.interrupt();  // a wait for the next generation ends now, not at the join timeout
  } else {
    try {
      rdzv_.mark_gone(member_);
    } catch (const std::exception& e) {
      log(LogLevel::kWarning, "elastic: " + member_ + " could not mark itself gone (" +
                                  e.what() + "); its heartbeat's end will tell the others");
    }
  }
  return true;
}

void RunLoop::fenced(const std::string& why) {
  if (finishing_) return;
  log(LogLevel::kError, "elastic: " + member_ + " is fenced out: " + why +
                            "; the others re-form without it. It completed " +
                            std::to_string(completed_.load()) + " steps; it leaves the run (" +
                            to_string(StopReason::kFenced) + ", exit code " +
                            std::to_string(exit_code(StopReason::kFenced)) +
                            "; its snapshots stay in this host's memory; restarted, it rejoins "
                            "as a new member)");
  depart(StopReason::kFenced, why);
}

void RunLoop::fail(const Generation& gen, const CommError& e) {
  // A failure while forming or restoring (a member died during recovery) has no record yet.
  if (!recovery_.open()) recovery_.failure(e.what(), step_, 0);
  log(LogLevel::kWarning, "elastic: " + member_ + ": generation " + std::to_string(gen.number) +
                              " failed: " + recovery_.event().detected_by + "; re-forming");
  if (gen.rank < active_part(gen).size()) job_.before_reform(recovery_.event());
  abort_communicators();  // peers still blocked in this generation fail now
  engine_.reset();        // the memory tier keeps its snapshots
}

}  // namespace tenax::detail
