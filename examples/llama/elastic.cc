#include "elastic.h"

#include <tenax/core/error.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace llama {
namespace {

class LlamaJob : public tenax::ElasticJob {
 public:
  LlamaJob(const ElasticRunOptions& o, StepLog& log) : o_(o), log_(log) {}

  void setup(const tenax::ElasticWorld& world) override {
    TrainOptions t = o_.train;
    const int replica = t.tp * t.pp;
    t.dp = world.size / replica;
    t.micro_batch = elastic_micro_batch(t.global_batch, t.dp, o_.train.micro_batch);
    t = resolve_options(t, world.size);
    retire_trainer();
    trainer_ = std::make_unique<Trainer>(t, world.comm);
    leader_ = world.rank == 0;
    log_.set_world(world.size, leader_);
    if (leader_) {
      std::string hosts;
      for (const auto& h : world.hosts) hosts += (hosts.empty() ? "" : " ") + h;
      std::printf("llama_train: generation %lld: %d ranks dp=%d tp=%d pp=%d, micro-batch %lld x "
                  "%lld accumulation steps (global batch %lld); hosts by rank: %s\n",
                  (long long)world.generation, world.size, t.dp, t.tp, t.pp,
                  (long long)t.micro_batch, (long long)(t.global_batch / (t.micro_batch * t.dp)),
                  (long long)t.global_batch, hosts.c_str());
      std::fflush(stdout);
    }
  }

  tenax::StateDict& state() override { return trainer_->state(); }

  void restored(int64_t steps_done) override {
    trainer_->resume_from_state();
    if (leader_) {
      std::printf("llama_train: resuming after step %lld\n", (long long)steps_done);
      std::fflush(stdout);
    }
    if (trainer_->step() != steps_done) {
      throw tenax::CheckpointError("elastic: restored state is at step " +
                                   std::to_string(trainer_->step()) + ", the snapshot's at " +
                                   std::to_string(steps_done));
    }
  }

  void train_step(int64_t step) override {
    log_.add(trainer_->train_step());
    const int64_t done = step + 1;
    if (o_.eval_interval > 0 && (done % o_.eval_interval == 0 || done == o_.train.steps)) {
      const double v = trainer_->evaluate(o_.eval_batches);
      if (!std::isnan(v)) log_.validation(done, v);
    }
  }

  void before_reform(const tenax::RecoveryEvent& e) override {
    if (leader_) {
      std::printf("llama_train: re-forming (%s: %s)\n", e.cause.c_str(), e.detected_by.c_str());
      std::fflush(stdout);
    }
  }

  bool leader() const { return leader_; }

  ~LlamaJob() override {
    if (retiring_.joinable()) retiring_.join();
  }

 private:
  // The previous generation's trainer is taken apart on a thread of its own while the new one is
  // built: closing its communicators waits for their network threads (about 10 ms each), time a
  // recovery would otherwise spend doing nothing. Its communicators were aborted and its state
  // lives on in the snapshots, so nothing of it is used again.
  void retire_trainer() {
    if (retiring_.joinable()) retiring_.join();
    if (!trainer_) return;
    retiring_ = std::thread([old = std::move(trainer_)]() mutable { old.reset(); });
  }

  const ElasticRunOptions& o_;
  StepLog& log_;
  std::unique_ptr<Trainer> trainer_;
  std::thread retiring_;
  bool leader_ = false;
};

}  // namespace

int64_t elastic_micro_batch(int64_t global_batch, int dp, int64_t wanted) {
  if (dp < 1 || global_batch % dp != 0) {
    throw tenax::ConfigError("elastic: --global-batch " + std::to_string(global_batch) +
                             " cannot be split over dp " + std::to_string(dp) +
                             " ranks; choose one divisible by every dp the job may run at");
  }
  const int64_t per_rank = global_batch / dp;
  for (int64_t m = std::min(wanted, per_rank); m > 1; --m) {
    if (per_rank % m == 0) return m;
  }
  return 1;
}

tenax::RunResult run_elastic(const ElasticRunOptions& options, StepLog& log,
                             std::shared_ptr<tenax::Store> store) {
  tenax::ElasticOptions eo = options.elastic;
  eo.group = options.train.tp * options.train.pp;
  if (options.train.device == "cuda") eo.backend = tenax::Backend::kNccl;
  eo.handle_sigterm = true;  // SIGTERM (Slurm's, tenaxrun's) stops the job at a durable step
  eo.on_stop = [](tenax::StopReason reason, const std::string& why) {
    // Evicted or removed: run() returns and main() exits with the code. A step that hung may
    // never come back to return from run(); a fenced member's store is out of reach, so its
    // teardown would wait on it: both leave at once.
    if (reason != tenax::StopReason::kHung && reason != tenax::StopReason::kFenced) return;
    std::fprintf(stderr, "llama_train: %s (%s): exiting with status %d\n", tenax::to_string(reason),
                 why.c_str(), tenax::exit_code(reason));
    std::fflush(stdout);
    std::fflush(stderr);
    std::_Exit(tenax::exit_code(reason));
  };
  tenax::ElasticRunner runner(eo, std::move(store));
  LlamaJob job(options, log);
  const tenax::RunResult r = runner.run(job, options.train.steps);
  if (!job.leader()) return r;
  if (r.reason == tenax::StopReason::kPreempted) {
    // The step reached is saved; a relaunch of the same run resumes there.
    std::printf("llama_train: preempted after %lld of %lld steps, %zu re-formations; a relaunch "
                "resumes from step %lld\n",
                (long long)r.steps, (long long)options.train.steps, runner.events().size(),
                (long long)r.steps);
  } else if (r.finished()) {
    std::printf("llama_train: done, %lld steps, %zu re-formations\n",
                (long long)options.train.steps, runner.events().size());
  }
  std::fflush(stdout);
  return r;
}

}  // namespace llama
