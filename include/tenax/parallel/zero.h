#pragma once

// Sharded data parallelism (ZeRO stages 1 and 2) with AdamW: the parameters are viewed as one
// flat vector cut into dp equal shards. After backward, step() reduce-scatters (averages) the
// gradients so each rank receives only its shard's average, runs AdamW on that shard alone
// (so each rank holds 1/dp of the optimizer state), and all-gathers the updated shards back
// into every rank's parameters. Use it instead of DataParallel plus an optimizer.

#include <torch/optim/adamw.h>

#include <memory>
#include <vector>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"

namespace tenax {

// Thread rules: one thread at a time, the training thread: step(), reduce_gradients() and
// reload_parameters() are collectives over its dp communicator, issued in the same order on every
// rank; nothing else issues operations on that communicator during one. The accessors may be
// read from any thread between steps.
class TENAX_API ZeroAdamW {
 public:
  // Collective over `dp`. Broadcasts `params` from dp rank 0. Throws ConfigError when the
  // parameters do not share one dtype or are not on the backend's device type.
  ZeroAdamW(std::vector<torch::Tensor> params, std::shared_ptr<Communicator> dp,
            torch::optim::AdamWOptions options);

  // Call after backward on every dp rank: reduce-scatter of the gradients (unless
  // reduce_gradients() did it since the last step), AdamW on this rank's shard, all-gather of
  // the parameters. A parameter without a gradient counts as zero.
  void step();
  // The reduce-scatter alone: afterwards shard().grad() holds this rank's part of the averaged
  // gradients, to clip or unscale before step(). Collective over dp.
  void reduce_gradients();
  // Clears the parameters' gradients (and a reduced gradient shard not yet stepped on).
  void zero_grad();

  // Elements in this rank's shard, and in all parameters together.
  int64_t shard_numel() const { return shard_numel_; }
  int64_t total_numel() const { return total_numel_; }
  // Bytes of optimizer state this rank holds, measured on AdamW's state tensors.
  int64_t state_bytes() const;

  // For checkpointing. This rank's shard is elements [shard_offset(), shard_offset() +
  // shard_numel()) of the flat parameter vector (the last shard may run past total_numel():
  // padding). shard_optimizer() is the AdamW over shard().
  int64_t shard_offset() const { return dp_->rank() * shard_numel_; }
  const torch::Tensor& shard() const { return shard_; }
  torch::optim::AdamW& shard_optimizer() { return *adamw_; }
  // After the parameters were overwritten (a restore): refreshes this rank's master shard
  // from them.
  void reload_parameters();

 private:
  std::vector<torch::Tensor> params_;
  std::shared_ptr<Communicator> dp_;
  int64_t total_numel_ = 0, shard_numel_ = 0;
  torch::Tensor flat_params_, flat_grads_, shard_, grad_shard_;
  bool reduced_ = false;
  std::unique_ptr<torch::optim::AdamW> adamw_;
};

// Bytes of state an optimizer holds for AdamW-style state (exp_avg, exp_avg_sq and, with
// amsgrad, max_exp_avg_sq), summed over its parameters.
TENAX_API int64_t adamw_state_bytes(const torch::optim::AdamW& optimizer);

}  // namespace tenax
