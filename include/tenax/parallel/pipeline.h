#pragma once

// Pipeline parallelism: the model is cut into stages, one per rank of the pp group; a batch is
// cut into micro-batches that flow forward through the stages and whose gradients flow back.
// Activations and their gradients move with point-to-point send/recv. Two schedules:
//   kGPipe  all forwards, then all backwards (activations of every micro-batch are kept);
//   k1F1B   after a warm-up of (p - stage - 1) forwards, alternate one forward and one
//           backward, so at most p micro-batches' activations are alive on a stage.
// Both accumulate the same gradients; they differ in memory and in idle time (the bubble).

#include <functional>
#include <memory>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"

namespace tenax {

enum class PipelineScheduleKind { kGPipe, k1F1B };

class TENAX_API PipelineSchedule {
 public:
  using StageFn = std::function<at::Tensor(const at::Tensor&)>;
  using LossFn = std::function<at::Tensor(const at::Tensor& output, const at::Tensor& target)>;

  // `pp`: the pipeline group; stage s is pp rank s. Throws ConfigError for micro_batches < 1.
  PipelineSchedule(std::shared_ptr<Communicator> pp, PipelineScheduleKind kind, int micro_batches);

  // One forward and backward pass over a batch. Every stage calls it; `inputs` matter on the
  // first stage and `targets` on the last (others may pass undefined tensors). Both are split
  // along dim 0 into micro_batches equal parts (ConfigError if the batch does not divide).
  // `stage` runs this rank's part of the model; `loss` runs on the last stage per micro-batch.
  // Gradients accumulate into the stage's parameters as one full-batch backward would (each
  // micro-batch loss is divided by micro_batches). Returns the batch loss on every stage.
  double run(const StageFn& stage, const at::Tensor& inputs, const at::Tensor& targets,
             const LossFn& loss);

  // (p - 1) / (m + p - 1): the idle fraction of an ideal pipeline with equal stages.
  double theoretical_bubble() const;
  // Fraction of the last run() this stage spent waiting to receive, measured.
  double measured_bubble() const { return measured_bubble_; }

 private:
  std::shared_ptr<Communicator> pp_;
  PipelineScheduleKind kind_;
  int micro_batches_;
  double measured_bubble_ = 0;
};

}  // namespace tenax
