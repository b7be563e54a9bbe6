#pragma once

// In-process recovery: ElasticRunner runs a training job's steps and, when a member of the
// worker set fails or a new one arrives, re-forms the set without restarting the survivors.
//
// Per generation: rendezvous (rendezvous.h) → a communicator over the generation's members →
// the active world (the largest multiple of `group` ranks, in rendezvous order; the rest wait
// as standby) → the job's setup() on the active world → the state of the newest step the
// members hold in memory, gathered from their own snapshots and peers' replicas
// (CheckpointEngine::restore_from_group), else from the durable tier → steps, each followed by
// a memory snapshot. A step that throws a communication error (a peer died or hung), or during
// which a member's heartbeat stopped (its communicator is then aborted), is discarded; the
// survivors form the next generation and resume from the last completed snapshot. A joiner
// opens a new generation; the active members enter it at the next step boundary (they agree on
// which with one all-reduce per step) and the joiner receives its state from their memory.
//
// Each re-formation is reported as a RecoveryEvent with its phases and their durations, logged,
// counted in the metrics registry (tenax_recoveries_total, tenax_recovery_phase_seconds), and
// appended as one JSON line to ElasticOptions::events_file when there is one.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tenax/checkpoint/engine.h"
#include "tenax/checkpoint/state.h"
#include "tenax/comm/communicator.h"
#include "tenax/core/error.h"
#include "tenax/core/export.h"
#include "tenax/core/fault_injection.h"
#include "tenax/elastic/rendezvous.h"
#include "tenax/health/health.h"
#include "tenax/store/store.h"

