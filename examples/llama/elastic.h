#pragma once

// llama_train --elastic: the trainer under tenax's ElasticRunner. Each generation rebuilds the
// trainer on the active world (dp = active ranks / (tp·pp)), keeps the global batch (the
// micro-batch shrinks to the largest divisor of global_batch / dp not above --micro-batch, so
// gradient accumulation absorbs the change) and resumes from the members' memory.

#include <tenax/core/fault_injection.h>
#include <tenax/elastic/elastic.h>

#include <memory>

#include "step_log.h"
#include "trainer.h"

namespace llama {

struct ElasticRunOptions {
  TrainOptions train;             // dp is decided per generation
  tenax::ElasticOptions elastic;  // its faults fire before every step
  int64_t eval_interval = 0;      // validation loss every N steps (0: never)
  int eval_batches = 4;
};

// Trains to train.steps through re-formations (tenax logs each recovery event on every member).
// Prints the log lines (through `log`). Returns on every member once the job is done or
// preempted, or once this member had to leave (why: tenax::exit_code maps it to the exit
// status); a member whose step hung or that was fenced ends the process with its exit code at
// once (that step may never return; a fenced member's store is out of reach).
tenax::RunResult run_elastic(const ElasticRunOptions& options, StepLog& log,
                             std::shared_ptr<tenax::Store> store);

// The micro-batch for `dp` ranks: the largest divisor of global_batch / dp not above `wanted`.
// Throws ConfigError when dp does not divide global_batch.
int64_t elastic_micro_batch(int64_t global_batch, int dp, int64_t wanted);

}  // namespace llama
