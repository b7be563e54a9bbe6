#pragma once

// Pipeline parallelism: the model is cut into stages, one per rank of the pp group; a batch is
// cut into micro-batches that flow forward through the stages and whose gradients flow back.
// Activations and their gradients move with point-to-point send/recv. Three schedules:
//   kGPipe             all forwards, then all backwards (activations of every micro-batch
//                      are kept);
//   k1F1B              after a warm-up of (p - stage - 1) forwards, alternate one forward and
//                      one backward, so at most p micro-batches' activations are alive on a
//                      stage;
//   kInterleaved1F1B   Megatron-LM's virtual pipeline: each rank runs v model chunks (rank s
//                      chunk c is virtual stage c·p + s of v·p), micro-batches go through the
//                      chunks in groups of p, and the bubble shrinks v-fold, to
//                      (p - 1) / (v·m) of the ideal time, for v times the sends.
// All accumulate the same gradients; they differ in memory and in idle time (the bubble).

#include <functional>
#include <memory>
#include <vector>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"

namespace tenax {

enum class PipelineScheduleKind { kGPipe, k1F1B, kInterleaved1F1B };

// One pass of a stage: the forward or the backward of one micro-batch through one chunk.
struct PipelinePass {
  bool forward;
  int chunk, micro_batch;
};

// The passes stage `stage` of `p` runs, in order, for `m` micro-batches and `chunks` model
// chunks a rank (1 but for kInterleaved1F1B). Pure: the schedule's run() follows it.
TENAX_API std::vector<PipelinePass> pipeline_order(PipelineScheduleKind kind, int p, int stage,
                                                   int m, int chunks);

// Thread rules: run() from one thread at a time (the training thread): it sends and receives on
// the pp communicator in the schedule's order, which every stage must follow, and calls the
// stage functions on that thread. Its options never change after construction (any thread).
class TENAX_API PipelineSchedule {
 public:
  using StageFn = std::function<at::Tensor(const at::Tensor&)>;
  // Runs this rank's model chunk `chunk` (0 ≤ chunk < chunks()) on its input.
  using ChunkFn = std::function<at::Tensor(int chunk, const at::Tensor&)>;
  using LossFn = std::function<at::Tensor(const at::Tensor& output, const at::Tensor& target)>;

  // `pp`: the pipeline group; stage s is pp rank s. `chunks`: model chunks per rank (v), more
  // than 1 only for kInterleaved1F1B, which also needs micro_batches divisible by p (as
  // Megatron-LM does). Throws ConfigError naming what is wrong.
  PipelineSchedule(std::shared_ptr<Communicator> pp, PipelineScheduleKind kind, int micro_batches,
                   int chunks = 1);

  // One forward and backward pass over a batch. Every stage calls it; `inputs` matter on the
  // first stage and `targets` on the last (others may pass undefined tensors). Both are split
  // along dim 0 into micro_batches equal parts (ConfigError if the batch does not divide).
  // `stage` runs this rank's part of the model; `loss` runs on the last stage per micro-batch.
  // Gradients accumulate into the stage's parameters as one full-batch backward would (each
  // micro-batch loss is divided by micro_batches). Returns the batch loss on every stage.
  double run(const StageFn& stage, const at::Tensor& inputs, const at::Tensor& targets,
             const LossFn& loss);
  // The same with v chunks per rank: `inputs` matter on virtual stage 0 (rank 0, chunk 0),
  // `targets` on the last (rank p - 1, chunk v - 1).
  double run(const ChunkFn& stage, const at::Tensor& inputs, const at::Tensor& targets,
             const LossFn& loss);

  int chunks() const { return chunks_; }
  // pipeline_order() for this rank.
  std::vector<PipelinePass> order() const;

  // (p - 1) / (v·m + p - 1): the idle fraction of an ideal pipeline with equal stages (v = 1
  // unless interleaved): p - 1 chunk-times of fill and drain out of v·m + p - 1.
  double theoretical_bubble() const;
  // Fraction of the last run() this stage spent waiting to receive, measured.
  double measured_bubble() const { return measured_bubble_; }

 private:
  std::shared_ptr<Communicator> pp_;
  PipelineScheduleKind kind_;
  int micro_batches_;
  int chunks_;
  double measured_bubble_ = 0;
};

}  // namespace tenax