namespace tenax {

// Why ElasticRunner::run returned for this member.
enum class StopReason {
  kFinished,   // every step is done
  kPreempted,  // preempt() (or SIGTERM with handle_sigterm): the job stopped at a durable step
  kFenced,     // cut off from the store past the heartbeat timeout: the others went on without it
  kEvicted,    // a straggler the health checks evicted (StragglerPolicy::kEvict)
  kRemoved,    // its state differed from the other replicas' (silent corruption suspected)
  kHung,       // a phase (step, save, persist, rendezvous) ran past its hang-watch deadline
};

// "finished", "preempted", "fenced", "evicted", "removed", "hung".
TENAX_API const char* to_string(StopReason reason);

// The exit status a launcher understands for `reason` (docs/elastic.md, "Exit codes"): 0 for
// kFinished and kPreempted, kFencedExitCode (75) for kFenced, kUnhealthyExitCode (76) for
// kEvicted (tenaxrun does not restart it), kRemovedExitCode (77) for kRemoved and kHung
// (tenaxrun restarts it; it rejoins and takes its state from peers).
TENAX_API int exit_code(StopReason reason);

// What ElasticRunner::run returns.
struct TENAX_API RunResult {
  StopReason reason = StopReason::kFinished;
  // Steps done: all of them when finished; the durable step reached when preempted; the steps
  // this member completed before it stopped otherwise.
  int64_t steps = 0;
  std::string why;  // for a member that stopped early, in words; "" otherwise
  bool finished() const { return reason == StopReason::kFinished; }
};

struct TENAX_API ElasticOptions {
  RendezvousOptions rendezvous;  // run name, min/max workers, join timeout, heartbeats
  // This worker's id: stable across its restarts so it finds its own memory snapshots. "":
  // launch_info().member (TENAX_MEMBER_ID, else "w<rank>").
  std::string member;
  // Ranks per model replica (tp·pp): the active world is the largest multiple of it.
  int group = 1;
  // Train on at most this many members (0: all that form whole groups). The others wait as
  // warm spares (process started, job built, in the rendezvous): one takes a lost member's
  // place at the next re-formation, and a worker that joins while the active world is full
  // waits as a spare without interrupting training. 0: TENAX_ACTIVE_WORKERS when the launcher
  // sets it (tenaxrun --spares).
  int max_active = 0;
  Backend backend = Backend::kGloo;
  std::chrono::milliseconds comm_timeout{0};  // bound on every collective (0: TENAX_TIMEOUT)
  // The communicators' hostname, checks, shared memory and device; the runner names them and
  // bounds them by comm_timeout. Unset fields (empty hostname, unset optionals) take
  // CommOptions::from_environment()'s.
  CommOptions comm;
  // Each recovery (and straggler) event is appended here as one JSON line: O_APPEND and one
  // write, so the members of a host may share the file. "": TENAX_EVENTS_FILE (none if unset).
  std::string events_file;
  // Memory (and peer, and durable) tiers. run "" : the rendezvous run. member and generation
  // are set by the runner.
  CheckpointOptions checkpoint;
  int64_t snapshot_every = 1;  // memory snapshot every N steps: a failure redoes < N steps
  int max_reformations = 100;  // then the next failure is thrown
  // Graceful preemption: ElasticRunner::preempt() (from any thread or a signal handler) makes
  // the active members agree at the next step boundary, finish that step, persist it to the
  // durable tier (memory only when there is none) and return from run() within
  // `preempt_grace`.
  std::chrono::milliseconds preempt_grace{25000};
  // The signals are the program's: tenax installs no handler unless this is set. With it, while
  // run() trains, SIGTERM (what Slurm sends at a time limit or on `scancel --signal=TERM`, what
  // tenaxrun forwards) calls preempt(); a handler the program had installed for SIGTERM before
  // run() is called after it, and is back in place when run() returns.
  bool handle_sigterm = false;
  // This member must stop for a reason other than finishing or preemption (StopReason below):
  // called once, at once, on the thread that decided it (the heartbeat thread for kFenced, the
  // hang watch's for kHung, the caller's otherwise), before run() returns — which for a step
  // hung where no abort reaches (a kernel that never returns) is never. tenax never ends the
  // process; a program that must not wait for run() ends it here. May be empty; must not throw.
  std::function<void(StopReason reason, const std::string& why)> on_stop;
  // Health checks before joining (preflight) and while training (stragglers, hangs, replica
  // comparison): tenax/health/health.h. A member the preflight fails makes run() throw
  // HealthError; the others start without it when min_workers allows, else their TimeoutError
  // lists every member kept out and why.
  HealthOptions health;
  // Faults for tests and demos: its step faults fire before each step (steps counted from 1),
  // its @recovery faults as re-formations begin. null: TENAX_FAULT for the launcher's rank.
  const FaultInjector* faults = nullptr;
};

// The active world of one generation, as the job sees it.
struct TENAX_API ElasticWorld {
  int64_t generation = 0;
  std::vector<std::string> members;  // the active members; a member's rank is its index
  int rank = 0, size = 1;
  std::shared_ptr<Communicator> comm;  // over the active members
  std::shared_ptr<Store> store;
  std::vector<std::string> hosts;  // hosts[i]: the host of members[i] ("" when unknown)
};

// Thrown by ElasticJob::train_step to discard the step and go back to the newest snapshot in
// memory (a non-finite loss under a rollback policy): every active member must throw it in the
// same step. The runner restores the snapshot on every member, calls restored(), and goes on.
class TENAX_API StepRollback : public Error {
 public:
  explicit StepRollback(const std::string& what) : Error(what) {}
};

// The exit status of a process whose elastic member was fenced out (ElasticRunner::run).
inline constexpr int kFencedExitCode = 75;

// One re-formation, from the failure (or the joiner's arrival) to the first completed step.
struct TENAX_API RecoveryEvent {
  int64_t generation = 0;          // the generation formed
  std::string cause;               // "failure" or "join"
  std::string detected_by;         // the error, or "heartbeat of <id> stopped", or "<id> joined"
  std::vector<std::string> lost;   // members of the previous generation not in this one
  std::vector<std::string> joined; // members new in this one
  std::vector<std::string> members;
  int64_t failed_step = -1;        // the step that was discarded (-1: none)
  int64_t resumed_step = -1;       // steps completed at the restart point
  std::string tier;                // where this member's state came from: "memory" (its own
                                   // snapshot), "peer" (a replica another member held),
                                   // "durable", or "none" (no member held any state: step 0)
  int64_t bytes = 0;               // state bytes this member read or received
  // Phases, in milliseconds. detect: from the start of the failed step (or the last heartbeat
  // seen from the dead member) to the moment the failure was known here; rendezvous: to the
  // generation's close; restore: communicators, setup and state; first_step: the first step
  // after it; total: from the failure's detection to the end of that step.
  double detect_ms = 0, rendezvous_ms = 0, restore_ms = 0, first_step_ms = 0, total_ms = 0;
  std::string member;      // the member that recorded it
  std::string host;        // its host
  double detected_at = 0;  // Unix time (seconds) the cause was known here; the phases follow
                           // one another from detected_at - detect_ms

