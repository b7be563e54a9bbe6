#pragma once

// Fully sharded data parallelism (ZeRO stage 3, as PyTorch's FSDP): each dp rank keeps only its
// 1/dp of every parameter, of its gradient and of the optimizer state. A module is cut into
// units (a Llama's decoder layers), plus the root unit (every parameter in no unit: embedding,
// final norm, output). A unit's parameters are all-gathered just before it runs forward and
// freed after; gathered again when backward reaches it and freed once all their gradients are
// there, which are then reduce-scattered (averaged) so each rank receives its shard's part.
// With prefetch on, the next unit's gather (forward: the next unit; backward: the previous one)
// is in flight while the current unit computes; the last unit stays gathered from its forward
// into its backward, which comes next. The root unit is gathered for the whole
// forward/backward of a step and its gradients reduce-scattered once, in sync().
//
// Sharding: every parameter is cut along dim 0 into dp equal row blocks of ceil(rows / dp) rows
// (the last ranks' blocks are shorter, possibly empty). Rank k holds rows [k·r, k·r + n_k) as a
// leaf tensor of shape [n_k, rest...] -- the tensors an optimizer steps on, and that a
// checkpoint saves as parts of the whole parameter. A unit's shards live in one flat buffer.
//
//   FullyShardedDataParallel fsdp(model, {layer0, layer1, ...}, mesh.dp());
//   // the model calls fsdp.run_unit(k, [&] { return layer_k->forward(h); }) for each layer
//   AdamW optimizer(fsdp.parameters(), ...);
//   auto y = fsdp.forward([&] { return model->forward(x); });
//   loss(y).backward();           // repeat for micro-batches
//   fsdp.sync();                  // every shard's gradient is the dp average
//   optimizer.step();
//
// While sharded, a module parameter keeps its shape but holds no memory: reading it outside
// forward() and run_unit() is an error (use the shards). Works on one device type (CPU tensors
// over Gloo, CUDA over NCCL) and composes with tensor parallelism (the module's parameters are
// then tp parts, sharded further over dp) and with pipeline stages (each stage its own module).

#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tenax/comm/communicator.h"
#include "tenax/core/export.h"

namespace tenax {

struct TENAX_API FullyShardedOptions {
  // Start the next unit's all-gather before the current unit computes.
  bool prefetch = true;
  // The dtype gradients are reduce-scattered in; Undefined: their own.
  c10::ScalarType reduce_dtype = c10::ScalarType::Undefined;

  FullyShardedOptions& prefetch_next(bool v) {
    prefetch = v;
    return *this;
  }
  FullyShardedOptions& reduce_in(c10::ScalarType v) {
    reduce_dtype = v;
    return *this;
  }
};

// One parameter of the module as this rank holds it.
struct TENAX_API ShardedParameter {
  std::string name;  // in the module
  at::Tensor param;  // the module's parameter: whole shape, memory only while gathered
  at::Tensor shard;  // rows [row_offset, row_offset + shard.size(0)) of param (a leaf)
  int64_t row_offset = 0;
  int unit = -1;  // index into the units; -1: the root unit
};

// Thread rules: one training thread owns it, as DataParallel: forward(), run_unit(), the
// backward passes (whose hooks gather and reduce-scatter units on the threads autograd picks),
// sync() and reshard() run one at a time, in the same order on every rank of its dp group, and
// nothing else issues operations on that communicator meanwhile. It owns the shards that
// parameters() and sharded_parameters() return; the accessors may be read from any thread
// between steps.
class TENAX_API FullyShardedDataParallel {
 public:
  // Collective over `dp`: broadcasts the module's parameters and buffers from dp rank 0, keeps
  // this rank's rows of each parameter and frees the rest. `units` are submodules of `module`,
  // in forward order. Throws ConfigError (naming the parameter) when a parameter is in two
  // units, when a unit mixes dtypes, or when a parameter's memory cannot be freed and regrown.
  FullyShardedDataParallel(std::shared_ptr<torch::nn::Module> module,
                           std::vector<std::shared_ptr<torch::nn::Module>> units,
                           std::shared_ptr<Communicator> dp, FullyShardedOptions options = {});
  ~FullyShardedDataParallel();
  FullyShardedDataParallel(const FullyShardedDataParallel&) = delete;
  FullyShardedDataParallel& operator=(const FullyShardedDataParallel&) = delete;

  // A forward pass of the module: gathers the root unit's parameters (kept until sync(), or
  // freed on return when autograd is off) and returns fn(). Collective over dp.
  at::Tensor forward(const std::function<at::Tensor()>& fn);
  // Unit `unit`'s forward, for the module to call: gathers its parameters, runs fn, frees them;
  // when autograd is on, the unit's backward gathers them again and reduce-scatters their
  // gradients. Collective over dp. Throws ConfigError for an index out of range.
  at::Tensor run_unit(size_t unit, const std::function<at::Tensor()>& fn);
  // After the micro-batches' backward passes: reduce-scatters the root unit's gradients, waits
  // for every reduce-scatter and accumulates the averages into the shards' gradients (zero for
  // a parameter that got none), and frees every gathered parameter. Collective over dp.
  void sync();
  // Frees every gathered parameter without touching gradients (e.g. after an error, or before
  // the shards are overwritten by a restore). Waits for gathers in flight.
  void reshard();

  // The shards, for the optimizer: one leaf per module parameter, in module order.
  std::vector<at::Tensor> parameters() const;
  const std::vector<ShardedParameter>& sharded_parameters() const;
  const std::shared_ptr<torch::nn::Module>& module() const { return module_; }
  size_t num_units() const;

  // Bytes of parameters this rank holds now: the shards plus any gathered parameters.
  int64_t parameter_bytes() const;
  // Bytes of freed parameter memory kept for the next gathers (host memory; at most two of the
  // largest unit's gathered size), not counted in parameter_bytes().
  int64_t cached_bytes() const;
  // Gathers that were already in flight when their unit needed them (since construction).
  int64_t prefetch_hits() const;

  class Impl;

 private:
  std::shared_ptr<torch::nn::Module> module_;
  std::shared_ptr<Impl> impl_;
};

}  // namespace tenax
