#pragma once

// One ElasticRunner::run(): the generations of a job, each lived as named phases (internal to
// the elastic layer).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "elastic/recovery_recorder.h"
#include "tenax/health/hang_watch.h"
#include "tenax/health/straggler.h"
#include "tenax/checkpoint/engine.h"
#include "tenax/comm/communicator.h"
#include "tenax/core/error.h"
#include "tenax/core/fault_injection.h"
#include "tenax/elastic/elastic.h"
#include "tenax/elastic/rendezvous.h"

namespace tenax::detail {

// Runs on the caller's thread; owns every member below. A generation's life:
//   form()    join the next generation (aborting the previous one's communicators once in);
//   enter()   communicators, the job's setup, the state restored (standby members wait);
//   train()   steps until the job is done, a joiner waits at a boundary, or a step fails.
// A failure (CommError) anywhere in enter() or train() ends the generation: the recorder holds
// what happened and the loop forms the next one.
class RunLoop {
 public:
  using Publish = std::function<void(const RecoveryEvent&)>;
  // `faults` (may be null) fire before each step and as re-formations begin.
  RunLoop(const ElasticOptions& options, std::shared_ptr<Store> store, std::string member,
          Rendezvous& rdzv, const FaultInjector* faults, ElasticJob& job, int64_t steps,
          Publish publish);

  // Until the job is done, preempted, or this member must leave (returns why, see
  // ElasticRunner::run), or a failure is not recovered from (throws).
  RunResult run();

  // This member was fenced out (the rendezvous heartbeat thread calls it): unless the job is
  // finishing, says so and departs with kFenced.
  void fenced(const std::string& why);

 private:
  enum class Ended { kDone, kPreempted, kJoinerWaits, kStandby };
  // Thrown on the caller's thread once this member has departed: unwinds to run().
  struct Departed {};

  // The generations until the job is done or preempted (returns the steps done).
  int64_t run_generations();

  // The active members of `gen`: the largest multiple of `group` ranks, in rendezvous order
  // (the rest wait as standby).
  Generation active_part(const Generation& gen) const;
  // True once the job has ended (removing this host's snapshots when this member trained).
  bool job_finished();
  // Joins the next generation; the recovery in progress learns its members.
  Generation form();
  // Communicators, setup and the restored state; returns the steps already done, or nullopt
  // for a standby member (it waits until the generation is superseded or the job ends).
  std::optional<int64_t> enter(const Generation& gen, std::chrono::steady_clock::time_point began,
                               std::chrono::steady_clock::time_point formed);
  // Steps from `step` until the job is done, a joiner waits at a boundary, or the members
  // agree to stop for a preemption.
  Ended train(const Generation& gen, int64_t step);
  // The step boundary's all-reduce over the active members (`flag`: 2 + their count slots):
  // whether a joiner waits (returned), whether a member was preempted (*preempted), and each
  // one's compute seconds of the previous step, fed to the straggler check.
  bool agree_at_boundary(at::Tensor& flag, int rank, const Generation& active, bool joiner_waits,
                         double compute, StragglerDetector& stragglers, bool* preempted);
  // The first step after a re-formation ended `first_step_ms` after it began: closes, accounts
  // and publishes the recovery event.
  void complete_recovery(double first_step_ms, bool trained_before);
  // Every step is done: the last snapshot, the job marked finished, this host's memory freed.
  void finish_job(const Generation& gen);
  // Preempted after `step_` steps (saved with persist_now): waits for the durable tier, ends
  // the job for every member, and says so.
  void stop_preempted(const Generation& gen);
  // Goodput: step `step` took `seconds`, of which `stall` in save() and `evaluation` evaluating.
  void account_step(int64_t step, double seconds, double stall, double evaluation);
  // A failed generation: records it (unless the failure came during a step, already recorded)
  // and makes every peer still blocked in it fail now rather than at its timeout.
  void fail(const Generation& gen, const CommError& e);
  void abort_communicators();
  void abort_communicators_for(const std::string& why);
  // Health, during training: `slow` (ranks of `active`) straggled; report them, or evict them
  // (they leave; the others throw CommError and re-form without them).
  void straggling(const Generation& active, const std::vector<int>& slow,
                  const StragglerDetector& scores);
  // Compares the replicas' state hashes; one that differs leaves and the others re-form.
  void compare_replicas(const Generation& active);
  // A StepRollback: restores the newest snapshot on every member; returns its step.
  int64_t roll_back(const StepRollback& e);
  // The hang watchdog's verdict (its thread): says what each thread does, dumps the flight
  // records and departs with kHung.
  void stuck(const std::string& report);
  // This member stops (any thread; the first call wins, later ones return false): records why,
  // tells on_stop, aborts its communicators (peers and its own blocked collectives fail at
  // once) and marks it gone in the rendezvous unless it is fenced (the store is out of reach).
  // The caller's thread then unwinds to run() (throw Departed, or a failed collective).
  bool depart(StopReason reason, const std::string& why);
  bool departed() const { return departed_.load(); }

  const ElasticOptions& o_;
  const std::shared_ptr<Store> store_;
  const std::string member_;
  Rendezvous& rdzv_;
  ElasticJob& job_;
  const int64_t steps_;
  const FaultInjector* const faults_;
  const Publish publish_;

  // Set on the caller's thread, under comm_mu_; aborted from any thread under it.
  std::mutex comm_mu_;
  std::shared_ptr<Communicator> gcomm_;  // over every member of the generation
  std::shared_ptr<Communicator> acomm_;  // over its active members (null on a standby)
  std::unique_ptr<CheckpointEngine> engine_;
  std::unique_ptr<HangWatch> hang_;  // with health.hang_watchdog, for the whole run
  RecoveryRecorder recovery_;
  std::vector<std::string> previous_;  // the previous generation's members
  bool started_ = false;               // some generation has trained (state exists)
  int reformations_ = 0;
  int64_t step_ = -1;  // the step in progress (-1: none)
  // Goodput: the most steps ever completed here (a step below it is done again), and whether
  // this process has trained (its first step ends its start-up).
  int64_t high_water_ = 0;
  int64_t rollback_step_ = -1, rollbacks_at_ = 0;  // rollbacks in a row at one step
  bool trained_here_ = false;
  bool preempted_ = false;  // the members agreed to stop before the last step
  // Read by fenced() on the heartbeat thread.
  std::atomic<int64_t> completed_{0};   // steps completed in this process
  std::atomic<bool> finishing_{false};  // the last step is done
  // Why this member stopped early (depart()): written once under stop_mu_, then departed_ set.
  std::mutex stop_mu_;
  StopReason stop_reason_ = StopReason::kFinished;
  std::string stop_why_;
  std::atomic<bool> departed_{false};
};

}  // namespace tenax::detail