  // One line of JSON with every field, and "phases": [{"phase","start","end"}] in Unix seconds.
  std::string to_json() const;
};

// What the runner drives. All methods run on active members only, collectively, and on the
// thread that called ElasticRunner::run(), one at a time.
class TENAX_API ElasticJob {
 public:
  virtual ~ElasticJob() = default;
  // Builds what depends on the world (mesh, model wrappers, optimizer, data loader) after each
  // formation; initial values are those of step 0.
  virtual void setup(const ElasticWorld& world) = 0;
  // The state to snapshot and restore, referring to live tensors (restore fills them in place).
  virtual StateDict& state() = 0;
  // After state() was restored: continue from `steps_done` completed steps.
  virtual void restored(int64_t steps_done) = 0;
  // Step `step` (0-based). A communication error it throws triggers recovery; whatever the
  // step changed is overwritten by the restore.
  virtual void train_step(int64_t step) = 0;
  // Around a re-formation (e.g. to flush a data loader, or log).
  virtual void before_reform(const RecoveryEvent& event) { (void)event; }
  virtual void after_reform(const RecoveryEvent& event) { (void)event; }
};

// Thread rules: run() and events() on one thread (the one that trains); on_event is called on
// that thread as each event completes; preempt() from any thread or a signal handler;
// ElasticOptions::on_stop on the thread that decided the stop (see there). The runner's own
// threads (the rendezvous heartbeat, the hang watch, the checkpoint engine's) are started and
// joined by it.
class TENAX_API ElasticRunner {
 public:
  // Connects the rendezvous (starts heartbeating). Part of the launch edge: what `options`
  // leaves unset it takes from the environment (TENAX_ACTIVE_WORKERS, TENAX_TIMEOUT,
  // TENAX_PREFLIGHT, TENAX_EVENTS_FILE, TENAX_FAULT, CommOptions::from_environment and, for the
  // checkpoint, its timeout and S3Options::from_environment), as documented on each option.
  // Throws ConfigError for bad options (e.g. min_workers smaller than group).
  ElasticRunner(ElasticOptions options, std::shared_ptr<Store> store);
  ~ElasticRunner();
  ElasticRunner(const ElasticRunner&) = delete;
  ElasticRunner& operator=(const ElasticRunner&) = delete;

  // Runs until `steps` steps are done, through any number of re-formations (up to
  // max_reformations), and returns why it stopped with the steps done. kFinished: on every
  // member (standby ones too) once the job is done, after removing the run's memory regions on
  // its host (a new job of the same name starts fresh). kPreempted: after preempt(), with fewer
  // steps, the step returned durable (the memory regions stay).
  // A member that must leave while the others go on returns too, once its own thread comes
  // back (its communicators are aborted, so a blocked collective fails at once): kFenced (cut
  // off from the store, its host partitioned or the store's host lost, for the heartbeat
  // timeout: the others re-form without it, so it must not train on), kEvicted, kRemoved and
  // kHung (the health checks). Its snapshots stay in its host's memory; restarted, it rejoins as
  // a new member. on_stop (ElasticOptions) hears of it first.
  // Throws TimeoutError when a generation cannot gather min_workers within the join timeout;
  // the snapshots stay in this host's memory (and what was persisted in the durable tier), so a
  // relaunch of the same run resumes after the last completed step. Rethrows errors that are
  // not communication failures.
  // Called by one thread at a time.
  RunResult run(ElasticJob& job, int64_t steps);

  // Asks the job to stop at the next step boundary, durable (see preempt_grace): run() then
  // returns kPreempted on every member. Any thread; async-signal-safe (a program's own SIGTERM
  // handler may call it). One member asking is enough.
  static void preempt() noexcept;

  // Events so far, oldest first; `on_event` (optional) is called with each as it completes.
  const std::vector<RecoveryEvent>& events() const { return events_; }
  std::function<void(const RecoveryEvent&)> on_event;

  const std::string& member() const { return member_; }

 private:
  ElasticOptions o_;
  std::shared_ptr<Store> store_;
  std::string member_;
  std::unique_ptr<Rendezvous> rdzv_;
  // With the preflight on: runs it; throws HealthError when this member fails it.
  void preflight(const FaultInjector* faults);

  FaultInjector own_faults_{"", -1};  // from TENAX_FAULT when options.faults is null
  std::vector<RecoveryEvent> events_;
};

}  // namespace tenax
