#pragma once

// The trainer's state, for code that needs to look inside (tests comparing weights).

#include <tenax/parallel/data_parallel.h>
#include <tenax/parallel/fully_sharded.h>
#include <tenax/parallel/mesh.h>
#include <tenax/parallel/pipeline.h>
#include <tenax/parallel/zero.h>
#include <torch/optim/adamw.h>

#include <functional>
#include <memory>
#include <optional>

#include "data.h"
#include "model.h"
#include "trainer.h"

namespace llama {

class Trainer::Impl {
 public:
  Impl(const TrainOptions& options, std::shared_ptr<tenax::Communicator> world);

  StepStats train_step();
  double evaluate(int batches);

  // [samples, seq_len + 1] token ids of the given global sample indices.
  torch::Tensor load(const SampleLoader& loader, const std::vector<int64_t>& samples) const;
  // Runs forward and backward over this rank's share of the global batch; returns its mean loss.
  double accumulate_gradients(const torch::Tensor& tokens);
  // The tensors the optimizer steps on: the model's parameters, their shards under fsdp, or
  // the distributed optimizer's two flat shards.
  std::vector<torch::Tensor> trained_parameters() const;
  // Whether `p` = trained_parameters()[i] is held whole by every tp rank (a norm gain).
  bool replicated_across_tp(size_t i, const torch::Tensor& p) const;
  // The optimizer's learning rate, gradients and step, whichever optimizer it is.
  void set_lr(double lr);
  void zero_grad();
  void optimizer_step();
  // A forward pass of the model (under fsdp: with the root unit's weights gathered).
  torch::Tensor run_forward(const std::function<torch::Tensor()>& fn);
  double clip_gradients();
  // With a loss scaler: unscales the gradients; false (and the scale backed off) on an overflow.
  bool unscale_gradients(StepStats& s);
  // The nan policy's verdict on a step: true to discard its update.
  bool discard(StepStats& s);

  TrainOptions o;
  torch::Device device;
  std::unique_ptr<tenax::ProcessMesh> mesh;
  Llama model{nullptr};
  std::unique_ptr<tenax::DataParallel> ddp;
  std::unique_ptr<tenax::FullyShardedDataParallel> fsdp;  // instead of ddp, with o.fsdp
  std::unique_ptr<tenax::PipelineSchedule> schedule;
  std::unique_ptr<torch::optim::AdamW> optimizer;       // null under the distributed optimizer
  std::vector<std::unique_ptr<tenax::ZeroAdamW>> zero;  // with o.distributed_optimizer
  std::unique_ptr<tenax::LossScaler> scaler;  // null: no loss scaling
  std::unique_ptr<SampleLoader> train, val;
  int64_t step = 0;
  // Batches skipped by a rollback (the data cursor is (step + skipped) · global_batch), and the
  // step whose batch a pending rollback skips (-1: none).
  int64_t skipped = 0, skip_at = -1;
  double loss_mean = 0;  // running mean of the applied steps' losses (spike check)
  int64_t loss_count = 0;
  std::unique_ptr<tenax::StateDict> checkpoint_state;
  std::function<std::string(const std::string&)> rename;  // stage names -> whole-model names
  int64_t accumulation = 1;  // micro-batches per rank per step
};

}  // namespace llama
